#!/usr/bin/env python3
"""Checks that datasets/support-reply's `meta.signal` is what promptloop's own detector reads.

Writes the examples as native log records (message in `inputs`, earlier messages
in `history`) into a scratch repository, runs `promptloop pull` there (which
reads every record's signal with src/logs/signals.rs), and compares each pulled
example's signal label and evidence with the example's `meta.signal` and
`meta.signal_evidence` (computed by the detector port in scripts/reply-rubric.py).

Usage: scripts/check-support-reply.py [PATH/TO/promptloop]   (default: target/release/promptloop)
Exits 1 on any difference. Standard library only.
"""
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PIPELINE = """name = "check"
[lm]
provider = "embedded"
model = "unused.gguf"
[source]
kind = "files"
paths = ["logs/*.jsonl"]
format = "native"
[signals]
field = "message"
[dedup]
threshold = 1.0
leak_threshold = 1.0
[sample]
total = 100000
caps = { routine = 100000, urgent = 100000, escalating = 100000 }
inbox_total = 100000
[dataset]
path = "datasets/check/examples.jsonl"
[signatures.reply]
instructions = "unused"
[signatures.reply.inputs]
message = { type = "string" }
[signatures.reply.outputs]
reply = { type = "string" }
[[program.predictors]]
name = "reply"
signature = "reply"
[metric]
kind = "exact_match"
fields = ["reply"]
[optimizer]
kind = "none"
"""


def main():
    binary = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "target" / "release" / "promptloop").resolve()
    examples = [json.loads(line) for line in open(ROOT / "datasets" / "support-reply" / "examples.jsonl", encoding="utf-8")]
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        for d in ("pipelines", "logs", "datasets/check"):
            (scratch / d).mkdir(parents=True)
        (scratch / "pipelines" / "check.toml").write_text(PIPELINE)
        (scratch / "datasets" / "check" / "examples.jsonl").write_text("")
        with open(scratch / "logs" / "records.jsonl", "w", encoding="utf-8") as f:
            for e in examples:
                f.write(json.dumps({"id": e["id"], "timestamp": "2026-11-30T10:00:00Z",
                                    "inputs": {"message": e["inputs"]["message"]}, "history": e["inputs"]["history"],
                                    "reference": {"reply": e["outputs"]["reply"]}}, ensure_ascii=False) + "\n")
        subprocess.run([str(binary), "--root", str(scratch), "pull", "check", "--since", "all"], check=True)
        pulled = [json.loads(line) for line in open(scratch / "datasets" / "check" / "examples.jsonl", encoding="utf-8")]
    by_id = {e["id"]: e for e in examples}
    labels = evidence = 0
    for p in pulled:
        e = by_id[p["source_ids"][0]]
        if p["inputs"]["message"] != e["inputs"]["message"]:
            print(f"{e['id']}: the pull changed the message (anonymized?)")
        if p["signal"]["label"] == e["meta"]["signal"]:
            labels += 1
        else:
            print(f"{e['id']}: detector {p['signal']['label']}, meta {e['meta']['signal']}")
        if p["signal"]["evidence"] == e["meta"]["signal_evidence"]:
            evidence += 1
        else:
            print(f"{e['id']}: detector evidence {p['signal']['evidence']}, meta {e['meta']['signal_evidence']}")
    print(f"{len(examples)} examples, {len(pulled)} pulled: {labels} labels and {evidence} evidence lists agree")
    return 0 if labels == evidence == len(pulled) == len(examples) else 1


if __name__ == "__main__":
    sys.exit(main())
