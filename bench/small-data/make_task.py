#!/usr/bin/env python3
"""Builds the "small data" acceptance task: bench/small-data/datasets/queues7/examples.jsonl.

40 train, 30 dev and 100 test online-banking messages, each labelled with one of seven
labels that say what the customer needs (card_delivery, card_problem, fees_and_charges,
pending_or_failed, refund_and_dispute, identity_and_account, money_in). The messages and
their intents come from Banking77 (PolyAI, CC-BY-4.0): Casanueva et al., "Efficient Intent
Detection with Dual Sentence Encoders", NLP4ConvAI @ ACL 2020, arXiv:2003.04807. The labels
and the mapping from intents to labels are ours, and differ from the worked example's
queues (scripts/build-worked-example.py); intents that fit no label cleanly are left out.

Train and dev messages are sampled from Banking77's train.csv, test messages from its
test.csv; no message text occurs twice. Within each label the sample takes the label's
intents in turn, so every intent is represented about equally.

promptloop assigns an example's split from its id: bucket = first 8 bytes of sha256(id),
big-endian, modulo 10000, against the cumulative [dataset] split fractions of the pipeline
(here train 0.25, dev 0.20, test 0.55). The script walks the ids q7-0001, q7-0002, ... and
gives each id to the next message waiting for the split that id falls in, so every message
lands in the split it was sampled for. It then reads the file back, recomputes each split
from the ids (with the fractions in pipelines/queues7.toml, when that file exists) and checks
the counts. Deterministic: the same CSVs always give the same bytes. Standard library only.

Usage: python3 bench/small-data/make_task.py [PATH/TO/banking77]   (default data/banking77 in the repository)
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import random
import sys
import tomllib
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "datasets" / "queues7" / "examples.jsonl"
PIPELINE = HERE / "pipelines" / "queues7.toml"
DEFAULT_SRC = Path(__file__).resolve().parents[2] / "data" / "banking77"

SEED = 20260
ID_PREFIX = "q7-"
SPLIT = {"train": 0.25, "dev": 0.20, "test": 0.55}
SIZES = {"train": 40, "dev": 30, "test": 100}
# Which labels take the remainder when a split's size is not a multiple of 7, as an offset
# into LABELS: train gives 6 to labels 0-4, dev 5 to labels 5-6, test 15 to labels 2-3, so
# each label has 24 or 25 examples in all.
EXTRA_FROM = {"train": 0, "dev": 5, "test": 2}

# label -> Banking77 intents. Order matters (it is the enum's order in the pipeline).
LABELS: dict[str, list[str]] = {
    # Getting a new, extra or replacement card, and waiting for it to arrive.
    "card_delivery": [
        "card_arrival", "card_delivery_estimate", "order_physical_card",
        "getting_spare_card", "card_about_to_expire",
    ],
    # The card the customer has does not work.
    "card_problem": [
        "card_not_working", "contactless_not_working", "virtual_card_not_working",
        "card_swallowed", "pin_blocked",
    ],
    # A fee or charge: why it was taken, or how much it is.
    "fees_and_charges": [
        "card_payment_fee_charged", "transfer_fee_charged", "cash_withdrawal_charge",
        "exchange_charge", "top_up_by_card_charge", "top_up_by_bank_transfer_charge",
        "extra_charge_on_statement",
    ],
    # A payment, transfer, top-up or withdrawal that is still pending, was declined or failed.
    "pending_or_failed": [
        "pending_card_payment", "pending_transfer", "pending_top_up", "pending_cash_withdrawal",
        "declined_card_payment", "declined_transfer", "declined_cash_withdrawal",
        "failed_transfer", "top_up_failed", "top_up_reverted",
    ],
    # Getting money back, or disputing a payment the customer did not make or that was wrong.
    "refund_and_dispute": [
        "request_refund", "Refund_not_showing_up", "transaction_charged_twice",
        "wrong_amount_of_cash_received", "card_payment_not_recognised",
        "direct_debit_payment_not_recognised", "cash_withdrawal_not_recognised",
    ],
    # Verifying identity, personal details, age requirement, closing the account.
    "identity_and_account": [
        "verify_my_identity", "why_verify_identity", "unable_to_verify_identity",
        "edit_personal_details", "age_limit", "terminate_account",
    ],
    # How to put money into the account: top-ups by card, cash or cheque, automatic
    # top-ups and their limits, transfers in, salary.
    "money_in": [
        "topping_up_by_card", "top_up_by_cash_or_cheque", "automatic_top_up",
        "top_up_limits", "transfer_into_account", "receiving_money",
    ],
}

# Banking77 intents deliberately left out: they straddle two labels or fit none.
DROPPED = [
    "activate_my_card", "apple_pay_or_google_pay", "atm_support",
    "balance_not_updated_after_bank_transfer", "balance_not_updated_after_cheque_or_cash_deposit",
    "beneficiary_not_allowed", "cancel_transfer", "card_acceptance", "card_linking",
    "card_payment_wrong_exchange_rate", "change_pin", "compromised_card", "country_support",
    "disposable_card_limits", "exchange_rate", "exchange_via_app", "fiat_currency_support",
    "get_disposable_virtual_card", "get_physical_card", "getting_virtual_card",
    "lost_or_stolen_card", "lost_or_stolen_phone", "passcode_forgotten",
    "reverted_card_payment?", "supported_cards_and_currencies",
    "transfer_not_received_by_recipient", "transfer_timing", "verify_source_of_funds",
    "verify_top_up", "visa_or_mastercard", "wrong_exchange_rate_for_cash_withdrawal",
]

ATTRIBUTION = ("Banking77 (PolyAI), CC-BY-4.0: Casanueva et al., \"Efficient Intent Detection "
               "with Dual Sentence Encoders\", NLP4ConvAI @ ACL 2020, arXiv:2003.04807")


def bucket(example_id: str) -> int:
    digest = hashlib.sha256(example_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 10000


def _round(x: float) -> int:
    # Rust's f64::round: halves away from zero (Python's round() would go to even).
    return int(math.floor(x + 0.5))


def split_of(example_id: str, fractions: dict[str, float]) -> str:
    """Exactly src/dataset/mod.rs split_of."""
    b = bucket(example_id)
    if b < _round(fractions["train"] * 10000.0):
        return "train"
    if b < _round((fractions["train"] + fractions["dev"]) * 10000.0):
        return "dev"
    return "test"


def norm(text: str) -> str:
    return " ".join(text.lower().split())


def read_csv(path: Path) -> list[tuple[int, str, str]]:
    """(line number, text, intent) in file order; line 1 is the header."""
    with open(path, newline="", encoding="utf-8") as f:
        return [(n, row["text"].strip(), row["category"])
                for n, row in enumerate(csv.DictReader(f), start=2)]


def per_label_counts(split: str) -> dict[str, int]:
    labels = list(LABELS)
    base, extra = divmod(SIZES[split], len(labels))
    counts = {label: base for label in labels}
    for k in range(extra):
        counts[labels[(EXTRA_FROM[split] + k) % len(labels)]] += 1
    return counts


def sample(rng: random.Random, rows: list[tuple[int, str, str]], file: str, split: str,
           used: set[str]) -> list[dict]:
    by_intent: dict[str, list[tuple[int, str, str]]] = {}
    for row in rows:
        by_intent.setdefault(row[2], []).append(row)
    picked = []
    for label, count in per_label_counts(split).items():
        pools = []
        for intent in LABELS[label]:
            pool = list(by_intent[intent])  # file order, then a seeded shuffle
            rng.shuffle(pool)
            pools.append(pool)
        rng.shuffle(pools)
        taken = 0
        while taken < count:
            progressed = False
            for pool in pools:
                if taken == count:
                    break
                while pool:
                    n, text, intent = pool.pop()
                    if norm(text) not in used:
                        used.add(norm(text))
                        picked.append({"label": label, "intent": intent, "text": text,
                                       "row": f"{file}:{n}"})
                        taken += 1
                        progressed = True
                        break
            if not progressed:
                raise SystemExit(f"not enough messages for {label} in {file}")
    rng.shuffle(picked)  # so that ids interleave the labels
    return picked


def build(src: Path) -> list[dict]:
    categories = set(json.loads((src / "categories.json").read_text(encoding="utf-8")))
    mapped = [i for intents in LABELS.values() for i in intents]
    assert len(mapped) == len(set(mapped)), "an intent is mapped twice"
    assert set(mapped) | set(DROPPED) == categories, "every intent is mapped or dropped"
    assert not set(mapped) & set(DROPPED)

    train_rows = read_csv(src / "train.csv")
    test_rows = read_csv(src / "test.csv")
    rng = random.Random(SEED)
    used: set[str] = set()
    # Test first from test.csv; then train and dev, disjoint, from train.csv. A text that
    # also occurs in test.csv is never picked again (used holds normalized texts).
    waiting = {
        "test": sample(rng, test_rows, "test.csv", "test", used),
        "train": sample(rng, train_rows, "train.csv", "train", used),
        "dev": sample(rng, train_rows, "train.csv", "dev", used),
    }

    examples = []
    n = 0
    while any(waiting.values()):
        n += 1
        ident = f"{ID_PREFIX}{n:04d}"
        part = split_of(ident, SPLIT)
        if waiting[part]:
            ex = waiting[part].pop(0)
            examples.append({
                "id": ident,
                "inputs": {"message": ex["text"]},
                "outputs": {"queue": ex["label"]},
                "meta": {"intent": ex["intent"], "source": "banking77", "row": ex["row"],
                         "license": "CC-BY-4.0"},
            })
    return examples


def verify(path: Path) -> None:
    fractions = SPLIT
    if PIPELINE.exists():
        with open(PIPELINE, "rb") as f:
            cfg = tomllib.load(f)
        fractions = cfg["dataset"]["split"]
        assert fractions == SPLIT, f"{PIPELINE} splits {fractions}, this script {SPLIT}"
        signature = cfg["signatures"][cfg["program"]["predictors"][0]["signature"]]
        assert list(signature["outputs"]["queue"]["values"]) == list(LABELS), "labels differ"
    counts: Counter = Counter()
    per_label: Counter = Counter()
    texts: set[str] = set()
    ids: set[str] = set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            part = split_of(row["id"], fractions)
            label = row["outputs"]["queue"]
            assert label in LABELS
            assert row["meta"]["row"].startswith("test.csv" if part == "test" else "train.csv")
            assert row["id"] not in ids
            ids.add(row["id"])
            t = norm(row["inputs"]["message"])
            assert t not in texts, f"duplicate text {row['id']}"
            texts.add(t)
            counts[part] += 1
            per_label[(part, label)] += 1
    assert dict(counts) == SIZES, f"split counts {dict(counts)} != {SIZES}"
    for part in SIZES:
        assert {l: per_label[(part, l)] for l in LABELS} == per_label_counts(part)
    print(f"verified {path.relative_to(HERE.parents[1])}: " +
          ", ".join(f"{p} {counts[p]}" for p in ("train", "dev", "test")))
    width = max(map(len, LABELS))
    print(f"  {'label':<{width}}  train  dev  test")
    for label in LABELS:
        print(f"  {label:<{width}}  {per_label[('train', label)]:>5}  {per_label[('dev', label)]:>3}"
              f"  {per_label[('test', label)]:>4}")


def main(argv: list[str]) -> None:
    src = Path(argv[0]) if argv else DEFAULT_SRC
    examples = build(src)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps(ex, ensure_ascii=False) + "\n")
    print(f"wrote {len(examples)} examples to {OUT.relative_to(HERE.parents[1])} "
          f"(ids up to {examples[-1]['id']}; data: {ATTRIBUTION})")
    verify(OUT)


if __name__ == "__main__":
    main(sys.argv[1:])
