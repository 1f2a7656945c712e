"""An independent, slow Python implementation of promptloop's normalize,
content key and MinHash (src/logs/dedup.rs), used to pin the Rust values and
to run datasketch on exactly the same normalized text.

    python reference_minhash.py      # prints the values tests/logs_dedup.rs pins
"""

import re

import xxhash

MERSENNE_61 = (1 << 61) - 1
_U64 = (1 << 64) - 1
PERMUTATION_SEED = 0x70726F6D70746C70

# <NAME_N>: upper case ASCII letters, digits and `_`, starting with a letter.
_PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*_[0-9]+>")


def normalize(text: str) -> str:
    """Tokens (placeholders verbatim, runs of alphanumeric chars lower-cased) joined by one space.

    Rust's char::is_alphanumeric and Python's str.isalnum agree on letters and
    digits; they differ on some combining marks (e.g. Indic vowel signs), which
    the benchmark checks do not occur by comparing both outputs line by line.
    """
    tokens = []
    at = 0
    word = []

    def flush():
        if word:
            tokens.append("".join(word).lower())
            word.clear()

    while at < len(text):
        c = text[at]
        if c.isalnum():
            word.append(c)
            at += 1
            continue
        flush()
        if c == "<":
            m = _PLACEHOLDER.match(text, at)
            if m and m.end() - at <= 80:
                tokens.append(m.group(0))
                at = m.end()
                continue
        at += 1
    flush()
    return " ".join(tokens)


def content_key(comparable: str) -> str:
    return format(xxhash.xxh3_128_intdigest(comparable.encode()), "032x")


def _splitmix64(state):
    state = (state + 0x9E3779B97F4A7C15) & _U64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _U64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _U64
    return state, z ^ (z >> 31)


def permutations(num_perm=128):
    state, out = PERMUTATION_SEED, []
    for _ in range(num_perm):
        state, x = _splitmix64(state)
        state, y = _splitmix64(state)
        out.append((1 + x % (MERSENNE_61 - 1), y % MERSENNE_61))
    return out


def shingles(comparable: str, k=5):
    """Character k-shingles; a text shorter than k is one shingle."""
    return [comparable[i : i + k] for i in range(len(comparable) - k + 1)] or [comparable]


def signature(comparable: str, perms, k=5):
    hashes = [xxhash.xxh3_64_intdigest(s.encode()) % MERSENNE_61 for s in shingles(comparable, k)]
    return [min(((a * h + b) % MERSENNE_61) & 0xFFFFFFFF for h in hashes) for a, b in perms]


if __name__ == "__main__":
    text = normalize("Where is my card?")
    print(text, content_key(text), signature(text, permutations())[:4])
