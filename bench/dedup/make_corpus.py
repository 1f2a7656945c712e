"""Builds the benchmark corpus: Banking77 messages (CC-BY-4.0, PolyAI; see
README.md) plus generated exact and near repeats, 100,000 records with a fixed
seed, as JSONL lines {"id", "inputs": {"message"}, "source", "variant"}.

    python make_corpus.py BANKING77_DIR OUT.jsonl [--records 100000] [--seed 77]
"""

import argparse
import csv
import json
import random
import string
from pathlib import Path


def read_banking77(folder: Path):
    texts = []
    for name in ("train", "test"):
        with open(folder / f"{name}.csv", newline="", encoding="utf-8") as f:
            for i, row in enumerate(csv.DictReader(f)):
                texts.append((f"b77-{name}-{i:05d}", row["text"]))
    return texts


def swap_words(rng, words):
    if len(words) > 1:
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
    return words


def drop_word(rng, words):
    if len(words) > 2:
        del words[rng.randrange(len(words))]
    return words


def repeat_word(rng, words):
    i = rng.randrange(len(words))
    words.insert(i, words[i])
    return words


def typo(rng, words):
    i = rng.randrange(len(words))
    w = words[i]
    j = rng.randrange(len(w) + 1)
    op = rng.choice(("replace", "insert", "delete", "transpose"))
    letter = rng.choice(string.ascii_lowercase)
    if op == "replace" and j < len(w):
        w = w[:j] + letter + w[j + 1 :]
    elif op == "delete" and j < len(w) and len(w) > 1:
        w = w[:j] + w[j + 1 :]
    elif op == "transpose" and j + 1 < len(w):
        w = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    else:
        w = w[:j] + letter + w[j:]
    words[i] = w
    return words


NEAR_EDITS = (swap_words, drop_word, repeat_word, typo)


def surface_change(rng, text):
    """Case and punctuation only: an exact duplicate once normalized."""
    choice = rng.randrange(4)
    if choice == 0:
        text = text.upper()
    elif choice == 1:
        text = text.lower()
    elif choice == 2:
        text = text.rstrip("?.!") + rng.choice(("??", "!!", "...", " ?", "?!"))
    else:
        text = "  " + text.replace(" ", "  ") + " "
    return text


def near_repeat(rng, text):
    words = text.split()
    if not words:
        return text, "near-none"
    edits = rng.choice((1, 1, 1, 2))
    names = []
    for _ in range(edits):
        edit = rng.choice(NEAR_EDITS)
        words = edit(rng, words)
        names.append(edit.__name__)
    out = " ".join(words)
    if rng.random() < 0.3:
        out = surface_change(rng, out)
        names.append("surface")
    return out, "near:" + "+".join(names)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("banking77", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=77)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    originals = read_banking77(args.banking77)
    rng.shuffle(originals)
    seen = []  # originals emitted so far, the pool repeats are drawn from
    fresh = iter(originals)
    with open(args.out, "w", encoding="utf-8") as out:
        for n in range(args.records):
            # Originals spread over the whole stream; repeats of earlier ones between them.
            remaining = args.records - n
            left = len(originals) - len(seen)
            if not seen or (left and rng.random() < left / remaining):
                source, text = next(fresh)
                seen.append((source, text))
                variant = "original"
            else:
                source, base = rng.choice(seen)
                r = rng.random()
                if r < 0.2:
                    text, variant = base, "exact"
                elif r < 0.4:
                    text, variant = surface_change(rng, base), "surface"
                else:
                    text, variant = near_repeat(rng, base)
            record = {"id": f"r{n:06d}", "inputs": {"message": text}, "source": source, "variant": variant}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
