#!/usr/bin/env python3
"""Writes the meeting-actions example's weekly production logs: logs/meeting-actions/2026-W44..W47.jsonl.gz.

Each line is one promptloop native log record (src/logs/record.rs): a meeting
transcript and its date (`inputs`), what the production program answered
(`output`: the meeting type and the action items), a person's labels on some
(`reference`), a user's thumbs up or down on a few (`feedback`), and the
request's metadata.

Sources, all in the repository:
  logs/meeting-actions/transcripts.jsonl   28 fictional transcripts written for these logs, in the
                                           dataset's format (scripts/check-meeting-actions.py checks
                                           them), with their labels; `meta.labelled` says whether the
                                           logs carry the labels as a person's reference
  logs/meeting-actions/production.jsonl    what the committed program (artifacts/meeting-actions/
                                           program.json) answered for each of them on the embedded
                                           model, recorded once with `promptloop eval` (see
                                           logs/meeting-actions/README.md)
  datasets/meeting-actions/examples.jsonl  the four transcripts production saw again (DATASET_REPEATS)

Each transcript is logged in the ISO week of its meeting, on the meeting day, in
office hours; four are sent twice (the same transcript processed again a few
hours later, no label the second time); four dataset transcripts come back; two
lines are broken (a truncated record, another process's output).

Usage: scripts/meeting-logs.py [--seed 2026]
Standard library only; the same arguments write the same bytes.
"""
import argparse
import collections
import datetime as dt
import gzip
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / "logs" / "meeting-actions"
DATASET = ROOT / "datasets" / "meeting-actions" / "examples.jsonl"
DATASET_REPEATS = ["mtg-007", "mtg-023", "mtg-041", "mtg-066"]
# Dataset repeats that a person labelled again (with the dataset's labels).
DATASET_REPEATS_LABELLED = {"mtg-023", "mtg-066"}
RESENT = 4  # new transcripts processed twice
FEEDBACK = 0.2
BROKEN = {"2026-W45": "truncated", "2026-W46": "stray-text"}
SOURCES = ["zoom"] * 40 + ["teams"] * 35 + ["meet"] * 15 + ["upload"] * 10
FEEDBACK_GOOD = [None, "useful summary", "got all my action items"]
FEEDBACK_BAD = [None, "missed my action item", "wrong owners", "dates are off", "that was not a standup"]
LOG_NOISE = "{date} {time},774 ERROR transcript-worker speaker diarization failed, falling back to one speaker"


def week_of(day):
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


def stamp(rng, day, after=None):
    """An RFC 3339 time on `day` in office hours (evenings at weekends), or a few hours after `after`."""
    if after is not None:
        t = dt.datetime.fromisoformat(after.replace("Z", "+00:00")) + dt.timedelta(minutes=rng.randint(40, 300))
        t = min(t, dt.datetime.combine(day, dt.time(23, 59, 59), tzinfo=dt.timezone.utc))
    else:
        start, end = (9 * 60, 18 * 60) if day.weekday() < 5 else (17 * 60, 21 * 60)
        minute = rng.randrange(start, end)
        t = dt.datetime.combine(day, dt.time(minute // 60, minute % 60, rng.randrange(60)), tzinfo=dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{rng.randrange(1000):03d}Z"


def record(rng, transcript, production, at, labelled):
    inputs = transcript["inputs"]
    r = {"id": f"call-{rng.getrandbits(64):016x}", "timestamp": at,
         "inputs": {"transcript": inputs["transcript"], "meeting_date": inputs["meeting_date"]}}
    answer = production[transcript["id"]]
    if "error" not in answer:
        r["output"] = {"meeting_type": answer["meeting_type"], "actions": answer["actions"]}
    if labelled:
        r["reference"] = {"meeting_type": transcript["outputs"]["meeting_type"],
                          "actions": transcript["outputs"]["actions"]}
    if rng.random() < FEEDBACK and "error" not in answer:
        good = answer["meeting_type"] == transcript["outputs"]["meeting_type"]
        feedback = {"score": 1.0 if good else 0.0}
        comment = rng.choice(FEEDBACK_GOOD if good else FEEDBACK_BAD)
        if comment:
            feedback["comment"] = comment
        r["feedback"] = feedback
    lines = inputs["transcript"].count("\n") + 1
    metadata = {"source": rng.choice(SOURCES), "workspace": f"ws-{rng.getrandbits(24):06x}",
                "duration_min": lines * 2 + rng.randint(0, 12), "latency_ms": 4000 + rng.randrange(9000)}
    if "error" in answer:
        metadata["error"] = answer["error"]
    r["metadata"] = metadata
    return r


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--out-dir", type=Path, default=LOGS)
    args = parser.parse_args()

    new = [json.loads(line) for line in open(LOGS / "transcripts.jsonl", encoding="utf-8")]
    dataset = {e["id"]: e for e in map(json.loads, open(DATASET, encoding="utf-8"))}
    production = {p["id"]: p for p in map(json.loads, open(LOGS / "production.jsonl", encoding="utf-8"))}
    missing = [t["id"] for t in new if t["id"] not in production] + [i for i in DATASET_REPEATS if i not in production]
    if missing:
        sys.exit(f"error: no production answer recorded for {', '.join(missing)} in {LOGS / 'production.jsonl'}")
    rng = random.Random(f"meeting-actions:{args.seed}")

    weeks = collections.defaultdict(list)  # week -> [(timestamp, record)]
    resent = set(rng.sample([t["id"] for t in new], RESENT))
    for t in new:
        day = dt.date.fromisoformat(t["inputs"]["meeting_date"])
        at = stamp(rng, day)
        weeks[week_of(day)].append((at, record(rng, t, production, at, t["meta"]["labelled"])))
        if t["id"] in resent:
            again = stamp(rng, day, after=at)
            weeks[week_of(day)].append((again, record(rng, t, production, again, False)))
    names = sorted(weeks)
    for n, example_id in enumerate(DATASET_REPEATS):
        week = names[n % len(names)]
        monday = dt.date.fromisocalendar(int(week[:4]), int(week[6:]), 1)
        day = monday + dt.timedelta(days=rng.randrange(5))
        at = stamp(rng, day)
        weeks[week].append((at, record(rng, dataset[example_id], production, at, example_id in DATASET_REPEATS_LABELLED)))

    args.out_dir.mkdir(parents=True, exist_ok=True)
    for week in names:
        entries = sorted(weeks[week], key=lambda e: e[0])
        lines = [json.dumps(r, ensure_ascii=False).encode("utf-8") for _, r in entries]
        kind = BROKEN.get(week)
        if kind == "truncated":  # a writer killed mid-line
            at = rng.randrange(len(lines))
            lines.insert(at, lines[at][: rng.randint(40, len(lines[at]) // 2)])
        elif kind == "stray-text":  # another process's output in the same file
            at = rng.randrange(len(lines))
            when = entries[at][0]
            lines.insert(at, LOG_NOISE.format(date=when[:10], time=when[11:19]).encode("utf-8"))
        path = args.out_dir / f"{week}.jsonl.gz"
        with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as f:
            for line in lines:
                f.write(line + b"\n")
        records = [r for _, r in entries]
        print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {len(records)} records "
              f"({sum('reference' in r for r in records)} with a reference, "
              f"{sum('output' not in r for r in records)} without production's answer), "
              f"{1 if kind else 0} broken line, {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
