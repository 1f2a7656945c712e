#!/usr/bin/env bash
# Builds the held-out corpus, runs both detectors on it, scores them and times them.
# Writes bench/results/anonymize.{md,json}. Run from the repository root.
#
# BEFORE_BIN=path/to/an/older/pii_spans also scores and times that build beside
# the current one (the "before" columns).
set -euo pipefail

VENV=${VENV:-/tmp/anon-venv}
WORK=${WORK:-/tmp/anon-run}
BANKING77=${BANKING77:-data/banking77/train.csv}
N=${N:-6000}
# The tuning corpus (seed 20261204) was looked at while writing the detectors;
# the reported numbers come from the held-out corpus, whose seed was not.
SEED=${SEED:-4711}
BEFORE_BIN=${BEFORE_BIN:-}
mkdir -p "$WORK"

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "faker==40.63.0" "presidio-analyzer==2.2.366" "spacy==3.8.18"
fi
PY="$VENV/bin/python"

cargo build --release --locked --example pii_spans
BIN=${CARGO_TARGET_DIR:-target}/release/examples/pii_spans

"$PY" bench/anonymize/make_corpus.py --banking77 "$BANKING77" --seed "$SEED" --n "$N" --out "$WORK/corpus.jsonl"
# Banking77 as it is: no PII, the common case in production logs.
"$PY" -c 'import csv,json,sys; [print(json.dumps({"id": f"b{i}", "text": r["text"], "spans": [], "kind": "negative"})) for i, r in enumerate(csv.DictReader(open(sys.argv[1])))]' "$BANKING77" > "$WORK/banking77.jsonl"

"$BIN" < "$WORK/corpus.jsonl" > "$WORK/ours.jsonl"
"$PY" bench/anonymize/run_presidio.py --corpus "$WORK/corpus.jsonl" --out "$WORK/presidio.jsonl" \
  --spacy-dir "$VENV/spacy-blank-en" | tee "$WORK/presidio-corpus-time.json"
"$PY" bench/anonymize/run_presidio.py --corpus "$WORK/banking77.jsonl" --out "$WORK/presidio-banking77.jsonl" \
  --spacy-dir "$VENV/spacy-blank-en" | tee "$WORK/presidio-banking77-time.json"
"$BIN" --bench "$WORK/corpus.jsonl" --seconds 5 | tee "$WORK/ours-corpus-time.txt"
"$BIN" --bench "$WORK/banking77.jsonl" --seconds 5 | tee "$WORK/ours-banking77-time.txt"
BEFORE_ARGS=()
if [ -n "$BEFORE_BIN" ]; then
  "$BEFORE_BIN" < "$WORK/corpus.jsonl" > "$WORK/before.jsonl"
  "$BEFORE_BIN" --bench "$WORK/corpus.jsonl" --seconds 5 | tee "$WORK/before-corpus-time.txt"
  "$BEFORE_BIN" --bench "$WORK/banking77.jsonl" --seconds 5 | tee "$WORK/before-banking77-time.txt"
  BEFORE_ARGS=(--before "$WORK/before.jsonl")
fi

# messages/s of find() (ours) and analyze() (Presidio): both only locate spans.
"$PY" - "$WORK" "$N" > "$WORK/throughput.json" <<'PYEOF'
import json, os, re, sys
work, n = sys.argv[1], sys.argv[2]
def find_rate(who, name):
    path = f"{work}/{who}-{name}-time.txt"
    if not os.path.exists(path):
        return None
    line = next(l for l in open(path) if l.startswith("find:"))
    return float(re.search(r"([0-9.]+) messages/s", line).group(1))
def presidio(name):
    return json.load(open(f"{work}/presidio-{name}-time.json"))["messages_per_s"]
rows = {}
for label, name in [(f"held-out PII corpus ({n} sentences)", "corpus"), ("Banking77 train, as is (10003 messages)", "banking77")]:
    row = {"ours": find_rate("ours", name), "presidio": presidio(name)}
    if find_rate("before", name) is not None:
        row = {"before": find_rate("before", name), **row}
    rows[label] = row
print(json.dumps(rows))
PYEOF

"$PY" bench/anonymize/score.py --corpus "$WORK/corpus.jsonl" --ours "$WORK/ours.jsonl" \
  --presidio "$WORK/presidio.jsonl" "${BEFORE_ARGS[@]}" --throughput "$WORK/throughput.json" \
  --md bench/results/anonymize.md --json bench/results/anonymize.json
