#!/usr/bin/env bash
# Fuzzing (issue 22; docs/SECURITY.md): every parser target in fuzz/ under libFuzzer with
# AddressSanitizer, each for a while, from the committed seeds (fuzz/seeds/TARGET). The
# corpus each run grows is kept outside the repository (target/fuzz-corpus/TARGET), and
# a crash leaves its input in fuzz/artifacts/TARGET and fails the run.
#
#   scripts/fuzz.sh [--seconds N] [TARGET ...]     # default: 30 s each, every target
#
# Needs the nightly toolchain (sanitizers) and cargo-fuzz; cargo-fuzz is built once from
# crates.io into ~/.cache/footfall-tools. Without nightly: skipped loudly, failed
# under CI.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
seconds=30
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
if ! cargo +nightly --version >/dev/null 2>&1; then
  msg="fuzz.sh: the nightly toolchain is not installed (rustup toolchain install nightly)"
  if [ -n "${CI:-}" ]; then echo "$msg" >&2; exit 1; fi
  echo "*** SKIPPED: $msg ***"; exit 0
fi
version=0.13.2
tools=${FOOTFALL_TOOLS:-$HOME/.cache/footfall-tools}
fuzz="$tools/cargo-fuzz-$version/bin/cargo-fuzz"
if [ ! -x "$fuzz" ]; then
  echo "fuzz.sh: building cargo-fuzz $version into $tools (once)"
  cargo install cargo-fuzz --version "$version" --locked --root "$tools/cargo-fuzz-$version" -q
fi
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^footfall-fuzz$')
fi
export PATH="$tools/cargo-fuzz-$version/bin:$PATH" CARGO_TARGET_DIR="$root/target/fuzz"
cargo +nightly fuzz build --fuzz-dir fuzz -O
for t in "${targets[@]}"; do
  corpus="$root/target/fuzz-corpus/$t"
  mkdir -p "$corpus" "fuzz/artifacts/$t"
  start=$(date +%s)
  # -max_len: archive files and gzip bodies are larger than libFuzzer's default 4 KiB.
  if ! cargo +nightly fuzz run --fuzz-dir fuzz -O "$t" "$corpus" "fuzz/seeds/$t" -- \
      -max_total_time="$seconds" -max_len=65536 -rss_limit_mb=2048 -timeout=10 \
      -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 > "target/fuzz-$t.log" 2>&1; then
    tail -40 "target/fuzz-$t.log"
    echo "fuzz.sh: $t FAILED (input in fuzz/artifacts/$t/)" >&2
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "target/fuzz-$t.log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "target/fuzz-$t.log" | tail -1)
  echo "fuzz: $t ran $(( $(date +%s) - start )) s, ${runs:-?} inputs, $cov, corpus $(ls "$corpus" | wc -l) files: no crash"
done
