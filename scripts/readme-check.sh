#!/usr/bin/env bash
# Runs the README's set-up command and walkthrough exactly as written, in a scratch
# data directory, and checks the answers. Used by CI so the README cannot rot.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
work=$(mktemp -d)
cleanup() {
  # `cargo run` does not pass signals on; stop the server it started by its data dir.
  pkill -TERM -f "target/release/footfall serve" 2>/dev/null || true
  sleep 0.5
  rm -rf "$work"
}
trap cleanup EXIT

# The code blocks of the README: first the set-up block (its first line runs the server),
# then the walkthrough block.
python3 - "$work" <<'PY'
import re, sys
text = open("README.md").read()
blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
setup, walk = blocks[0], blocks[1]
lines = [l.split("#")[0] for l in setup.splitlines()]
i = next(i for i, l in enumerate(lines) if " serve" in l)
open(sys.argv[1] + "/pre.sh", "w").write("set -e\n" + "\n".join(lines[:i]) + "\n")
open(sys.argv[1] + "/serve.sh", "w").write(lines[i] + "\n")
open(sys.argv[1] + "/walk.sh", "w").write(walk)
PY
bash "$work/pre.sh"
if [ "${CI:-}" = true ]; then
  # The walkthrough checks what the commands do, not how fast the binary is: in CI the
  # release build skips whole-program LTO (minutes of one core). Exported, so the
  # README's own `cargo run --release` below uses this build instead of making another.
  export CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16
fi
cargo build --release --locked -q
port_busy() { (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null; }
if port_busy; then echo "readme-check: port 8080 is busy" >&2; exit 1; fi
mkdir -p "$work/run"
cp -r Cargo.toml Cargo.lock crates scripts "$work/run/"
ln -s "$root/target" "$work/run/target"
cd "$work/run"
bash "$work/serve.sh" > "$work/serve.log" 2>&1 &
echo $! > "$work/pid"
for _ in $(seq 1 100); do port_busy && break; sleep 0.1; done
out=$(bash "$work/walk.sh")
echo "$out"
grep -q '{"accepted":1,"rejected":\[\]}' <<<"$out"
grep -q '"results":\[{"dimensions":\["/pricing"\],"metrics":\[1,1\]}\]' <<<"$out"
echo "readme-check: walkthrough OK"
