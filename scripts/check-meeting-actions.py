#!/usr/bin/env python3
"""Validate datasets/meeting-actions/examples.jsonl and print its statistics.

Usage: scripts/check-meeting-actions.py [path/to/examples.jsonl]

Checks every line: valid JSON object, unique ids, required fields present,
meeting_type in the enum, actions a list of objects with exactly the keys
action/owner/due_date, due_date null or an ISO date (YYYY-MM-DD) on or after
meeting_date, and each owner named in the transcript (case-insensitive)
unless it is a team or role listed in meta.role_owners.
Errors are printed as `file:line: field: problem`; the exit status is 1 if
there are any. Python 3.11 standard library only.
"""

import datetime as dt
import json
import re
import sys
from collections import Counter
from pathlib import Path

MEETING_TYPES = (
    "standup",
    "planning",
    "retrospective",
    "one_on_one",
    "incident_review",
    "customer_call",
    "design_review",
    "hiring_debrief",
)
ACTION_KEYS = {"action", "owner", "due_date"}
ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
SPEAKER_LINE = re.compile(r"^[^:\n]{1,60}: \S")
MIN_LINES, MAX_LINES = 8, 40

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "datasets" / "meeting-actions" / "examples.jsonl"


def parse_date(value):
    if not isinstance(value, str) or not ISO_DATE.match(value):
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        return None


def check(path):
    errors = []
    records = []
    seen_ids = {}

    def err(lineno, field, problem):
        errors.append(f"{path}:{lineno}: {field}: {problem}")

    with open(path, encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()

    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            err(lineno, "line", "blank line")
            continue
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError as e:
            err(lineno, "line", f"invalid JSON: {e.msg}")
            continue
        if not isinstance(rec, dict):
            err(lineno, "line", "not a JSON object")
            continue
        ok = True
        for key in ("id", "inputs", "outputs", "meta"):
            if key not in rec:
                err(lineno, key, "missing")
                ok = False
        extra = set(rec) - {"id", "inputs", "outputs", "meta"}
        if extra:
            err(lineno, "record", f"unexpected keys {sorted(extra)}")
        if not ok:
            continue

        rid = rec["id"]
        if not isinstance(rid, str) or not re.fullmatch(r"mtg-\d{3}", rid):
            err(lineno, "id", f"expected mtg-NNN, got {rid!r}")
        elif rid in seen_ids:
            err(lineno, "id", f"duplicate of line {seen_ids[rid]}")
        else:
            seen_ids[rid] = lineno

        inputs, outputs, meta = rec["inputs"], rec["outputs"], rec["meta"]
        if not isinstance(inputs, dict):
            err(lineno, "inputs", "not an object")
            continue
        if not isinstance(outputs, dict):
            err(lineno, "outputs", "not an object")
            continue
        if not isinstance(meta, dict):
            err(lineno, "meta", "not an object")
            continue

        transcript = inputs.get("transcript")
        if not isinstance(transcript, str) or not transcript.strip():
            err(lineno, "inputs.transcript", "missing or empty")
            transcript = ""
        else:
            tlines = transcript.split("\n")
            if not MIN_LINES <= len(tlines) <= MAX_LINES:
                err(lineno, "inputs.transcript", f"{len(tlines)} lines, expected {MIN_LINES}-{MAX_LINES}")
            for i, tl in enumerate(tlines, 1):
                if not SPEAKER_LINE.match(tl):
                    err(lineno, "inputs.transcript", f"line {i} is not 'Name: text': {tl[:40]!r}")
        meeting_date = parse_date(inputs.get("meeting_date"))
        if meeting_date is None:
            err(lineno, "inputs.meeting_date", f"not a valid ISO date: {inputs.get('meeting_date')!r}")
        elif meeting_date.year != 2026:
            err(lineno, "inputs.meeting_date", "expected a date in 2026")
        extra = set(inputs) - {"transcript", "meeting_date"}
        if extra:
            err(lineno, "inputs", f"unexpected keys {sorted(extra)}")

        for key in ("scenario", "notes"):
            if not isinstance(meta.get(key), str) or not meta.get(key).strip():
                err(lineno, f"meta.{key}", "missing or empty")
        roles = meta.get("role_owners", [])
        if not isinstance(roles, list) or not all(isinstance(r, str) and r for r in roles):
            err(lineno, "meta.role_owners", "must be a list of non-empty strings")
            roles = []
        roles_lower = {r.lower() for r in roles}

        mtype = outputs.get("meeting_type")
        if mtype not in MEETING_TYPES:
            err(lineno, "outputs.meeting_type", f"{mtype!r} not in {list(MEETING_TYPES)}")
        extra = set(outputs) - {"meeting_type", "actions"}
        if extra:
            err(lineno, "outputs", f"unexpected keys {sorted(extra)}")

        actions = outputs.get("actions")
        if not isinstance(actions, list):
            err(lineno, "outputs.actions", "missing or not a list")
            actions = []
        low = transcript.lower()
        valid_actions = []
        for i, a in enumerate(actions):
            field = f"outputs.actions[{i}]"
            if not isinstance(a, dict):
                err(lineno, field, "not an object")
                continue
            if set(a) != ACTION_KEYS:
                err(lineno, field, f"keys {sorted(a)} != {sorted(ACTION_KEYS)}")
                continue
            good = True
            if not isinstance(a["action"], str) or not a["action"].strip():
                err(lineno, f"{field}.action", "missing or empty")
                good = False
            owner = a["owner"]
            if not isinstance(owner, str) or not owner.strip():
                err(lineno, f"{field}.owner", "missing or empty")
                good = False
            elif owner.lower() not in low and owner.lower() not in roles_lower:
                err(lineno, f"{field}.owner", f"{owner!r} not in the transcript nor in meta.role_owners")
                good = False
            due = a["due_date"]
            if due is not None:
                d = parse_date(due)
                if d is None:
                    err(lineno, f"{field}.due_date", f"not null or a valid YYYY-MM-DD date: {due!r}")
                    good = False
                elif meeting_date is not None and d < meeting_date:
                    err(lineno, f"{field}.due_date", f"{due} is before meeting_date {meeting_date}")
                    good = False
            if good:
                valid_actions.append(a)
        seen_actions = Counter((a["action"].lower(), a["owner"].lower()) for a in valid_actions)
        for (text, own), n in seen_actions.items():
            if n > 1:
                err(lineno, "outputs.actions", f"duplicate action {text!r} for {own!r}")
        for r in roles:
            if not any(a["owner"].lower() == r.lower() for a in valid_actions):
                err(lineno, "meta.role_owners", f"{r!r} is not the owner of any action")
        records.append(rec)
    return records, errors


def report(records):
    types = Counter(r["outputs"]["meeting_type"] for r in records)
    counts = [len(r["outputs"]["actions"]) for r in records]
    actions = [a for r in records for a in r["outputs"]["actions"]]
    null_dates = sum(1 for a in actions if a["due_date"] is None)
    role_owned = sum(
        1 for r in records for a in r["outputs"]["actions"]
        if a["owner"].lower() in {x.lower() for x in r["meta"].get("role_owners", [])}
    )
    tlines = [len(r["inputs"]["transcript"].split("\n")) for r in records]
    print(f"transcripts: {len(records)}")
    per_type = Counter()
    empty = Counter()
    for r in records:
        per_type[r["outputs"]["meeting_type"]] += len(r["outputs"]["actions"])
        empty[r["outputs"]["meeting_type"]] += not r["outputs"]["actions"]
    print(f"  {'meeting_type':<16} {'transcripts':>11} {'actions':>8} {'no actions':>11}")
    for t in MEETING_TYPES:
        print(f"  {t:<16} {types.get(t, 0):>11} {per_type.get(t, 0):>8} {empty.get(t, 0):>11}")
    print(f"total actions: {len(actions)} (mean {len(actions) / max(len(records), 1):.2f} per transcript)")
    print("actions per transcript:")
    hist = Counter(counts)
    for n in range(0, max(counts, default=0) + 1):
        print(f"  {n}: {hist.get(n, 0):>3} {'#' * hist.get(n, 0)}")
    share = null_dates / len(actions) if actions else 0.0
    print(f"null due_date: {null_dates}/{len(actions)} ({share:.1%})")
    print(f"owners that are a team/role: {role_owned}")
    if tlines:
        print(f"transcript lines: min {min(tlines)}, max {max(tlines)}, mean {sum(tlines) / len(tlines):.1f}")


def main(argv):
    path = Path(argv[1]) if len(argv) > 1 else DEFAULT_PATH
    if not path.exists():
        print(f"{path}:0: file: not found", file=sys.stderr)
        return 1
    try:
        path = path.resolve().relative_to(Path.cwd())
    except ValueError:
        pass
    records, errors = check(path)
    for e in errors:
        print(e, file=sys.stderr)
    if errors:
        print(f"{len(errors)} error(s)", file=sys.stderr)
        return 1
    report(records)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
