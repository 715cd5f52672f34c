#!/usr/bin/env bash
# Fetches the enrichment rules Footfall embeds at build time, from npm, pinned:
#   uap-core            user-agent rules (browser, OS, device), Apache-2.0
#   crawler-user-agents bot patterns, MIT (npm)
#   referer-parser      known referrer hosts by medium, Apache-2.0 (PyPI, sdist)
# They land in target/rules/ (not committed). crates/footfall-enrich/build.rs reads them.
# Idempotent: does nothing when the pinned versions are already there.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest="$root/target/rules"
want="uap-core@0.18.0 crawler-user-agents@1.60.0 referer-parser==0.4.1"
if [ -f "$dest/VERSIONS" ] && [ "$(cat "$dest/VERSIONS")" = "$want" ]; then
  exit 0
fi
command -v npm >/dev/null || { echo "fetch-rules: npm is required (Node 20)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent uap-core@0.18.0 crawler-user-agents@1.60.0 >/dev/null 2>"$tmp/npm.log" || { cat "$tmp/npm.log" >&2; exit 1; })
mkdir -p "$dest"
tar -xzf "$tmp"/uap-core-*.tgz -C "$tmp" package/regexes.yaml package/LICENSE
cp "$tmp/package/regexes.yaml" "$dest/regexes.yaml"
cp "$tmp/package/LICENSE" "$dest/LICENSE.uap-core"
rm -rf "$tmp/package"
tar -xzf "$tmp"/crawler-user-agents-*.tgz -C "$tmp"
cp "$tmp/package/crawler-user-agents.json" "$dest/crawler-user-agents.json"
cp "$tmp/package/LICENSE" "$dest/LICENSE.crawler-user-agents" 2>/dev/null || true
rm -rf "$tmp/package"
command -v pip3 >/dev/null || { echo "fetch-rules: pip3 is required (Python 3)" >&2; exit 1; }
pip3 download -q --no-deps --no-binary :all: -d "$tmp" referer-parser==0.4.1
tar -xzf "$tmp"/referer-parser-0.4.1.tar.gz -C "$tmp"
cp "$tmp"/referer-parser-0.4.1/referer_parser/data/referers.json "$dest/referers.json"
echo "$want" > "$dest/VERSIONS"
echo "fetch-rules: $want -> $dest"
