"""The same sequential protocol as `examples/near_dups.rs`, with datasketch:
normalize each record's message the way promptloop does, MinHash its character
5-shingles (num_perm=128), then for each record in order query a MinHashLSH
(threshold 0.8) of the records kept so far, take the most similar candidate
by estimated Jaccard, call the record a duplicate when that is >= 0.8, and
insert it otherwise.

    python datasketch_near_dups.py IN.jsonl OUT.json [--normalized FILE]

OUT.json has the same per-record fields as near_dups (dup_of, similarity),
plus `dup_of_any_candidate`: the decision when any LSH candidate counts, as
datasketch's query alone answers.
"""

import argparse
import json
import time

from datasketch import MinHash, MinHashLSH

from reference_minhash import normalize, shingles

THRESHOLD = 0.8
NUM_PERM = 128
SHINGLE = 5


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--normalized")
    args = parser.parse_args()

    with open(args.input, encoding="utf-8") as f:
        # One input field, so the comparable text is the normalized message.
        comparables = [normalize(json.loads(line)["inputs"]["message"]) for line in f if line.strip()]
    if args.normalized:
        with open(args.normalized, "w", encoding="utf-8") as f:
            f.writelines(text + "\n" for text in comparables)

    started = time.perf_counter()
    minhashes = MinHash.bulk(
        ([s.encode("utf-8") for s in shingles(text, SHINGLE)] for text in comparables), num_perm=NUM_PERM
    )
    signature_seconds = time.perf_counter() - started

    started = time.perf_counter()
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    kept = {}
    dup_of, similarity, any_candidate = [], [], []
    for i, m in enumerate(minhashes):
        best, best_sim = None, -1.0
        candidates = lsh.query(m)
        for key in sorted(candidates):
            sim = m.jaccard(kept[key])
            if sim > best_sim:
                best, best_sim = key, sim
        if best is not None and best_sim >= THRESHOLD:
            dup_of.append(best)
            similarity.append(best_sim)
        else:
            dup_of.append(None)
            similarity.append(None)
            lsh.insert(i, m, check_duplication=False)
            kept[i] = m
        any_candidate.append(min(candidates) if candidates else None)
    index_seconds = time.perf_counter() - started

    out = {
        "records": len(dup_of),
        "kept": len(kept),
        "bands_rows": [lsh.b, lsh.r],
        "signature_seconds": signature_seconds,
        "index_seconds": index_seconds,
        "dup_of": dup_of,
        "similarity": similarity,
        "dup_of_any_candidate": any_candidate,
    }
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
