"""Per-type recall and precision of two span files against the corpus's gold spans.

    python score.py --corpus corpus.jsonl --ours ours.jsonl --presidio presidio.jsonl \
        --throughput throughput.json --md ../results/anonymize.md --json ../results/anonymize.json

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
    parser.add_argument("--throughput", required=True)
    parser.add_argument("--md", required=True)
    parser.add_argument("--json", required=True)
    args = parser.parse_args()

    corpus = load(args.corpus)
    ours, ours_neg = score(corpus, load(args.ours))
    presidio, presidio_neg = score(corpus, load(args.presidio))
    throughput = json.load(open(args.throughput))
    result = {
        "corpus": {"sentences": len(corpus), **{k: v for k, v in ours_neg.items() if k == "negative_sentences"}},
        "ours": {"per_type": ours, "spans_in_negative_sentences": ours_neg["spans_in_negative_sentences"]},
        "presidio": {"per_type": presidio, "spans_in_negative_sentences": presidio_neg["spans_in_negative_sentences"]},
        "throughput": throughput,
    }
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")

    lines = [
        "# Anonymization: ours vs Microsoft Presidio",
        "",
        f"{len(corpus)} synthetic customer-support sentences (Faker values in 7 locales, Banking77 texture; "
        f"{ours_neg['negative_sentences']} of them hold only look-alikes). How it was built and run: "
        "`bench/anonymize/README.md`. R = recall, P = precision, in %; \"removed\" = gold spans covered by a "
        "prediction of any type.",
        "",
        "| type | gold | ours R | ours P | ours removed | Presidio R | Presidio P | Presidio removed |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for t in TYPES + ["ALL"]:
        o, p = ours[t], presidio[t]
        lines.append(
            f"| {t} | {o['gold']} | {pct(o['recall'])} | {pct(o['precision'])} | {pct(o['removed'])} "
            f"| {pct(p['recall'])} | {pct(p['precision'])} | {pct(p['removed'])} |"
        )
    lines += [
        "",
        f"URL precision against any URL in the text (not only those with credentials): ours "
        f"{pct(ours['URL']['precision_any_url'])}, Presidio {pct(presidio['URL']['precision_any_url'])}.",
        f"Spans predicted in the {ours_neg['negative_sentences']} look-alike-only sentences: ours "
        f"{ours_neg['spans_in_negative_sentences']}, Presidio {presidio_neg['spans_in_negative_sentences']}.",
        "Presidio has no SECRET type; its ALL row counts those gold spans as missed.",
        "",
        "## Throughput (this machine, 2 cores, one thread each, same corpus)",
        "",
        "| corpus | ours (messages/s) | Presidio (messages/s) |",
        "| --- | ---: | ---: |",
    ]
    for name, row in throughput.items():
        lines.append(f"| {name} | {row['ours']:,.0f} | {row['presidio']:,.0f} |")
    with open(args.md, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
