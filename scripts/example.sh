#!/usr/bin/env bash
# Runs the worked example's weekly loop offline: fetch the embedded model
# (once), build, and `promptloop run support-triage`: pull the production logs
# in logs/support-triage/ into the dataset, optimize, score the candidate and
# production (artifacts/support-triage/program.json on main) on the held-out
# test split, gate, and write the artifact, history and REPORT.md. With no
# tokens the run commits to the local branch promptloop/support-triage, writes
# the PR body and the Slack message under .promptloop/runs/support-triage/ and
# sends nothing; the tokens are unset here so a GITHUB_TOKEN in your shell
# cannot publish the example.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-model.sh
cargo build --release --locked --quiet
env -u GITHUB_TOKEN -u SLACK_BOT_TOKEN -u SLACK_WEBHOOK_URL -u GITHUB_ACTIONS \
  target/release/promptloop run support-triage "$@"
