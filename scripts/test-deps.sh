#!/usr/bin/env bash
# Installs what the tests drive besides Rust: headless Chromium (Debian) and the published
# browser client libraries and user-agent lists, and playwright-core and axe-core for the
# dashboard test (npm), pinned, into target/test-data/npm.
# Idempotent. Prints nothing when everything is already there.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if ! command -v chromium >/dev/null; then
  echo "test-deps: installing chromium (apt)"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
dest="$root/target/test-data/npm"
want="@plausible-analytics/tracker@0.4.6 @minimal-analytics/ga4@1.8.7 user-agents@2.1.198 playwright-core@1.65.1 axe-core@4.14.1"
if [ -f "$dest/VERSIONS" ] && [ "$(cat "$dest/VERSIONS")" = "$want" ]; then
  exit 0
fi
rm -rf "$dest"
mkdir -p "$dest"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent $want >/dev/null 2>"$tmp/npm.log") || { cat "$tmp/npm.log" >&2; exit 1; }
for t in "$tmp"/*.tgz; do
  name=$(basename "$t" .tgz)
  mkdir -p "$dest/$name"
  tar -xzf "$t" -C "$dest/$name" --strip-components=1
done
echo "$want" > "$dest/VERSIONS"
echo "test-deps: $want -> $dest"
