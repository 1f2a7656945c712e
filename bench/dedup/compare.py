"""Compares the per-record duplicate decisions of promptloop (near_dups) and
datasketch with each other and with exact Jaccard similarity of the character
5-shingle sets, computed with the same sequential protocol (a record is a
duplicate when some earlier kept record has Jaccard >= 0.8; kept otherwise).

    python compare.py CORPUS.jsonl OURS.json DATASKETCH.json RESULT.json

The exact run uses a prefix filter, which is exact: if J(A, B) >= t then B
holds at least one of any |A| - ceil(t|A|) + 1 shingles of A, so querying the
rarest ones finds every such B.
"""

import json
import statistics
import sys
import time
from collections import Counter, defaultdict

from reference_minhash import normalize, shingles

# Jaccard >= 4/5, in integers.
NUM, DEN = 4, 5


def shingle_sets(corpus_path):
    with open(corpus_path, encoding="utf-8") as f:
        texts = [normalize(json.loads(line)["inputs"]["message"]) for line in f if line.strip()]
    return texts, [frozenset(shingles(t)) for t in texts]


def jaccard(a, b):
    return len(a & b) / len(a | b)


def exact_sequential(texts, sets):
    frequency = Counter(s for shingle_set in sets for s in shingle_set)
    postings = defaultdict(list)
    first_with_text = {}
    dup_of = []
    for i, (text, a) in enumerate(zip(texts, sets)):
        if text in first_with_text:
            dup_of.append(first_with_text[text])
            continue
        prefix = (len(a) - (NUM * len(a) + DEN - 1) // DEN) + 1
        rarest = sorted(a, key=lambda s: (frequency[s], s))[:prefix]
        candidates = set()
        for s in rarest:
            candidates.update(postings[s])
        best, best_inter_union = None, (0, 1)
        for j in sorted(candidates):
            b = sets[j]
            inter, union = len(a & b), len(a | b)
            if DEN * inter >= NUM * union and inter * best_inter_union[1] > best_inter_union[0] * union:
                best, best_inter_union = j, (inter, union)
        if best is not None:
            dup_of.append(best)
            continue
        dup_of.append(None)
        first_with_text[text] = i
        for s in a:
            postings[s].append(i)
    return dup_of


def confusion(predicted, truth):
    """Counts with 'dup' as the positive class."""
    c = Counter((p is not None, t is not None) for p, t in zip(predicted, truth))
    tp, fp, fn, tn = c[(True, True)], c[(True, False)], c[(False, True)], c[(False, False)]
    return {
        "both_dup": tp,
        "only_first_dup": fp,
        "only_second_dup": fn,
        "both_unique": tn,
        "agreement": (tp + tn) / len(predicted),
    }


def summary(values):
    if not values:
        return {"count": 0}
    return {
        "count": len(values),
        "at_or_above_0.8": sum(v >= 0.8 for v in values),
        "min": round(min(values), 4),
        "median": round(statistics.median(values), 4),
        "max": round(max(values), 4),
    }


def main():
    corpus, ours_path, datasketch_path, out_path = sys.argv[1:5]
    texts, sets = shingle_sets(corpus)
    ours = json.load(open(ours_path))
    theirs = json.load(open(datasketch_path))

    started = time.perf_counter()
    truth = exact_sequential(texts, sets)
    exact_seconds = time.perf_counter() - started

    ours_vs_theirs = confusion(ours["dup_of"], theirs["dup_of"])
    # Where they disagree, the true Jaccard of the pair the "duplicate" side named.
    only_ours = [i for i, (o, t) in enumerate(zip(ours["dup_of"], theirs["dup_of"])) if o is not None and t is None]
    only_theirs = [i for i, (o, t) in enumerate(zip(ours["dup_of"], theirs["dup_of"])) if o is None and t is not None]
    both = [i for i, (o, t) in enumerate(zip(ours["dup_of"], theirs["dup_of"])) if o is not None and t is not None]

    def pair_jaccards(records, claims):
        return [jaccard(sets[i], sets[claims[i]]) for i in records]

    def exact_says_dup(records):
        return sum(truth[i] is not None for i in records)

    result = {
        "records": len(texts),
        "ours_vs_datasketch": ours_vs_theirs,
        "same_earlier_record_when_both_dup": sum(ours["dup_of"][i] == theirs["dup_of"][i] for i in both),
        "disagreements": {
            "only_ours_dup": {
                "true_jaccard_of_our_pair": summary(pair_jaccards(only_ours, ours["dup_of"])),
                "exact_protocol_says_dup": exact_says_dup(only_ours),
            },
            "only_datasketch_dup": {
                "true_jaccard_of_datasketch_pair": summary(pair_jaccards(only_theirs, theirs["dup_of"])),
                "exact_protocol_says_dup": exact_says_dup(only_theirs),
            },
        },
        "false_pairs": {
            # Duplicate calls whose named pair is truly below 0.8, over all records.
            "ours": sum(jaccard(sets[i], sets[o]) < 0.8 for i, o in enumerate(ours["dup_of"]) if o is not None),
            "datasketch": sum(
                jaccard(sets[i], sets[t]) < 0.8 for i, t in enumerate(theirs["dup_of"]) if t is not None
            ),
        },
        "vs_exact_jaccard": {
            "exact_duplicates": sum(t is not None for t in truth),
            "ours": confusion(ours["dup_of"], truth),
            "datasketch": confusion(theirs["dup_of"], truth),
            "datasketch_any_candidate": confusion(theirs["dup_of_any_candidate"], truth),
            "exact_seconds": round(exact_seconds, 1),
        },
        "kept": {"ours": ours["kept"], "datasketch": theirs["kept"], "exact": sum(t is None for t in truth)},
        "bands_rows": {"ours": ours["bands_rows"], "datasketch": theirs["bands_rows"]},
        "in_process_seconds": {
            "ours": {"signatures": ours["signature_seconds"], "index": ours["index_seconds"]},
            "datasketch": {"signatures": theirs["signature_seconds"], "index": theirs["index_seconds"]},
        },
    }
    with open(out_path, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
