#!/usr/bin/env python3
"""Tests for scripts/reply-rubric.py: python3 -m unittest scripts/test_reply_rubric.py (or run this file)."""
import gzip
import importlib.util
import json
import subprocess
import sys
import unittest
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "reply-rubric.py"
spec = importlib.util.spec_from_file_location("reply_rubric", SCRIPT)
rubric = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rubric)

REFERENCE_ROUTINE = ("Thanks for asking about your card that hasn't arrived. In the app, go to Cards > Track delivery; "
                     "if it is more than 7 working days late, tap Report missing card and we will send a new one free.")
ROUTINE = {"message": "I ordered a card two weeks ago and it still hasn't arrived.", "history": []}
URGENT = {"message": "URGENT: my card still hasn't arrived and I'm travelling tomorrow!!", "history": []}
ESCALATING = {
    "message": "This is the third time I've asked. Where is my card?",
    "history": ["Where is my card?", "Any update on my card?"],
}


def run(request, raw=None):
    """(exit status, stdout JSON or None, stderr) of the rubric as promptloop runs it."""
    data = raw if raw is not None else json.dumps(request)
    done = subprocess.run([sys.executable, str(SCRIPT)], input=data.encode("utf-8"), capture_output=True, timeout=30)
    out = done.stdout.decode().strip().splitlines()
    return done.returncode, (json.loads(out[-1]) if out else None), done.stderr.decode()


def request(inputs, reply, reference=REFERENCE_ROUTINE):
    return {"inputs": inputs, "outputs": {"reply": reference}, "prediction": {"reply": reply}, "field": "reply"}


class Detector(unittest.TestCase):
    """The cases of src/logs/signals.rs's own tests, through the port."""

    def test_calm_messages_are_routine(self):
        for message in ["How do I top up with a bank transfer?", "My card hasn't arrived yet. Can you check?",
                        "Is there a fee for using an ATM abroad? Thanks!", "What is my PIN for the new card?"]:
            self.assertEqual(rubric.read_signal(message, []), ("routine", []), message)

    def test_urgency_cues(self):
        cases = [("My card was declined again!!!", '1 run of "!!"'), ("Where is my money?!", "interrobang ?!"),
                 ("Why was I charged twice??!!", "interrobang ??!!"),
                 ("MY CARD IS NOT WORKING at the shop", "3 of 5 words in capitals"),
                 ("I need this sorted urgently please", 'urgency word "urgently"')]
        for message, cue in cases:
            label, evidence = rubric.read_signal(message, [])
            self.assertEqual(label, "urgent", message)
            self.assertIn(cue, evidence, message)

    def test_escalation(self):
        label, evidence = rubric.read_signal("This is the third time I’ve asked. I want to speak to a manager.", [])
        self.assertEqual(label, "escalating")
        self.assertIn('escalation phrase "third time i\'ve asked"', evidence)
        self.assertIn('escalation phrase "speak to a manager"', evidence)
        self.assertEqual(rubric.read_signal("I will take legal action", [])[0], "escalating")

    def test_history(self):
        history = ["Where is my transfer?", "Any news on my transfer?"]
        label, evidence = rubric.read_signal("STILL NOTHING HERE!!", history)
        self.assertEqual(label, "escalating")
        self.assertIn("2 earlier messages in the conversation", evidence)
        self.assertEqual(rubric.read_signal("Where is it?!", history[:1])[0], "urgent")
        self.assertEqual(rubric.read_signal("Where is it?!", ["HELP ME NOW!!!"])[0], "escalating")
        self.assertEqual(rubric.read_signal("Thanks, and the fee?", history)[0], "routine")

    def test_placeholders_and_abbreviations(self):
        message = "Send it to <EMAIL_1> and <PHONE_1> via SEPA or SWIFT to my IBAN"
        self.assertEqual(rubric.read_signal(message, [])[0], "routine")

    def test_history_as_text_is_read_by_lines(self):
        self.assertEqual(rubric.history_list("Where is it?\n\nAny news?"), ["Where is it?", "Any news?"])


class Rubric(unittest.TestCase):
    def test_the_reference_scores_one(self):
        status, verdict, _ = run(request(ROUTINE, REFERENCE_ROUTINE))
        self.assertEqual(status, 0)
        self.assertEqual(verdict["score"], 1.0)
        self.assertIn("Nothing to change", verdict["feedback"])
        self.assertIn("signal: routine", verdict["feedback"])

    def test_every_dataset_reference_scores_one(self):
        path = SCRIPT.parent.parent / "datasets" / "support-reply" / "examples.jsonl"
        if not path.exists():
            self.skipTest("no dataset")
        for line in path.read_text(encoding="utf-8").splitlines():
            e = json.loads(line)
            score, feedback = rubric.grade({"inputs": e["inputs"], "outputs": e["outputs"],
                                            "prediction": e["outputs"], "field": "reply"})
            self.assertEqual(score, 1.0, (e["id"], feedback))
            self.assertEqual(rubric.read_signal(e["inputs"]["message"], e["inputs"]["history"])[0], e["meta"]["signal"])

    def test_a_pulled_example_is_scored_without_meta(self):
        # An example `promptloop pull` adds from production logs: no `meta` (the command metric never
        # passes it anyway), PII replaced by placeholders, the pull's own fields beside inputs and outputs.
        # The topic words come from the words the customer's messages share with the reference.
        pulled = {
            "id": "log-0123456789abcdef",
            "inputs": {"message": "my number is <PHONE_1> how long should i expect to wait when i add money",
                       "history": ["Is my top up not working?"]},
            "outputs": {"reply": "Here is how to handle your pending top-up. Top-ups usually complete within 1 hour; "
                                 "if it is still pending after that, tap the top-up in the app and choose Report a problem."},
            "signal": {"label": "routine", "evidence": ["1 earlier message in the conversation"]},
            "production": {"reply": "Thank you for your message. We will get back to you as soon as we can."},
            "source_ids": ["req-0123456789abcdef"],
        }
        self.assertEqual(rubric.topic_words(pulled["inputs"]["message"], pulled["inputs"]["history"],
                                            pulled["outputs"]["reply"]), ["top"])
        request = {"inputs": pulled["inputs"], "outputs": pulled["outputs"], "field": "reply"}
        _, verdict, _ = run({**request, "prediction": pulled["outputs"]})
        self.assertEqual(verdict["score"], 1.0, verdict["feedback"])
        self.assertIn("topic words: top.", verdict["feedback"])
        _, verdict, _ = run({**request, "prediction": pulled["production"]})
        self.assertLess(verdict["score"], 0.5)
        self.assertIn("mention top", verdict["feedback"])

    def test_every_logged_reference_scores_one(self):
        # The reference replies in logs/support-reply are written by the dataset's rules: each scores 1.0.
        logs = sorted((SCRIPT.parent.parent / "logs" / "support-reply").glob("*.jsonl.gz"))
        if not logs:
            self.skipTest("no logs")
        checked = 0
        for path in logs:
            for line in gzip.open(path).read().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # the deliberately broken lines
                if "reference" not in record or "inputs" not in record:
                    continue
                score, feedback = rubric.grade({"inputs": record["inputs"], "outputs": record["reference"],
                                                "prediction": record["reference"], "field": "reply"})
                self.assertEqual(score, 1.0, (path.name, record["id"], feedback))
                checked += 1
        self.assertGreater(checked, 100)

    def test_good_urgent_reply(self):
        reply = ("I understand this is urgent. In the app, go to Cards > Track delivery; if your card is late, "
                 "tap Report missing card and we will send a new one within 2 days.")
        _, verdict, _ = run(request(URGENT, reply))
        self.assertEqual(verdict["score"], 1.0, verdict["feedback"])

    def test_good_escalating_reply(self):
        reply = ("I'm sorry you've had to ask about your card more than once. In the app, go to Cards > Track delivery; "
                 "I've escalated your case and a specialist will reply within 24 hours.")
        _, verdict, _ = run(request(ESCALATING, reply))
        self.assertEqual(verdict["score"], 1.0, verdict["feedback"])
        self.assertIn("signal: escalating", verdict["feedback"])

    def test_apology_on_a_routine_message(self):
        reply = "Sorry about that! In the app, go to Cards > Track delivery to see where your card is."
        _, verdict, _ = run(request(ROUTINE, reply))
        self.assertLess(verdict["score"], 1.0)
        self.assertIn("apology: 1 on a routine message", verdict["feedback"])
        self.assertIn("drop the apology", verdict["feedback"])

    def test_escalating_without_acknowledgement(self):
        reply = "In the app, go to Cards > Track delivery to see where your card is."
        _, verdict, _ = run(request(ESCALATING, reply))
        self.assertLess(verdict["score"], 0.85)
        self.assertIn("acknowledge their frustration", verdict["feedback"])
        self.assertIn("name what went wrong", verdict["feedback"])

    def test_urgent_without_acknowledgement(self):
        reply = "In the app, go to Cards > Track delivery to see where your card is."
        _, verdict, _ = run(request(URGENT, reply))
        self.assertIn("acknowledgement: missing (urgent message)", verdict["feedback"])
        self.assertAlmostEqual(verdict["score"], 0.8)

    def test_bad_reply_off_topic_and_vague(self):
        reply = "We value you as a customer and hope you have a lovely day."
        _, verdict, _ = run(request(ROUTINE, reply))
        self.assertLess(verdict["score"], 0.5)
        self.assertIn("mention card", verdict["feedback"])
        self.assertIn("give one concrete next step", verdict["feedback"])

    def test_echo_of_the_message(self):
        _, verdict, _ = run(request(URGENT, URGENT["message"]))
        self.assertIn("only repeats the customer's words", verdict["feedback"])
        self.assertIn("do not repeat the customer's message", verdict["feedback"])
        self.assertLess(verdict["score"], 0.5)

    def test_empty_reply(self):
        for reply in ["", "   ", None]:
            _, verdict, _ = run(request(ROUTINE, reply))
            self.assertEqual(verdict["score"], 0.0)
            self.assertIn("is empty", verdict["feedback"])
        _, verdict, _ = run({"inputs": ROUTINE, "outputs": {"reply": REFERENCE_ROUTINE}, "prediction": {}, "field": "reply"})
        self.assertEqual(verdict["score"], 0.0)
        _, verdict, _ = run(request(ROUTINE, ["a", "list"]))
        self.assertEqual(verdict["score"], 0.0)
        self.assertIn("not text (list)", verdict["feedback"])

    def test_over_long_reply(self):
        reply = REFERENCE_ROUTINE + " " + " ".join(["Our cards are sent by tracked post to your address."] * 5)
        _, verdict, _ = run(request(ROUTINE, reply))
        words = len(reply.split())
        self.assertGreater(words, 60)
        self.assertIn(f"length: {words} words, over 60", verdict["feedback"])
        self.assertIn("cut the reply to at most 60 words", verdict["feedback"])
        self.assertLess(verdict["score"], 1.0)
        very_long = " ".join(["card"] * 200)
        _, verdict, _ = run(request(ROUTINE, very_long))
        self.assertLessEqual(verdict["score"], 0.5)
        self.assertIn("length: 200 words, over 60", verdict["feedback"])

    def test_malformed_input(self):
        for raw in ["not json", "[1, 2]", "{}", json.dumps({"inputs": {"history": []}}),
                    json.dumps({"inputs": {"message": 3}}), "\xff"]:
            status, verdict, stderr = run(None, raw=raw)
            self.assertEqual(status, 2, raw)
            self.assertIsNone(verdict, raw)
            self.assertIn("malformed request", stderr)
            self.assertNotIn("Traceback", stderr)

    def test_missing_reference_and_history(self):
        reply = "In the app, go to Cards > Track delivery to see where your card is."
        status, verdict, _ = run({"inputs": {"message": ROUTINE["message"]}, "prediction": {"reply": reply}})
        self.assertEqual(status, 0)
        self.assertGreater(verdict["score"], 0.5)

    def test_prediction_as_bare_string_and_deterministic(self):
        r = request(ROUTINE, REFERENCE_ROUTINE)
        r["prediction"] = REFERENCE_ROUTINE
        self.assertEqual(run(r)[1], run(r)[1])
        self.assertEqual(run(r)[1]["score"], 1.0)


if __name__ == "__main__":
    unittest.main()
