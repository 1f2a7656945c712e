#!/usr/bin/env python3
"""Writes the support-reply example's weekly production logs: logs/support-reply/2026-W44..W47.jsonl.gz.

Each line is one promptloop native log record (src/logs/record.rs): the
program's inputs (`inputs.message` and `inputs.history`, the conversation's
earlier messages, which a pulled example keeps), the same earlier messages as
the record's `history` (which the pull's signal detector reads), the reply
production sent (`output.reply`), a person's reference
reply on some records (`reference.reply`), the customer's thumbs up or down on
a few (`feedback`), and the request's metadata.

The messages are Banking77 messages (PolyAI, CC-BY-4.0: Casanueva et al.,
"Efficient Intent Detection with Dual Sentence Encoders", NLP4ConvAI @ ACL 2020,
arXiv:2003.04807) that datasets/support-reply/examples.jsonl does not use,
chosen and rewritten in tone by the rules of scripts/build-support-reply.py
(imported): routine as written, urgent with urgency cues, escalating with an
escalation phrase or urgency in a conversation that keeps coming back. Every
fresh record's tone is checked with the detector port of
scripts/reply-rubric.py and drawn again until it reads as intended. A
reference reply is written by the dataset builder's own `reply` (the topic of
the intent, a concrete next step, the frame of the tone the detector reads) and
scores 1.0 on the rubric; production's reply is drawn from the ways the program
answers, good and poor (see logs/support-reply/README.md). Texture from
scripts/demo-logs.py (imported): office-hours timestamps, synthetic PII in some
messages, near-repeats; plus exact repeats, repeats of dataset examples and a
few broken lines a week.

Usage: scripts/reply-logs.py [--seed 2026] [--last-week 2026-W47] [--weeks 4] [--per-week 150]
Standard library only; the same arguments write the same bytes.
"""
import argparse
import collections
import csv
import datetime as dt
import gzip
import importlib.util
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BANKING77 = ROOT / "data" / "banking77"
DATASET = ROOT / "datasets" / "support-reply" / "examples.jsonl"
OUT = ROOT / "logs" / "support-reply"
ARTIFACT = ROOT / "artifacts" / "support-reply" / "program.json"

# Shares of the good records (the rest are fresh Banking77 messages).
DATASET_REPEAT = 0.02  # the inputs of an example already in datasets/support-reply/examples.jsonl
EXACT_REPEAT = 0.05  # the inputs of an earlier record again (a client's retry, a customer sending twice)
NEAR_REPEAT = 0.04  # an earlier record's message with a typo, a case or punctuation change
# Tones of fresh messages.
TONES = {"routine": 0.70, "urgent": 0.18, "escalating": 0.12}
PII = 0.08
REFERENCE = 0.40
FEEDBACK = 0.12
# How production answers, by weight; `routine_frame` only where the message is not routine,
# `apology` only where it is.
PRODUCTION = {"good": 30, "routine_frame": 10, "apology": 6, "vague": 8, "wrong_topic": 6, "demo_copy": 14,
              "generic": 8, "too_long": 8, "cut": 8, "echo": 2}
WEEKLY_BROKEN = ["truncated", "stray-text", "no-inputs", "latin-1"]
CHANNELS = ["app"] * 60 + ["web"] * 25 + ["chat-widget"] * 15
LOCALES = ["en-GB"] * 55 + ["en-US"] * 25 + ["en-IE"] * 12 + ["en-AU"] * 8
LOG_NOISE = [
    "{date} {time},118 WARN  reply-worker model call took 31.2s, over the 30s budget",
    "{date} {time},502 INFO  reply-worker draining queue (0 pending)",
]
VAGUE = [
    "Thanks for your message about {topic}. Our team will look into it and get back to you.",
    "We have received your question about {topic}. A member of our team will be in touch.",
    "Thank you for contacting us about {topic}. We are looking into this for you.",
]
LONG_TAIL = [
    "If you have any other questions, our support team is always happy to help you with anything related to your account, "
    "your cards or your payments, at any time of the day or night.",
    "We value you as a customer and we want to make sure that every part of your experience with our bank is as smooth and "
    "simple as it can possibly be.",
]
GENERIC = [
    "I understand. Please contact our support team for more information.",
    "Thank you for your message. We will get back to you as soon as we can.",
    "I'm sorry to hear that. Please let us know if there is anything else we can do.",
    "Thanks for reaching out! Is there anything else I can help you with today?",
]
FEEDBACK_GOOD = [None, "thanks, that worked", "quick and clear", "helpful"]
FEEDBACK_BAD = [None, "didn't answer my question", "not helpful", "I still don't know what to do", "too long"]


def load(name, file):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = load("build_support_reply", "build-support-reply.py")
demo = load("demo_logs", "demo-logs.py")
rubric = load("reply_rubric", "reply-rubric.py")


def corpus(dataset):
    """(source id, text, intent) of the Banking77 messages the dataset builder would take
    (one copy of each text, plain ASCII, 4-40 words, routine as written), minus every text
    the dataset uses as a message or in a history."""
    used_ids = {e["meta"]["source_id"] for e in dataset}
    used_texts = set()
    for e in dataset:
        for text in [e["inputs"]["message"], *e["inputs"]["history"]]:
            used_texts.add(" ".join(text.split()).lower())
    rows, seen, index = [], set(), 0
    for part in ("train", "test"):
        with open(BANKING77 / f"{part}.csv", newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                index += 1
                text = " ".join(row["text"].split())
                if text.lower() in seen:
                    continue
                seen.add(text.lower())
                if not text.isascii() or not 4 <= len(text.split()) <= 40:
                    continue
                if rubric.read_signal(text, [])[0] != "routine":
                    continue
                source_id = f"b77-{index:05d}"
                if source_id in used_ids or text.lower() in used_texts:
                    continue
                rows.append((source_id, text, row["category"]))
    return rows


class Traffic:
    def __init__(self, rng, rows, dataset, queue_of):
        self.rng = rng
        self.rows = list(rows)
        rng.shuffle(self.rows)
        self.next_row = 0
        self.by_intent = collections.defaultdict(list)
        for _, text, intent in rows:
            self.by_intent[intent].append(text)
        self.dataset = dataset
        self.queue_of = queue_of
        self.earlier = []  # every good record so far: (inputs, intent, customer)
        self.tally = collections.Counter()
        self.scores = collections.defaultdict(list)  # production's rubric score by how it answered
        artifact = json.loads(ARTIFACT.read_text(encoding="utf-8"))
        self.demo_replies = {signal: [d["outputs"]["reply"] for d in artifact["predictors"][f"handlers.{signal}"]["demos"]]
                             for signal in TONES}

    def fresh(self):
        """A new message in a drawn tone: (message, history, intent, how)."""
        rng = self.rng
        if self.next_row >= len(self.rows):
            sys.exit("error: the corpus ran out of unused messages; write fewer records")
        source_id, text, intent = self.rows[self.next_row]
        self.next_row += 1
        tone = rng.choices(list(TONES), weights=list(TONES.values()))[0]
        others = [t for t in self.by_intent[intent] if t != text]
        for _ in range(20):
            if tone == "routine":
                k = rng.choices([0, 1, 2], weights=[7, 2, 1])[0]
                message, history, how = text, rng.sample(others, min(k, len(others))), "as written"
            elif tone == "urgent":
                message = build.urgent_rewrite(rng, text)
                history = rng.sample(others, 1) if rng.random() < 0.2 and others else []
                how = "urgency cues"
            else:
                message, history, how = build.escalating_rewrite(rng, text)
            if rng.random() < PII:
                message = demo.with_pii(rng, message)
                how += ", PII"
            if rubric.read_signal(message, history)[0] == tone:
                return message, history, intent, how
        sys.exit(f"error: could not make {source_id} read as {tone}")

    def good(self):
        """(inputs, intent, customer, how, dataset reference or None) of one good record."""
        rng = self.rng
        roll = rng.random()
        if roll < DATASET_REPEAT:
            e = self.dataset[rng.randrange(len(self.dataset))]
            inputs = {"message": e["inputs"]["message"], "history": list(e["inputs"]["history"])}
            return inputs, e["meta"]["intent"], f"cus-{rng.getrandbits(32):08x}", "dataset repeat", e["outputs"]["reply"]
        if roll < DATASET_REPEAT + EXACT_REPEAT and self.earlier:
            inputs, intent, customer = self.earlier[rng.randrange(len(self.earlier))]
            return dict(inputs), intent, customer, "exact repeat", None
        if roll < DATASET_REPEAT + EXACT_REPEAT + NEAR_REPEAT and self.earlier:
            inputs, intent, customer = self.earlier[rng.randrange(len(self.earlier))]
            inputs = {"message": demo.near_repeat(rng, inputs["message"]), "history": list(inputs["history"])}
            self.earlier.append((inputs, intent, customer))
            return inputs, intent, customer, "near repeat", None
        message, history, intent, how = self.fresh()
        inputs = {"message": message, "history": history}
        customer = f"cus-{rng.getrandbits(32):08x}"
        self.earlier.append((inputs, intent, customer))
        return inputs, intent, customer, how, None

    def production(self, signal, intent, queue, message):
        """What production replied, and how."""
        rng = self.rng
        kinds = [k for k in PRODUCTION if not (k == "routine_frame" and signal == "routine")
                 and not (k == "apology" and signal != "routine")]
        kind = rng.choices(kinds, weights=[PRODUCTION[k] for k in kinds])[0]
        topic, step = build.INTENTS[intent]
        if kind == "good":
            return build.reply(rng, signal, intent, queue), kind
        if kind == "routine_frame":
            return build.reply(rng, "routine", intent, queue), kind
        if kind == "apology":
            return f"Sorry for the trouble with {topic}. " + step, kind
        if kind == "vague":
            return rng.choice(VAGUE).format(topic=topic), kind
        if kind == "wrong_topic":
            neighbours = sorted(i for i in build.INTENTS if self.queue_of[i] == queue and i != intent)
            return build.reply(rng, signal, rng.choice(neighbours), queue), kind
        if kind == "demo_copy":  # the reply of one of the handler's few-shot demos, whatever was asked
            return rng.choice(self.demo_replies[signal]), kind
        if kind == "generic":
            return rng.choice(GENERIC), kind
        if kind == "echo":
            return message, kind
        if kind == "too_long":
            return build.reply(rng, signal, intent, queue) + " " + " ".join(LONG_TAIL), kind
        words = build.reply(rng, signal, intent, queue).split()  # cut: the token budget ran out
        return " ".join(words[: max(6, int(len(words) * rng.uniform(0.4, 0.75)))]), kind

    def record(self, stamp):
        rng = self.rng
        inputs, intent, customer, how, dataset_reference = self.good()
        queue = self.queue_of[intent]
        signal, _ = rubric.read_signal(inputs["message"], inputs["history"])
        reply, kind = self.production(signal, intent, queue, inputs["message"])
        rules_reference = dataset_reference or build.reply(random.Random(reply), signal, intent, queue)
        score, _ = rubric.grade({"inputs": inputs, "outputs": {"reply": rules_reference}, "prediction": {"reply": reply},
                                 "field": "reply"})
        self.scores[kind].append(score)
        record = {"id": f"req-{rng.getrandbits(64):016x}", "timestamp": stamp,
                  "inputs": {"message": inputs["message"], "history": inputs["history"]}, "output": {"reply": reply}}
        if rng.random() < REFERENCE:
            reference = dataset_reference or build.reply(rng, signal, intent, queue)
            score, feedback = rubric.grade({"inputs": inputs, "outputs": {"reply": reference},
                                            "prediction": {"reply": reference}, "field": "reply"})
            assert score == 1.0, (inputs, reference, feedback)
            record["reference"] = {"reply": reference}
            self.tally["with reference"] += 1
        if rng.random() < FEEDBACK:
            score, _ = rubric.grade({"inputs": inputs, "outputs": {"reply": ""}, "prediction": {"reply": reply},
                                     "field": "reply"})
            good = score >= 0.8
            feedback = {"score": 1.0 if good else 0.0}
            comment = rng.choice(FEEDBACK_GOOD if good else FEEDBACK_BAD)
            if comment:
                feedback["comment"] = comment
            record["feedback"] = feedback
        if inputs["history"]:  # what the pull's signal detector reads; `inputs.history` is what the program read
            record["history"] = inputs["history"]
        channel = rng.choice(CHANNELS)
        record["metadata"] = {"channel": channel, "locale": rng.choice(LOCALES), "customer": customer,
                              "route": signal, "latency_ms": 900 + int(rng.random() * rng.random() * 4000)}
        self.tally[f"signal {signal}"] += 1
        self.tally[f"production {kind}"] += 1
        self.tally[how.split(",")[0] if how in ("dataset repeat", "exact repeat", "near repeat") else "fresh"] += 1
        self.tally["with PII"] += ", PII" in how
        self.tally["with history"] += bool(inputs["history"])
        return record

    def broken(self, kind, stamp):
        """One broken line; its record, if any, is not counted in the tally (the pull never reads it)."""
        tally = collections.Counter(self.tally)
        try:
            return self._broken(kind, stamp)
        finally:
            self.tally = tally

    def _broken(self, kind, stamp):
        rng = self.rng
        if kind == "truncated":  # a writer killed mid-line
            line = json.dumps(self.record(stamp), ensure_ascii=False)
            return line[: rng.randint(20, len(line) - 10)].encode("utf-8")
        if kind == "stray-text":  # another process's output in the same file
            return rng.choice(LOG_NOISE).format(date=stamp[:10], time=stamp[11:19]).encode("utf-8")
        if kind == "no-inputs":  # an older writer that logged `input` as a bare string
            record = self.record(stamp)
            record["input"] = record.pop("inputs")["message"]
            return json.dumps(record, ensure_ascii=False).encode("utf-8")
        if kind == "latin-1":  # a client that sent Windows-1252, copied through byte for byte
            record = self.record(stamp)
            record["inputs"]["message"] = "I paid 40€ at a café in Lisbon and the fee looks wrong"
            return json.dumps(record, ensure_ascii=False).encode("cp1252")
        raise ValueError(kind)


def stamps(rng, weights, day, count):
    hours = rng.choices(range(24), weights=weights[day.weekday()], k=count)
    millis = sorted(h * 3_600_000 + rng.randrange(3_600_000) for h in hours)
    return [f"{day.isoformat()}T{m // 3_600_000:02d}:{m // 60_000 % 60:02d}:{m // 1000 % 60:02d}.{m % 1000:03d}Z"
            for m in millis]


def write_week(traffic, monday, count, path):
    rng = traffic.rng
    weights = demo.hour_weights()
    day_counts = collections.Counter(rng.choices(range(7), weights=[sum(w) for w in weights], k=count))
    lines, all_stamps = [], []
    for d in range(7):
        for stamp in stamps(rng, weights, monday + dt.timedelta(days=d), day_counts[d]):
            lines.append(json.dumps(traffic.record(stamp), ensure_ascii=False).encode("utf-8"))
            all_stamps.append(stamp)
    for kind in WEEKLY_BROKEN:
        at = rng.randrange(len(all_stamps))
        lines.insert(at, traffic.broken(kind, all_stamps[at]))
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as f:
        for line in lines:
            f.write(line + b"\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--last-week", default="2026-W47")
    parser.add_argument("--weeks", type=int, default=4)
    parser.add_argument("--per-week", type=int, default=150, help="good records in the first week [default: 150]")
    parser.add_argument("--out-dir", type=Path, default=OUT)
    args = parser.parse_args()

    dataset = [json.loads(line) for line in open(DATASET, encoding="utf-8")]
    queues = load("build_worked_example", "build-worked-example.py").QUEUES
    queue_of = {intent: q for q, intents in queues.items() for intent in intents}
    traffic = Traffic(random.Random(f"support-reply:{args.seed}"), corpus(dataset), dataset, queue_of)
    last_monday = demo.iso_monday(args.last_week)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for n in range(args.weeks):
        monday = last_monday - dt.timedelta(weeks=args.weeks - 1 - n)
        year, week, _ = monday.isocalendar()
        path = args.out_dir / f"{year}-W{week:02d}.jsonl.gz"
        count = int(args.per_week * (1 + 0.04 * n))  # traffic grows a little week by week
        write_week(traffic, monday, count, path)
        print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {count} records, "
              f"{len(WEEKLY_BROKEN)} broken lines, {path.stat().st_size} bytes")
    for key in sorted(traffic.tally):
        print(f"  {key}: {traffic.tally[key]}")
    everything = [score for scores in traffic.scores.values() for score in scores]
    print(f"  production's rubric score against a reference by the same rules: mean {sum(everything) / len(everything):.3f} "
          "(" + ", ".join(f"{k} {sum(v) / len(v):.2f}" for k, v in sorted(traffic.scores.items())) + ")")


if __name__ == "__main__":
    main()
