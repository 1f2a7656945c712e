"""Per-type recall and precision of two span files against the corpus's gold spans.

    python score.py --corpus heldout.jsonl --ours ours.jsonl --presidio presidio.jsonl \
        [--before before.jsonl] --throughput throughput.json \
        --md ../results/anonymize.md --json ../results/anonymize.json

`--before` scores a second build of ours (the detectors before a change) beside
the current one. Sentences holding only a look-alike are counted by category:
every span predicted in them is a false positive.

Recall of type T: gold spans of T overlapped (at least one character) by a
predicted span of T, over gold spans of T. Precision of T: predicted spans of T
that overlap a gold span of T, over predicted spans of T. "Removed" counts a
gold span as covered by a prediction of any type (the text is gone, the label
may be wrong). URL precision is also given against any URL in the text, since
the gold marks only URLs that carry credentials or tokens.
"""

import argparse
import json
import re

TYPES = ["EMAIL", "PHONE", "CARD", "IBAN", "IP", "SSN", "URL", "SECRET"]
ANY_URL = re.compile(r"(?:https?|postgres)://[^\s]+")


def overlaps(a, b):
    return a["start"] < b["end"] and b["start"] < a["end"]


def load(path):
    return {row["id"]: row for row in map(json.loads, open(path))}


def look_alikes(corpus, predicted):
    """Per look-alike category: sentences, and spans predicted in them (all false positives)."""
    out = {}
    for id_, row in corpus.items():
        if row["kind"] != "negative":
            continue
        entry = out.setdefault(row.get("look_alike", "other"), {"sentences": 0, "spans": 0, "examples": []})
        entry["sentences"] += 1
        preds = [p for p in predicted[id_]["spans"] if p["type"] in TYPES]
        entry["spans"] += len(preds)
        for p in preds[: max(0, 3 - len(entry["examples"]))]:
            entry["examples"].append(row["text"][p["start"] : p["end"]])
    return dict(sorted(out.items()))


def score(corpus, predicted):
    per_type = {t: {"gold": 0, "found": 0, "removed": 0, "pred": 0, "correct": 0, "correct_any_url": 0} for t in TYPES}
    negative_hits = 0
    negative_sentences = 0
    for id_, row in corpus.items():
        gold = row["spans"]
        preds = [p for p in predicted[id_]["spans"] if p["type"] in per_type]
        if row["kind"] == "negative":
            negative_sentences += 1
            negative_hits += len(preds)
        for g in gold:
            s = per_type[g["type"]]
            s["gold"] += 1
            s["found"] += any(p["type"] == g["type"] and overlaps(p, g) for p in preds)
            s["removed"] += any(overlaps(p, g) for p in preds)
        urls = [{"start": m.start(), "end": m.end()} for m in ANY_URL.finditer(row["text"])]
        for p in preds:
            s = per_type[p["type"]]
            s["pred"] += 1
            hit = any(g["type"] == p["type"] and overlaps(p, g) for g in gold)
            s["correct"] += hit
            if p["type"] == "URL":
                s["correct_any_url"] += hit or any(overlaps(p, u) for u in urls)
    out = {}
    for t, s in per_type.items():
        out[t] = {
            "gold": s["gold"],
            "recall": s["found"] / s["gold"] if s["gold"] else None,
            "removed": s["removed"] / s["gold"] if s["gold"] else None,
            "predicted": s["pred"],
            "precision": s["correct"] / s["pred"] if s["pred"] else None,
        }
        if t == "URL":
            out[t]["precision_any_url"] = s["correct_any_url"] / s["pred"] if s["pred"] else None
    totals = {k: sum(per_type[t][k] for t in TYPES) for k in ["gold", "found", "removed", "pred", "correct"]}
    out["ALL"] = {
        "gold": totals["gold"],
        "recall": totals["found"] / totals["gold"],
        "removed": totals["removed"] / totals["gold"],
        "predicted": totals["pred"],
        "precision": totals["correct"] / totals["pred"] if totals["pred"] else None,
    }
    return out, {"negative_sentences": negative_sentences, "spans_in_negative_sentences": negative_hits}


def pct(x):
    return "—" if x is None else f"{100 * x:.1f}"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--ours", required=True)
    parser.add_argument("--presidio", required=True)
    parser.add_argument("--before")
    parser.add_argument("--throughput", required=True)
    parser.add_argument("--md", required=True)
    parser.add_argument("--json", required=True)
    args = parser.parse_args()

    corpus = load(args.corpus)
    runs = {"ours": load(args.ours), "presidio": load(args.presidio)}
    if args.before:
        runs["before"] = load(args.before)
    scored = {name: score(corpus, spans) for name, spans in runs.items()}
    alikes = {name: look_alikes(corpus, spans) for name, spans in runs.items()}
    throughput = json.load(open(args.throughput))
    locales = sorted({row.get("locale", "?") for row in corpus.values()})
    negatives = scored["ours"][1]["negative_sentences"]
    result = {
        "corpus": {"sentences": len(corpus), "negative_sentences": negatives, "locales": locales},
        **{
            name: {
                "per_type": per_type,
                "spans_in_negative_sentences": neg["spans_in_negative_sentences"],
                "look_alikes": alikes[name],
            }
            for name, (per_type, neg) in scored.items()
        },
        "throughput": throughput,
    }
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2, ensure_ascii=False)
        f.write("\n")

    ours, presidio = scored["ours"][0], scored["presidio"][0]
    before = scored["before"][0] if args.before else None
    lines = [
        "# Anonymization: ours vs Microsoft Presidio",
        "",
        f"Held-out corpus: {len(corpus)} synthetic customer-support sentences (Faker values in {len(locales)} "
        f"locales: {', '.join(locales)}; Banking77 texture; {negatives} of them hold only a look-alike). "
        "It was generated with a seed never used while the detectors were written, and scored once. How it was "
        "built and run: `bench/anonymize/README.md`. R = recall, P = precision, in %; \"removed\" = gold spans "
        "covered by a prediction of any type.",
        "",
    ]
    before_head = " before R |" if before else ""
    before_rule = " ---: |" if before else ""
    lines += [
        f"| type | gold |{before_head} ours R | ours P | ours removed | Presidio R | Presidio P | Presidio removed |",
        f"| --- | ---: |{before_rule} ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for t in TYPES + ["ALL"]:
        o, p = ours[t], presidio[t]
        b = f" {pct(before[t]['recall'])} |" if before else ""
        lines.append(
            f"| {t} | {o['gold']} |{b} {pct(o['recall'])} | {pct(o['precision'])} | {pct(o['removed'])} "
            f"| {pct(p['recall'])} | {pct(p['precision'])} | {pct(p['removed'])} |"
        )
    lines += [
        "",
        f"URL precision against any URL in the text (not only those with credentials): ours "
        f"{pct(ours['URL']['precision_any_url'])}, Presidio {pct(presidio['URL']['precision_any_url'])}.",
        "Presidio has no SECRET type; its ALL row counts those gold spans as missed.",
    ]
    if before:
        lines.append(
            "\"before R\" is the recall of the detectors as they were before this corpus was built (same corpus)."
        )
    lines += [
        "",
        "## Look-alikes (every span found in them is a false positive)",
        "",
        f"| look-alike | sentences |{' before |' if before else ''} ours | Presidio | Presidio's spans, e.g. |",
        f"| --- | ---: |{' ---: |' if before else ''} ---: | ---: | --- |",
    ]
    for category, entry in alikes["ours"].items():
        p = alikes["presidio"][category]
        b = f" {alikes['before'][category]['spans']} |" if before else ""
        examples = ", ".join(f"`{e}`" for e in p["examples"])
        lines.append(f"| {category} | {entry['sentences']} |{b} {entry['spans']} | {p['spans']} | {examples} |")
    total = lambda name: sum(e["spans"] for e in alikes[name].values())
    b = f" {total('before')} |" if before else ""
    lines.append(f"| all | {negatives} |{b} {total('ours')} | {total('presidio')} | |")
    lines += [
        "",
        "## Throughput (this machine, 2 cores shared with other builds, one thread each)",
        "",
        "Messages per second of locating spans: `Anonymizer::find` (`pii_spans --bench`, repeated for 5 s) and "
        "Presidio's `AnalyzerEngine.analyze` (once over the corpus).",
        "",
    ]
    has_before = any("before" in row for row in throughput.values())
    lines += [
        f"| corpus |{' ours before |' if has_before else ''} ours | Presidio |",
        f"| --- |{' ---: |' if has_before else ''} ---: | ---: |",
    ]
    for name, row in throughput.items():
        b = f" {row['before']:,.0f} |" if has_before else ""
        lines.append(f"| {name} |{b} {row['ours']:,.0f} | {row['presidio']:,.0f} |")
    with open(args.md, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
