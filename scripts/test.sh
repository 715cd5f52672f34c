#!/usr/bin/env bash
# The project's test command (README): the whole suite, in the order that finds
# breakage fastest. Installs and starts what the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --workspace --all-targets --locked
cargo test --workspace --locked
