#!/usr/bin/env bash
# Runs the test suite. The end-to-end tests use the embedded model, so fetch it first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-model.sh
# The S3 source is tested against moto's S3 server, kept in a venv of its own.
venv=.promptloop/test-venv
if ! "$venv/bin/python" -c "import moto.server" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'moto[server]>=5,<6'
fi
export PROMPTLOOP_MOTO_PYTHON="$PWD/$venv/bin/python"
cargo nextest run --release --locked --no-fail-fast "$@"
