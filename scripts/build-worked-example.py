#!/usr/bin/env python3
"""Builds datasets/support-triage/examples.jsonl from Banking77.

Banking77 (PolyAI, CC-BY-4.0): Casanueva et al., "Efficient Intent Detection with
Dual Sentence Encoders", NLP4ConvAI @ ACL 2020, arXiv:2003.04807. Each of its 77
intents is mapped onto one of seven support queues; a fixed-seed sample of the
messages becomes the worked example's dataset.

Ids are `b77-NNNNN`: the message's row in Banking77, counting train.csv's rows
from 1 (b77-00001 … b77-10003), then test.csv's (b77-10004 … b77-13083). They
name no split: promptloop splits by a hash of the id.

Usage: scripts/build-worked-example.py [PATH/TO/banking77 [COUNT]]   (default: data/banking77, 1000)
"""
import csv
import json
import random
import sys
from pathlib import Path

QUEUES = {
    "cards": [
        "card_arrival", "card_linking", "card_delivery_estimate", "card_not_working",
        "contactless_not_working", "getting_virtual_card", "card_acceptance",
        "get_physical_card", "visa_or_mastercard", "disposable_card_limits",
        "getting_spare_card", "order_physical_card", "virtual_card_not_working",
        "get_disposable_virtual_card", "activate_my_card", "card_about_to_expire",
        "apple_pay_or_google_pay",
    ],
    "payments": [
        "card_payment_fee_charged", "card_payment_wrong_exchange_rate",
        "extra_charge_on_statement", "pending_card_payment", "declined_card_payment",
        "reverted_card_payment?", "request_refund", "Refund_not_showing_up",
        "transaction_charged_twice", "pending_cash_withdrawal",
        "wrong_amount_of_cash_received", "atm_support", "declined_cash_withdrawal",
        "card_swallowed", "wrong_exchange_rate_for_cash_withdrawal", "cash_withdrawal_charge",
    ],
    "security": [
        "lost_or_stolen_card", "compromised_card", "card_payment_not_recognised",
        "direct_debit_payment_not_recognised", "cash_withdrawal_not_recognised",
        "lost_or_stolen_phone", "pin_blocked", "change_pin", "passcode_forgotten",
    ],
    "transfers": [
        "cancel_transfer", "transfer_not_received_by_recipient", "declined_transfer",
        "pending_transfer", "transfer_timing", "beneficiary_not_allowed",
        "transfer_fee_charged", "receiving_money", "failed_transfer",
        "transfer_into_account", "balance_not_updated_after_bank_transfer",
    ],
    "top_ups": [
        "automatic_top_up", "top_up_by_bank_transfer_charge", "pending_top_up",
        "top_up_limits", "top_up_reverted", "balance_not_updated_after_cheque_or_cash_deposit",
        "topping_up_by_card", "verify_top_up", "top_up_by_cash_or_cheque", "top_up_failed",
        "top_up_by_card_charge",
    ],
    "exchange": [
        "exchange_rate", "fiat_currency_support", "exchange_via_app",
        "supported_cards_and_currencies", "exchange_charge",
    ],
    "account": [
        "age_limit", "edit_personal_details", "why_verify_identity",
        "unable_to_verify_identity", "terminate_account", "verify_source_of_funds",
        "verify_my_identity", "country_support",
    ],
}


def main() -> None:
    root = Path(__file__).resolve().parent.parent
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else root / "data" / "banking77"
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    queue_of = {intent: q for q, intents in QUEUES.items() for intent in intents}
    categories = json.loads((src / "categories.json").read_text())
    missing = sorted(set(categories) - set(queue_of))
    assert not missing, f"intents without a queue: {missing}"

    rows = []
    for part in ("train", "test"):
        with open(src / f"{part}.csv", newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                rows.append((f"b77-{len(rows) + 1:05d}", row["text"].strip(), row["category"]))
    # One copy of each message text: Banking77 repeats a few verbatim.
    seen, unique = set(), []
    for row in rows:
        key = row[1].lower()
        if key not in seen:
            seen.add(key)
            unique.append(row)
    random.Random(77).shuffle(unique)

    out = root / "datasets" / "support-triage" / "examples.jsonl"
    with open(out, "w", encoding="utf-8") as f:
        for ident, text, intent in sorted(unique[:count]):
            f.write(json.dumps({
                "id": ident,
                "inputs": {"message": text},
                "outputs": {"queue": queue_of[intent]},
                "meta": {"intent": intent, "source": "banking77"},
            }, ensure_ascii=False) + "\n")
    print(f"wrote {min(count, len(unique))} examples to {out}")


if __name__ == "__main__":
    main()
