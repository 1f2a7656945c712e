#!/usr/bin/env bash
# Runs the worked example offline: fetch the embedded model (once), build,
# pull the week's production logs into the dataset (logs/support-triage/),
# compile the support-triage pipeline, and score the artifact on test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-model.sh
cargo build --release --locked --quiet
bin=target/release/promptloop
"$bin" pull support-triage
"$bin" compile support-triage
"$bin" eval support-triage --split test
