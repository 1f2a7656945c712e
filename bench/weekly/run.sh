#!/usr/bin/env bash
# Week after week, shown: simulates the worked example's weekly loop over N weeks
# in a scratch clone and scores production on one fixed held-out set each week.
#   bench/weekly/run.sh [--weeks 8] [--optimizer KIND] [--out DIR] [--cache PATH]
# The binary: $PROMPTLOOP_BIN, default target/release/promptloop of this repository.
# See bench/weekly/README.md.
set -euo pipefail
# A token in the caller's shell must never publish the simulation (weekly.py unsets them for promptloop too).
exec env -u GITHUB_TOKEN -u SLACK_BOT_TOKEN -u SLACK_WEBHOOK_URL -u GITHUB_ACTIONS \
  python3 "$(dirname "$0")/weekly.py" "$@"
