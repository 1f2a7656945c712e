#!/usr/bin/env python3
"""Builds datasets/support-reply/examples.jsonl: customer messages and reference replies.

The messages are real online-banking customer queries from Banking77 (PolyAI,
CC-BY-4.0): Casanueva et al., "Efficient Intent Detection with Dual Sentence
Encoders", NLP4ConvAI @ ACL 2020, arXiv:2003.04807. Intents map to the seven
support queues of scripts/build-worked-example.py.

About 60% of the examples keep the message's calm tone (routine), 20% are
rewritten to sound urgent (urgency words, "!!", "?!", capitals) and 20% to
sound escalating (escalation phrases, or urgency in a conversation that keeps
coming back: earlier messages repeating the question). `meta.signal` is what
the signal detector of src/logs/signals.rs reads from the message and its
history: it is computed by the detector port in scripts/reply-rubric.py, and
an example whose rewrite does not read as the tone it was meant to have is
drawn again. The reference replies are written from templates per intent
(the topic and a concrete next step) and per tone; each scores 1.0 on the
rubric.

Usage: scripts/build-support-reply.py [--count 300] [--seed 2026]
Standard library only; the output is the same for the same arguments.
"""
import argparse
import collections
import csv
import importlib.util
import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BANKING77 = ROOT / "data" / "banking77"
OUT = ROOT / "datasets" / "support-reply"
SHARES = {"routine": 0.60, "urgent": 0.20, "escalating": 0.20}


def load(name, file):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Per intent: what the customer is asking about (said in the reply, in the
# customers' own words where possible) and a concrete next step.
INTENTS = {
    "card_arrival": ("your card that hasn't arrived", "In the app, go to Cards > Track delivery; if it is more than 7 working days late, tap Report missing card and we will send a new one free."),
    "card_linking": ("linking your card to your account", "In the app, go to Cards > Link a card and enter the card number and CVV shown on the card."),
    "card_delivery_estimate": ("when your card will be delivered", "Cards usually arrive within 3-5 working days; check Cards > Track delivery in the app for the date."),
    "card_not_working": ("your card not working", "In the app, check Cards > Card status is active and not frozen, then try the card with its PIN; if it still fails, tap Report a problem."),
    "contactless_not_working": ("contactless payments not working", "Make one chip-and-PIN payment first, which turns contactless on; then check Cards > Settings > Contactless in the app."),
    "getting_virtual_card": ("getting a virtual card", "In the app, go to Cards > Add card > Virtual; it is ready to use in a minute."),
    "card_acceptance": ("where your card is accepted", "Your card works wherever Mastercard is accepted; check in the app under Cards > Settings that online and abroad payments are on."),
    "get_physical_card": ("getting a physical card", "In the app, go to Cards > Order physical card, confirm your address, and it arrives within 5 working days."),
    "visa_or_mastercard": ("whether your card is Visa or Mastercard", "Our cards are Mastercard; the logo on the card and Cards > Card details in the app confirm it."),
    "disposable_card_limits": ("disposable virtual card limits", "Each disposable card works for one payment, up to 20 a day; in the app, Cards > Add card > Disposable makes a new one."),
    "getting_spare_card": ("getting a spare card", "In the app, go to Cards > Order another card; you can hold up to 3 at once."),
    "order_physical_card": ("ordering a physical card", "In the app, go to Cards > Order physical card and confirm your delivery address; it arrives in 3-5 working days."),
    "virtual_card_not_working": ("your virtual card not working", "In the app, check the virtual card is not frozen under Cards > Settings, then re-enter its details at checkout; if it fails, tap Report a problem."),
    "get_disposable_virtual_card": ("getting a disposable virtual card", "In the app, go to Cards > Add card > Disposable; it works for one online payment."),
    "activate_my_card": ("activating your card", "In the app, go to Cards > Activate and enter the 6-digit code printed on the card letter."),
    "card_about_to_expire": ("your card that is about to expire", "A new card is sent 30 days before expiry; check Cards > Card details in the app for its delivery date."),
    "apple_pay_or_google_pay": ("Apple Pay or Google Pay", "In the app, go to Cards > Add to Apple Pay or Add to Google Pay and follow the steps."),
    "card_payment_fee_charged": ("the fee on your card payment", "In the app, tap the payment to see the fee breakdown; if it looks wrong, tap Dispute within 30 days."),
    "card_payment_wrong_exchange_rate": ("the exchange rate on your card payment", "In the app, tap the payment to see the rate used; if it differs from the rate at payment time, tap Dispute."),
    "extra_charge_on_statement": ("the extra charge on your statement", "In the app, tap the charge to see who made it; if you don't recognise it, tap Dispute and we will check it within 5 working days."),
    "pending_card_payment": ("your pending card payment", "Pending payments settle within 7 days; if it is still pending after that, tap the payment in the app and choose Report a problem."),
    "declined_card_payment": ("your declined card payment", "In the app, check Cards > Card status and your balance, then try again; tap the payment to see why it was declined."),
    "reverted_card_payment?": ("the card payment that was reverted", "The merchant cancelled it, so the money returns within 5 working days; if it doesn't, tap the payment in the app and choose Report a problem."),
    "request_refund": ("getting a refund", "Ask the merchant for the refund first; if it hasn't arrived within 15 days, tap the payment in the app and choose Dispute."),
    "Refund_not_showing_up": ("your refund not showing up", "Refunds take up to 5 working days to appear; after that, tap the payment in the app and choose Refund missing."),
    "transaction_charged_twice": ("the payment charged twice", "One charge is often a temporary hold that drops off within 7 days; if both stay, tap one in the app and choose Dispute."),
    "pending_cash_withdrawal": ("your pending cash withdrawal", "Withdrawals settle within 2 working days; if it is still pending after that, tap it in the app and choose Report a problem."),
    "wrong_amount_of_cash_received": ("the wrong amount of cash from the ATM", "In the app, tap the withdrawal and choose Wrong amount; we will check with the ATM operator within 10 working days."),
    "atm_support": ("using ATMs", "Your card works at any ATM with the Mastercard logo; check Cards > Settings in the app for your free withdrawal allowance."),
    "declined_cash_withdrawal": ("your declined cash withdrawal", "In the app, check your balance and that ATM withdrawals are on under Cards > Settings, then try another ATM."),
    "card_swallowed": ("the ATM that kept your card", "In the app, freeze the card under Cards > Freeze, then tap Order replacement; the new card arrives in 3-5 working days."),
    "wrong_exchange_rate_for_cash_withdrawal": ("the exchange rate on your cash withdrawal", "In the app, tap the withdrawal to see the rate used; if it looks wrong, tap Dispute and we will check it."),
    "cash_withdrawal_charge": ("the charge on your cash withdrawal", "Withdrawals above your free allowance cost 2%; check Cards > Settings in the app for the allowance left this month."),
    "lost_or_stolen_card": ("your lost or stolen card", "In the app, freeze the card now under Cards > Freeze, then tap Report lost or stolen to order a replacement."),
    "compromised_card": ("your card being compromised", "In the app, freeze the card under Cards > Freeze, then tap Report compromised; we will send a new card with a new number."),
    "card_payment_not_recognised": ("a card payment you don't recognise", "In the app, freeze the card under Cards > Freeze, then tap the payment and choose I don't recognise this."),
    "direct_debit_payment_not_recognised": ("a direct debit you don't recognise", "In the app, tap the direct debit and choose I don't recognise this; you can cancel the mandate under Payments > Direct debits."),
    "cash_withdrawal_not_recognised": ("a cash withdrawal you don't recognise", "In the app, freeze the card under Cards > Freeze, then tap the withdrawal and choose I don't recognise this."),
    "lost_or_stolen_phone": ("your lost or stolen phone", "Log in on another device or the website and freeze your cards under Cards > Freeze, then tap Log out all devices."),
    "pin_blocked": ("your blocked PIN", "In the app, go to Cards > Unblock PIN and confirm with your passcode, then use the correct PIN at an ATM."),
    "change_pin": ("changing your PIN", "Change it at any ATM that offers PIN change, or in the app under Cards > View PIN."),
    "passcode_forgotten": ("your forgotten passcode", "On the app's login screen, tap Forgot passcode and follow the steps with your email and a selfie."),
    "cancel_transfer": ("cancelling your transfer", "In the app, tap the transfer and choose Cancel; this works while it is still pending."),
    "transfer_not_received_by_recipient": ("the transfer your recipient hasn't received", "In the app, tap the transfer and check its status and the recipient's details, then share the transfer receipt with them."),
    "declined_transfer": ("your declined transfer", "In the app, tap the transfer to see why it was declined, check the recipient's details, and send it again."),
    "pending_transfer": ("your pending transfer", "Transfers usually complete within 1 working day; in the app, tap the transfer to see its status and expected date."),
    "transfer_timing": ("how long a transfer takes", "Transfers in the same currency arrive within 1 working day, international ones in 2-5; tap the transfer in the app to see its expected date."),
    "beneficiary_not_allowed": ("adding a beneficiary", "In the app, check the beneficiary's name and account details under Payments > Recipients, then add them again."),
    "transfer_fee_charged": ("the fee on your transfer", "In the app, tap the transfer to see the fee breakdown; if it looks wrong, tap Report a problem."),
    "receiving_money": ("receiving money", "In the app, go to Account > Account details and share those details with the sender."),
    "failed_transfer": ("your failed transfer", "In the app, tap the transfer to see why it failed, check the recipient's details, and send it again; the money returns within 2 days."),
    "transfer_into_account": ("transferring money into your account", "In the app, go to Account > Account details and use those details for the transfer from your other bank."),
    "balance_not_updated_after_bank_transfer": ("your balance not updated after a bank transfer", "Bank transfers can take up to 2 working days; after that, send the transfer confirmation from your bank through Help > Chat in the app."),
    "automatic_top_up": ("automatic top-ups", "In the app, go to Account > Top up > Auto top-up to set the amount and the balance that triggers it."),
    "top_up_by_bank_transfer_charge": ("the charge for topping up by bank transfer", "Top-ups by bank transfer are free; if you were charged, tap the top-up in the app and choose Report a problem."),
    "pending_top_up": ("your pending top-up", "Top-ups usually complete within 1 hour; if it is still pending after that, tap the top-up in the app and choose Report a problem."),
    "top_up_limits": ("top-up limits", "In the app, Account > Top up > Limits shows how much you can top up today and this month."),
    "top_up_reverted": ("the top-up that was reverted", "Your card issuer reversed it; try again with another card, or top up by bank transfer in the app under Account > Top up."),
    "balance_not_updated_after_cheque_or_cash_deposit": ("your balance not updated after a cash or cheque deposit", "Deposits take up to 2 working days; after that, send a photo of the deposit receipt through Help > Chat in the app."),
    "topping_up_by_card": ("topping up by card", "In the app, go to Account > Top up > Card, enter the card details and confirm the amount."),
    "verify_top_up": ("verifying your top-up", "In the app, tap the top-up and choose Verify, then enter the code shown on your card statement."),
    "top_up_by_cash_or_cheque": ("topping up with cash or a cheque", "We can't take cash or cheques directly; deposit them at your other bank, then top up by bank transfer in the app."),
    "top_up_failed": ("your failed top-up", "In the app, check the card details under Account > Top up, then try again or top up by bank transfer."),
    "top_up_by_card_charge": ("the charge for topping up by card", "Top-ups with a card issued outside the EU cost 2%; in the app, Account > Top up shows the fee before you confirm."),
    "exchange_rate": ("our exchange rates", "In the app, go to Exchange to see the live rate for each currency before you confirm."),
    "fiat_currency_support": ("which currencies we support", "Open Exchange in the app to see the 30 currencies you can hold and exchange."),
    "exchange_via_app": ("exchanging currency in the app", "In the app, go to Exchange, choose the two currencies, enter the amount and tap Exchange."),
    "supported_cards_and_currencies": ("which cards and currencies we support", "We accept Visa and Mastercard for top-ups; open Exchange in the app to see the currencies you can hold."),
    "exchange_charge": ("the charge for exchanging currency", "Exchanges are free up to your monthly allowance, then 0.5%; in the app, Exchange shows the fee before you confirm."),
    "age_limit": ("the age limit for an account", "You need to be 18 to open an account; from 13 a parent can open a linked account in the app under Family."),
    "edit_personal_details": ("changing your personal details", "In the app, go to Profile > Personal details, edit the field and confirm with your passcode."),
    "why_verify_identity": ("why we verify your identity", "The law requires us to check who you are; in the app, Profile > Verify identity takes about 5 minutes."),
    "unable_to_verify_identity": ("verifying your identity", "In the app, go to Profile > Verify identity and retake the photo of your ID in good light, with all four corners visible."),
    "verify_my_identity": ("verifying your identity", "In the app, go to Profile > Verify identity, take a photo of your ID and a selfie; it takes about 5 minutes."),
    "terminate_account": ("closing your account", "Move your balance out first, then in the app go to Profile > Close account and confirm."),
    "verify_source_of_funds": ("verifying the source of your funds", "In the app, go to Profile > Verify source of funds and upload a recent payslip or bank statement."),
    "country_support": ("which countries we support", "The app's sign-up screen lists the supported countries; check yours there before you apply."),
}

QUEUE_TEAM = {
    "cards": "cards", "payments": "payments", "security": "security", "transfers": "transfers",
    "top_ups": "top-ups", "exchange": "exchange", "account": "account",
}

ROUTINE_OPENERS = ["About {topic}: ", "Thanks for asking about {topic}. ", "Happy to help with {topic}. ", "Here is how to handle {topic}. "]
URGENT_OPENERS = [
    "I understand this is urgent, so let's sort out {topic} right away. ",
    "I know {topic} can't wait, so here's what to do right away. ",
    "I understand the urgency with {topic}; let's fix it now. ",
]
ESCALATING_OPENERS = [
    "I'm sorry you've had to ask about {topic} more than once; we should have answered sooner. ",
    "I understand your frustration: {topic} is still not resolved and that is our failure. ",
    "I'm sorry your earlier messages about {topic} went unanswered; that's our fault. ",
]
ESCALATING_CLOSERS = [
    "I've escalated your case to a senior {team} specialist, who will reply within 24 hours.",
    "I've escalated this to our {team} team lead; expect a reply within 24 hours.",
]

# Tone rewrites.
URGENT_PREFIXES = ["URGENT: ", "Urgent - ", "This is an emergency. ", "Please help asap, ", "HELP!! "]
URGENT_SUFFIXES = ["!!", "?!", "!!!", " Please help!!", " I need this sorted right now.", " Asap please.", "??!!"]
ESCALATION_LINES = [
    "This is the third time I've asked.", "I want to speak to a manager.", "Still no answer from you.",
    "This is unacceptable.", "I'm filing a formal complaint.", "Nobody has replied to my messages.",
    "I've asked several times now.", "If this isn't fixed I'm going to the ombudsman.",
    "Let me talk to a supervisor.", "I asked you before and got nothing.", "Still no reply, 3rd time asking.",
]
FOLLOW_UPS = ["Any update on this? ", "Following up: ", "Hello? ", "Me again. ", "I asked yesterday: "]


def shout(text):
    return text.upper()


def urgent_rewrite(rng, text):
    """1-2 urgency cues on a calm message."""
    body = text.rstrip(" .?!")
    kind = rng.randrange(5)
    if kind == 0:
        return rng.choice(URGENT_PREFIXES) + text
    if kind == 1:
        return body + rng.choice(URGENT_SUFFIXES)
    if kind == 2:
        return shout(body) + rng.choice(["!!", "?!", "!", "?"])
    if kind == 3:
        return rng.choice(URGENT_PREFIXES) + body + rng.choice(URGENT_SUFFIXES)
    return body + ". " + rng.choice(["I need help immediately.", "Please help, it's urgent.", "This is an emergency!!"])


def follow_up(rng, text):
    return rng.choice(FOLLOW_UPS) + text[0].lower() + text[1:] if len(text) > 1 else text


def escalating_rewrite(rng, text):
    """(message, history, how): escalation in words, or urgency that keeps coming back."""
    kind = rng.choices(["phrase", "repeats", "urgent_history"], weights=[5, 3, 2])[0]
    if kind == "phrase":
        line = rng.choice(ESCALATION_LINES)
        message = (text.rstrip() + " " + line) if rng.random() < 0.7 else (line + " " + text)
        history = [text] + [follow_up(rng, text) for _ in range(rng.choice([0, 1, 1, 2]))]
        return message, history, "escalation phrase"
    if kind == "repeats":
        n = rng.choice([2, 2, 3])
        history = [text] + [follow_up(rng, text) for _ in range(n - 1)]
        return urgent_rewrite(rng, text), history, "urgency with repeated history"
    history = [urgent_rewrite(rng, text)]
    return urgent_rewrite(rng, text), history, "urgency after an urgent message"


def reply(rng, signal, intent, queue):
    topic, step = INTENTS[intent]
    if signal == "routine":
        opener = rng.choice(ROUTINE_OPENERS).format(topic=topic)
        return opener + (step[0].lower() + step[1:] if opener.endswith(": ") else step)
    if signal == "urgent":
        return rng.choice(URGENT_OPENERS).format(topic=topic) + step
    # A frame that keeps the reply within 60 words, the first in a seeded order.
    frames = [(o, c) for o in ESCALATING_OPENERS for c in ESCALATING_CLOSERS]
    rng.shuffle(frames)
    for opener, closer in frames:
        text = opener.format(topic=topic) + step + " " + closer.format(team=QUEUE_TEAM[queue])
        if len(text.split()) <= 60:
            return text
    raise SystemExit(f"no escalating reply for {intent} fits in 60 words")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()

    rubric = load("reply_rubric", "reply-rubric.py")
    queues = load("build_worked_example", "build-worked-example.py").QUEUES
    queue_of = {intent: q for q, intents in queues.items() for intent in intents}
    assert set(INTENTS) == set(queue_of), sorted(set(INTENTS) ^ set(queue_of))

    # Source ids as in the support-triage example: the message's row in
    # Banking77, train.csv's rows first (b77-00001 ...), then test.csv's.
    rows, seen, index = [], set(), 0
    for part in ("train", "test"):
        with open(BANKING77 / f"{part}.csv", newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                index += 1
                text = " ".join(row["text"].split())
                if text.lower() in seen:
                    continue
                seen.add(text.lower())
                # Calm, plain-ASCII messages of a reasonable length, so that every tone is ours.
                if not text.isascii() or not 4 <= len(text.split()) <= 40:
                    continue
                if rubric.read_signal(text, [])[0] != "routine":
                    continue
                rows.append((f"b77-{index:05d}", text, row["category"]))
    rng = random.Random(args.seed)
    rng.shuffle(rows)
    by_queue = collections.defaultdict(list)
    by_intent = collections.defaultdict(list)
    for row in rows:
        by_queue[queue_of[row[2]]].append(row)
        by_intent[row[2]].append(row)

    # Signals in fixed shares, shuffled; queues in turn so each has about a seventh.
    n_urgent = round(args.count * SHARES["urgent"])
    n_escalating = round(args.count * SHARES["escalating"])
    signals = ["urgent"] * n_urgent + ["escalating"] * n_escalating
    signals += ["routine"] * (args.count - len(signals))
    rng.shuffle(signals)
    queue_names = sorted(queues)
    used, examples, redrawn = set(), [], 0
    counters = collections.Counter()
    for i, signal in enumerate(signals):
        queue = queue_names[i % len(queue_names)]
        pool = [r for r in by_queue[queue] if r[0] not in used]
        source_id, text, intent = pool[rng.randrange(len(pool))]
        used.add(source_id)
        for attempt in range(20):
            how = "as written"
            if signal == "routine":
                message = text
                k = rng.choices([0, 1, 2], weights=[7, 2, 1])[0]
                earlier = [r[1] for r in by_intent[intent] if r[0] != source_id]
                history = rng.sample(earlier, k)
                how = "as written" if not k else f"as written, {k} calm earlier message{'s' if k > 1 else ''}"
            elif signal == "urgent":
                message = urgent_rewrite(rng, text)
                earlier = [r[1] for r in by_intent[intent] if r[0] != source_id]
                history = rng.sample(earlier, 1) if rng.random() < 0.2 else []
                how = "urgency cues" + (", 1 calm earlier message" if history else "")
            else:
                message, history, how = escalating_rewrite(rng, text)
            label, evidence = rubric.read_signal(message, history)
            if label == signal:
                break
            redrawn += 1
        else:
            raise SystemExit(f"could not make {source_id} read as {signal}")
        counters[(signal, how)] += 1
        reference = reply(rng, signal, intent, queue)
        words = len(reference.split())
        assert words <= rubric.MAX_WORDS, (intent, signal, words, reference)
        request = {"inputs": {"message": message, "history": history}, "outputs": {"reply": reference},
                   "prediction": {"reply": reference}, "field": "reply"}
        score, feedback = rubric.grade(request)
        assert score == 1.0, (source_id, signal, reference, feedback)
        examples.append({
            "id": f"reply-{i + 1:04d}",
            "inputs": {"message": message, "history": history},
            "outputs": {"reply": reference},
            "meta": {
                "intent": intent, "queue": queue, "signal": label, "signal_evidence": evidence,
                "topic_words": rubric.topic_words(message, history, reference),
                "tone": how, "source": "banking77", "source_id": source_id,
            },
        })

    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "examples.jsonl", "w", encoding="utf-8") as f:
        for example in examples:
            f.write(json.dumps(example, ensure_ascii=False) + "\n")
    by_signal = collections.Counter(e["meta"]["signal"] for e in examples)
    by_q = collections.Counter(e["meta"]["queue"] for e in examples)
    hist = collections.Counter(len(e["inputs"]["history"]) for e in examples)
    print(f"wrote {len(examples)} examples to {OUT / 'examples.jsonl'}")
    print("signals:", dict(sorted(by_signal.items())))
    print("queues:", dict(sorted(by_q.items())))
    print("history lengths:", dict(sorted(hist.items())))
    print("tones:", {f"{s}: {h}": n for (s, h), n in sorted(counters.items())})
    print("rewrites drawn again:", redrawn)
    print("reference words: max", max(len(e["outputs"]["reply"].split()) for e in examples))


if __name__ == "__main__":
    main()
