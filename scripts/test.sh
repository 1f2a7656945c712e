#!/usr/bin/env bash
# Runs the test suite. The end-to-end tests use the embedded model, so fetch it first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-model.sh
cargo nextest run --release --locked --no-fail-fast "$@"
