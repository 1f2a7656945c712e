#!/usr/bin/env python3
"""The floor `pull` is compared with: read a JSONL file line by line and parse
each line with Python's json module (bad lines skipped), nothing else."""
import json
import sys

good = bad = 0
with open(sys.argv[1], "rb") as f:
    for line in f:
        try:
            json.loads(line)
            good += 1
        except ValueError:
            bad += 1
print(f"{good} parsed, {bad} not", file=sys.stderr)
