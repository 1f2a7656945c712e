#!/usr/bin/env bash
# Regenerates the corpus and runs promptloop's dedup and datasketch's
# MinHashLSH on it with the same protocol, then compares the decisions with
# each other and with exact Jaccard. Writes everything under $WORK (default
# /tmp/dedup-bench); nothing here is committed. See README.md.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
WORK="${WORK:-/tmp/dedup-bench}"
VENV="${VENV:-/tmp/dedup-venv}"
BANKING77="${BANKING77:-$REPO/data/banking77}"
TARGET="${CARGO_TARGET_DIR:-$REPO/target}"
mkdir -p "$WORK"

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "datasketch==2.0.0" "xxhash==4.1.0"
fi
PY="$VENV/bin/python"

"$PY" "$HERE/make_corpus.py" "$BANKING77" "$WORK/corpus.jsonl"
(cd "$REPO" && cargo build --release --example near_dups)
NEAR_DUPS="$TARGET/release/examples/near_dups"

"$NEAR_DUPS" "$WORK/corpus.jsonl" "$WORK/ours.json" --normalized "$WORK/normalized-rust.txt"
"$NEAR_DUPS" "$WORK/corpus.jsonl" "$WORK/ours-index-0.6.json" --leak-threshold 0.6
"$PY" "$HERE/datasketch_near_dups.py" "$WORK/corpus.jsonl" "$WORK/datasketch.json" \
    --normalized "$WORK/normalized-python.txt"
cmp "$WORK/normalized-rust.txt" "$WORK/normalized-python.txt"
echo "normalized texts identical"

(cd "$HERE" && "$PY" compare.py "$WORK/corpus.jsonl" "$WORK/ours.json" "$WORK/datasketch.json" "$WORK/compare.json")
(cd "$HERE" && "$PY" compare.py "$WORK/corpus.jsonl" "$WORK/ours-index-0.6.json" "$WORK/datasketch.json" \
    "$WORK/compare-index-0.6.json")
