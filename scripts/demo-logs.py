#!/usr/bin/env python3
"""Turns Banking77 into "production logs" for the worked example.

Writes promptloop's native JSONL records (one `LogRecord` a line) with the texture
of real support traffic: timestamps over several weeks following office hours,
exact repeats and near-repeats (typos, case, punctuation, a word changed), PII in
some messages (emails, phones in several national formats, Luhn-valid card
numbers, IBANs with valid check digits, IPs, SSNs, a URL carrying a token, API
keys), urgent and escalating messages (escalations always have a history),
follow-ups carrying the customer's earlier messages, a production answer that is
usually right, a person's reference on about 60%, feedback on some, messages
already in datasets/support-triage/examples.jsonl now and then, and a handful of
broken lines a week (not JSON, no `inputs`, invalid UTF-8, one line over 1 MiB).

Banking77 (PolyAI, CC-BY-4.0): Casanueva et al., "Efficient Intent Detection with
Dual Sentence Encoders", NLP4ConvAI @ ACL 2020, arXiv:2003.04807. Intents map to
queues through scripts/build-worked-example.py.

Usage:
  scripts/demo-logs.py                       # logs/support-triage/2026-W44..W47.jsonl.gz
  scripts/demo-logs.py --records 1000000 --out /tmp/big.jsonl   # one uncompressed file
  scripts/demo-logs.py --first-week 2026-W48 --weeks 1 --out-dir DIR   # later weeks, one file each
Output is deterministic for a given --seed. Weeks after the worked example's four
(--first-week) are each generated on their own, from the seed and the week, from
Banking77 messages the earlier weeks did not use (as far as the corpus allows).
"""
import argparse
import csv
import datetime as dt
import gzip
import importlib.util
import json
from json.encoder import encode_basestring as quote
import random
import string
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Shares of the good records (the rest are fresh Banking77 messages).
DATASET_REPEAT = 0.03  # a message already in datasets/support-triage/examples.jsonl
EXACT_REPEAT = 0.05
NEAR_REPEAT = 0.07
# Independent textures.
FOLLOW_UP = 0.12  # a returning customer: history = their earlier messages
URGENT = 0.05
ESCALATING = 0.025
PII = 0.09
PRODUCTION_CORRECT = 0.86
REFERENCE = 0.60
FEEDBACK = 0.10
# Broken lines in --records mode, per good record (weekly files get a fixed handful).
BROKEN_RATE = 0.004

CONFUSED_WITH = {
    "cards": ["security", "payments", "account"],
    "payments": ["transfers", "top_ups", "cards"],
    "security": ["cards", "account"],
    "transfers": ["payments", "top_ups"],
    "top_ups": ["payments", "transfers"],
    "exchange": ["payments", "transfers"],
    "account": ["security", "cards"],
}
APP_VERSIONS = ["5.11.3", "5.12.0", "5.12.0", "5.12.1"]
CHANNELS = ["app"] * 55 + ["web"] * 25 + ["chat-widget"] * 15 + ["email"] * 5
LOCALES = ["en-GB"] * 50 + ["en-US"] * 20 + ["en-IE"] * 10 + ["de-DE"] * 8 + ["fr-FR"] * 6 + ["es-ES"] * 6
FIRST = ["jane", "john", "amelia", "oliver", "priya", "mohammed", "chloe", "lukas", "sofia", "wei", "fatima", "liam",
         "noah", "emma", "mateo", "aisha", "hannah", "tomasz", "giulia", "kwame"]
LAST = ["smith", "jones", "patel", "garcia", "muller", "nowak", "rossi", "okafor", "chen", "murphy", "dubois",
        "kowalski", "silva", "novak", "brown", "wilson", "khan", "schmidt", "lopez", "ahmed"]
MAIL_DOMAINS = ["gmail.com", "outlook.com", "yahoo.co.uk", "icloud.com", "proton.me", "web.de", "hotmail.fr"]
SWAPS = {
    "card": "debit card", "money": "funds", "app": "application", "account": "acount", "please": "pls",
    "transfer": "transfre", "payment": "transaction", "why": "how come", "received": "recieved", "I": "i",
    "my": "the", "help": "assist", "can": "could", "the": "teh", "top up": "top-up", "cash": "money",
}
FILLERS_BEFORE = ["hi, ", "Hello! ", "hey ", "Good morning. ", "Hi there, "]
FILLERS_AFTER = [" thanks", " Thank you.", " pls help", " ty", " Cheers"]
ESCALATIONS = [
    "This is the third time I've asked.",
    "I want to speak to a manager.",
    "If this isn't sorted today I'm taking legal action.",
    "Nobody has answered my last two messages!",
    "I have asked about this three times already and I am fed up.",
    "I'm closing my account and reporting you to the ombudsman.",
    "Let me speak to a manager NOW.",
]
URGENT_PREFIXES = ["URGENT: ", "HELP!! ", "Please help asap, ", "URGENT!!! ", ""]
URGENT_SUFFIXES = ["!!!", "?!", "!!", " ASAP!!", "?!?!", " Please hurry!"]
FEEDBACK_GOOD = [None, None, "thanks, sorted", "quick answer", "helpful"]
FEEDBACK_BAD = [None, "wrong team, had to be transferred", "not what I asked", "still waiting", "useless"]
STATEMENT_LINE = "2026-10-03 CARD PAYMENT TO TESCO STORES 3021 LONDON GBP 12.40 BAL 1,204.16\n"
LOG_NOISE = [
    "{date} {time},311 WARN  triage-worker upstream timeout after 30s, retrying (attempt 2/3)",
    "Traceback (most recent call last):",
    "}}",
]


def load_queue_of() -> dict:
    """The intent → queue table of scripts/build-worked-example.py, imported by path."""
    path = ROOT / "scripts" / "build-worked-example.py"
    spec = importlib.util.spec_from_file_location("build_worked_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {intent: queue for queue, intents in module.QUEUES.items() for intent in intents}


def load_messages(banking77: Path, queue_of: dict) -> list:
    rows = []
    for part in ("train", "test"):
        path = banking77 / f"{part}.csv"
        if not path.exists():
            sys.exit(f"error: {path} not found; pass --banking77 DIR holding Banking77's train.csv and test.csv")
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                intent = row["category"]
                if intent not in queue_of:
                    sys.exit(f"error: intent {intent!r} in {path} has no queue in scripts/build-worked-example.py")
                rows.append((row["text"].strip(), queue_of[intent]))
    return rows


def load_dataset_messages() -> list:
    path = ROOT / "datasets" / "support-triage" / "examples.jsonl"
    with open(path, encoding="utf-8") as f:
        return [(e["inputs"]["message"], e["outputs"]["queue"]) for e in map(json.loads, f)]


# ---------------------------------------------------------------- PII, generated here (no Faker)

def luhn_complete(digits: str) -> str:
    """Appends the Luhn check digit."""
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d)
        if i % 2 == 0:  # doubled: every second digit from the right, counting the check digit
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return digits + str((10 - total % 10) % 10)


IBAN_LAYOUT = {"GB": ("letters4", 14), "DE": (None, 18), "FR": (None, 23), "ES": (None, 20), "NL": ("letters4", 10),
               "IE": ("letters4", 14)}


def iban(rng: random.Random) -> str:
    country = rng.choice(list(IBAN_LAYOUT))
    letters, digits = IBAN_LAYOUT[country]
    bban = "".join(rng.choices(string.ascii_uppercase, k=4)) if letters else ""
    bban += "".join(rng.choices(string.digits, k=digits))
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    check = 98 - int(numeric) % 97
    raw = f"{country}{check:02d}{bban}"
    return " ".join(raw[i:i + 4] for i in range(0, len(raw), 4)) if rng.random() < 0.5 else raw


def card_number(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.5:
        number = luhn_complete("4" + "".join(rng.choices(string.digits, k=14)))
    elif kind < 0.85:
        number = luhn_complete("5" + rng.choice("12345") + "".join(rng.choices(string.digits, k=13)))
    else:
        number = luhn_complete(rng.choice(["34", "37"]) + "".join(rng.choices(string.digits, k=12)))
        return number if rng.random() < 0.5 else f"{number[:4]} {number[4:10]} {number[10:]}"
    sep = rng.choice(["", " ", " ", "-"])
    return sep.join(number[i:i + 4] for i in range(0, 16, 4))


def phone(rng: random.Random) -> str:
    d = lambda k: "".join(rng.choices(string.digits, k=k))  # noqa: E731
    return rng.choice([
        lambda: f"+44 7{d(3)} {d(6)}",
        lambda: f"07{d(3)} {d(6)}",
        lambda: f"({rng.randint(201, 989)}) {d(3)}-{d(4)}",
        lambda: f"+1 {rng.randint(201, 989)}-{d(3)}-{d(4)}",
        lambda: f"+49 30 {d(8)}",
        lambda: f"+33 6 {d(2)} {d(2)} {d(2)} {d(2)}",
        lambda: f"+353 8{rng.choice('35679')} {d(3)} {d(4)}",
        lambda: f"+4479{d(8)}",
    ])()


def email(rng: random.Random) -> str:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    local = rng.choice([f"{first}.{last}", f"{first}{last}{rng.randint(1, 99)}", f"{first[0]}.{last}", f"{first}_{last}"])
    return f"{local}@{rng.choice(MAIL_DOMAINS)}"


SSN_AREAS = [n for n in range(1, 900) if n != 666]  # 000, 666 and 9xx are never issued


def ssn(rng: random.Random) -> str:
    area = rng.choice(SSN_AREAS)
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def ip_address(rng: random.Random) -> str:
    if rng.random() < 0.8:
        return ".".join(str(rng.randint(1, 254)) for _ in range(4))
    return "2a02:" + ":".join(f"{rng.getrandbits(16):x}" for _ in range(7))


def token(rng: random.Random, k: int) -> str:
    return "".join(rng.choices(string.ascii_letters + string.digits, k=k))


PII_SENTENCES = [
    lambda r: f"My email is {email(r)}.",
    lambda r: f"You can reach me at {email(r)}",
    lambda r: f"Call me back on {phone(r)} please.",
    lambda r: f"my number is {phone(r)}",
    lambda r: f"The card number is {card_number(r)}.",
    lambda r: f"card {card_number(r)} exp 09/28",
    lambda r: f"My IBAN is {iban(r)}.",
    lambda r: f"the recipient's IBAN is {iban(r)}",
    lambda r: f"I was logged in from {ip_address(r)} when it happened.",
    lambda r: f"My SSN is {ssn(r)} if you need it.",
    lambda r: f"The link https://app.example-bank.com/reset-password?token={token(r, 32)} doesn't work.",
    lambda r: f"our integration uses the key sk-proj-{token(r, 40)} and every call fails",
    lambda r: f"API key: sk_live_{token(r, 24)}",
    lambda r: f"My name is {r.choice(FIRST).title()} {r.choice(LAST).title()}, {email(r)}, {phone(r)}.",
]


def with_pii(rng: random.Random, text: str) -> str:
    sentence = rng.choice(PII_SENTENCES)(rng)
    return f"{sentence} {text}" if rng.random() < 0.3 else f"{text} {sentence}"


# ---------------------------------------------------------------- texture

def near_repeat(rng: random.Random, text: str) -> str:
    kind = rng.randrange(5)
    words = text.split()
    if kind == 0 and words:  # a typo
        i = rng.randrange(len(words))
        w = words[i]
        if len(w) > 3:
            j = rng.randrange(len(w) - 1)
            words[i] = rng.choice([w[:j] + w[j + 1] + w[j] + w[j + 2:], w[:j] + w[j + 1:], w[:j] + w[j] + w[j:]])
            return " ".join(words)
    if kind == 1:  # case
        return rng.choice([text.lower(), text.upper(), text[:1].lower() + text[1:]])
    if kind == 2:  # punctuation
        stripped = text.rstrip("?.!")
        return rng.choice([stripped, stripped + "??", stripped + "...", text.replace(",", ""), stripped + " ?"])
    if kind == 3:  # a word changed
        for word in rng.sample(list(SWAPS), len(SWAPS)):
            if f" {word} " in f" {text} ":
                return f" {text} ".replace(f" {word} ", f" {SWAPS[word]} ", 1).strip()
    return rng.choice(FILLERS_BEFORE) + text[:1].lower() + text[1:] if rng.random() < 0.5 else text + rng.choice(
        FILLERS_AFTER)


def urgent(rng: random.Random, text: str) -> str:
    words = text.rstrip("?.!").split()
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(words))
        if len(words[i]) >= 4:
            words[i] = words[i].upper()
    body = " ".join(words)
    if rng.random() < 0.15:
        body = body.upper()
    return rng.choice(URGENT_PREFIXES) + body + rng.choice(URGENT_SUFFIXES)


def escalating(rng: random.Random, text: str) -> str:
    base = urgent(rng, text) if rng.random() < 0.6 else text
    return f"{base} {rng.choice(ESCALATIONS)}"


# ---------------------------------------------------------------- traffic

def hour_weights() -> list:
    """Relative traffic by (weekday, hour): office hours peak, quiet nights and weekends."""
    day = [1, 1, 1, 1, 1, 2, 4, 7, 10, 12, 12, 11, 10, 11, 11, 10, 9, 8, 7, 6, 5, 4, 2, 1]
    return [[h * (0.6 if weekday >= 5 else 1.0) for h in day] for weekday in range(7)]


class Traffic:
    """The state that makes records look like a stream: earlier messages and returning customers."""

    def __init__(self, rng, messages, by_queue, dataset):
        self.rng = rng
        random_float = rng.random
        # random.choice costs several calls a pick; a million records make ten million picks.
        self.pick = lambda seq: seq[int(random_float() * len(seq))]
        self.messages = messages
        self.by_queue = by_queue
        self.dataset = dataset
        self.recent = []  # ring of earlier (text, queue)
        self.customers = []  # ring of [customer id, earlier messages, queue]
        self.weights = hour_weights()
        self.flat_weights = [w for day in self.weights for w in day]

    def fresh(self):
        """A new message from the corpus."""
        return self.pick(self.messages)

    def remember(self, ring, item, size):
        """Keeps a bounded, uniformly refreshed sample of what came before."""
        if len(ring) < size:
            ring.append(item)
        else:
            ring[int(self.rng.random() * size)] = item

    def message(self):
        """(text, queue, history, customer) for one good record."""
        rng, pick = self.rng, self.pick
        roll = rng.random()
        if roll < DATASET_REPEAT:
            text, queue = pick(self.dataset)
        elif roll < DATASET_REPEAT + EXACT_REPEAT and self.recent:
            text, queue = pick(self.recent)
        elif roll < DATASET_REPEAT + EXACT_REPEAT + NEAR_REPEAT and self.recent:
            text, queue = pick(self.recent)
            text = near_repeat(rng, text)
        else:
            text, queue = self.fresh()
            self.remember(self.recent, (text, queue), 4000)

        history = []
        roll = rng.random()
        escalate = roll < ESCALATING
        if (escalate or roll < ESCALATING + FOLLOW_UP) and self.customers:
            customer = pick(self.customers)
            customer_id, earlier, queue = customer
            text = pick(self.by_queue[queue])  # the same issue, asked again in other words
            history = list(earlier)
            earlier.append(text)
            del earlier[:-3]
        else:
            customer_id = f"cus-{rng.getrandbits(32):08x}"
            customer = [customer_id, [text], queue]
            self.remember(self.customers, customer, 5000)
        if escalate:
            if not history:  # they wrote before the logs start
                history = rng.sample(self.by_queue[queue], rng.randint(1, 2))
            text = escalating(rng, text)
        elif rng.random() < URGENT:
            text = urgent(rng, text)
        if rng.random() < PII:
            text = with_pii(rng, text)
        return text, queue, history, customer_id

    def record(self, stamp: str) -> dict:
        rng, pick = self.rng, self.pick
        text, queue, history, customer = self.message()
        answer = queue if rng.random() < PRODUCTION_CORRECT else pick(CONFUSED_WITH[queue])
        channel = pick(CHANNELS)
        metadata = {"channel": channel}
        if channel == "app":
            metadata["app_version"] = pick(APP_VERSIONS)
        metadata["locale"] = pick(LOCALES)
        metadata["customer"] = customer
        metadata["latency_ms"] = 180 + int(rng.random() * rng.random() * 1400)
        record = {
            "id": f"req-{rng.getrandbits(64):016x}",
            "timestamp": stamp,
            "inputs": {"message": text},
            "output": {"queue": answer},
        }
        if rng.random() < REFERENCE:
            record["reference"] = {"queue": queue}
        if rng.random() < FEEDBACK:
            good = answer == queue
            feedback = {"score": 1.0 if good else 0.0}
            comment = pick(FEEDBACK_GOOD if good else FEEDBACK_BAD)
            if comment:
                feedback["comment"] = comment
            record["feedback"] = feedback
        if history:
            record["history"] = history
        record["metadata"] = metadata
        return record

    def stamps(self, day: dt.date, count: int) -> list:
        """`count` RFC 3339 times on `day`, sorted, following the hourly profile."""
        rng = self.rng
        hours = rng.choices(range(24), weights=self.weights[day.weekday()], k=count)
        prefix = day.isoformat() + "T"
        random_float = rng.random
        millis = sorted(h * 3_600_000 + int(random_float() * 3_600_000) for h in hours)
        return [f"{prefix}{m // 3_600_000:02d}:{m // 60_000 % 60:02d}:{m // 1000 % 60:02d}.{m % 1000:03d}Z" for m in millis]

    def broken(self, kind: str, stamp: str) -> bytes:
        rng = self.rng
        if kind == "truncated":  # a writer killed mid-line
            line = to_line(self.record(stamp))
            return line[: rng.randint(20, len(line) - 10)].encode("utf-8")
        if kind == "stray-text":  # another process's output in the same file
            return rng.choice(LOG_NOISE).format(date=stamp[:10], time=stamp[11:19]).encode("utf-8")
        if kind == "no-inputs":  # an older writer that logged `input` as a bare string
            record = self.record(stamp)
            record["input"] = record.pop("inputs")["message"]
            return json.dumps(record, ensure_ascii=False).encode("utf-8")
        if kind == "latin-1":  # a client that sent Windows-1252, copied through byte for byte
            record = self.record(stamp)
            record["inputs"]["message"] = "I paid 50€ at a café abroad and the fee looks wrong"
            return json.dumps(record, ensure_ascii=False).encode("cp1252")
        if kind == "huge":  # a customer pasting a whole statement: valid, but over 1 MiB
            record = self.record(stamp)
            record["inputs"]["message"] = "Here is my statement, please check it: " + STATEMENT_LINE * 14000
            return json.dumps(record, ensure_ascii=False).encode("utf-8")
        raise ValueError(kind)


def to_line(record: dict) -> str:
    """One record as a JSON line, written out by hand: json.dumps is most of the cost of a million."""
    out = [f'{{"id": "{record["id"]}", "timestamp": "{record["timestamp"]}", '
           f'"inputs": {{"message": {quote(record["inputs"]["message"])}}}, "output": {{"queue": "{record["output"]["queue"]}"}}']
    if "reference" in record:
        out.append(f', "reference": {{"queue": "{record["reference"]["queue"]}"}}')
    if "feedback" in record:
        out.append(f', "feedback": {json.dumps(record["feedback"])}')
    if "history" in record:
        out.append(f', "history": [{", ".join(map(quote, record["history"]))}]')
    m = record["metadata"]
    version = f', "app_version": "{m["app_version"]}"' if "app_version" in m else ""
    out.append(f', "metadata": {{"channel": "{m["channel"]}"{version}, "locale": "{m["locale"]}", '
               f'"customer": "{m["customer"]}", "latency_ms": {m["latency_ms"]}}}}}')
    return "".join(out)


WEEKLY_BROKEN = ["truncated", "truncated", "stray-text", "no-inputs", "no-inputs", "latin-1", "huge"]


def week_lines(traffic: Traffic, monday: dt.date, count: int) -> list:
    rng = traffic.rng
    per_day = [traffic.weights[d] for d in range(7)]
    day_counts = [0] * 7
    for d in rng.choices(range(7), weights=[sum(w) for w in per_day], k=count):
        day_counts[d] += 1
    lines, stamps = [], []
    for d in range(7):
        day = monday + dt.timedelta(days=d)
        for stamp in traffic.stamps(day, day_counts[d]):
            lines.append(to_line(traffic.record(stamp)).encode("utf-8"))
            stamps.append(stamp)
    for kind in WEEKLY_BROKEN:
        at = rng.randrange(len(stamps))
        lines.insert(at, traffic.broken(kind, stamps[at]))
    return lines


def write_week(traffic: Traffic, monday: dt.date, count: int, path: Path) -> dict:
    lines = week_lines(traffic, monday, count)
    # mtime=0 and no file name in the header: the same seed gives the same bytes.
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as f:
        for line in lines:
            f.write(line + b"\n")
    return {"records": count, "broken": len(WEEKLY_BROKEN), "bytes": path.stat().st_size}


def write_stream(traffic: Traffic, end: dt.date, weeks: int, total: int, path: Path) -> dict:
    """`total` lines over `weeks` weeks ending on `end`, written day by day."""
    rng = traffic.rng
    days = [end - dt.timedelta(days=n) for n in range(weeks * 7 - 1, -1, -1)]
    day_weight = [sum(traffic.weights[day.weekday()]) for day in days]
    day_counts = [0] * len(days)
    for i in rng.choices(range(len(days)), weights=day_weight, k=total):
        day_counts[i] += 1
    huge_at = rng.randrange(total)
    written = broken = 0
    record = traffic.record
    with open(path, "wb", buffering=1 << 20) as f:
        for day, count in zip(days, day_counts):
            chunk = []
            for stamp in traffic.stamps(day, count):
                if written == huge_at:
                    chunk.append(traffic.broken("huge", stamp))
                    broken += 1
                elif rng.random() < BROKEN_RATE:
                    chunk.append(traffic.broken(rng.choice(WEEKLY_BROKEN[:-1]), stamp))
                    broken += 1
                else:
                    chunk.append(to_line(record(stamp)).encode("utf-8"))
                written += 1
            chunk.append(b"")
            f.write(b"\n".join(chunk))
    return {"lines": written, "broken": broken, "bytes": path.stat().st_size}


def iso_monday(week: str, option: str = "--last-week") -> dt.date:
    try:
        year, number = week.split("-W")
        return dt.date.fromisocalendar(int(year), int(number), 1)
    except ValueError:
        sys.exit(f"error: {option} {week!r} is not an ISO week like 2026-W47")


# ---------------------------------------------------------------- weeks after the worked example's four

# The committed logs: weeks 2026-W44 .. 2026-W47, written by the default invocation.
HISTORY_LAST_WEEK = "2026-W47"
HISTORY_WEEKS = 4


class RecordingTraffic(Traffic):
    """Traffic that remembers which corpus messages it drew as new ones (same draws as Traffic)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.drawn = set()

    def fresh(self):
        message = super().fresh()
        self.drawn.add(message)
        return message


class WeekTraffic(Traffic):
    """One later week's traffic: its new messages come first from its own share of the
    messages no earlier week used (each once), then from the whole corpus as before."""

    def __init__(self, rng, messages, by_queue, dataset, share):
        super().__init__(rng, messages, by_queue, dataset)
        self.share = share
        self.next_new = 0

    def fresh(self):
        if self.next_new < len(self.share):
            self.next_new += 1
            return self.share[self.next_new - 1]
        return self.pick(self.messages)


def unused_shares(seed: int, per_week: int, messages: list, by_queue: dict, dataset: list, shares: int) -> list:
    """The corpus messages neither in the dataset nor drawn by the worked example's four
    weeks (replayed in memory with this seed and --per-week), shuffled and dealt into
    `shares` equal parts, one per later week."""
    history = RecordingTraffic(random.Random(seed), messages, by_queue, dataset)
    last_monday = iso_monday(HISTORY_LAST_WEEK)
    for n in range(HISTORY_WEEKS):
        week_lines(history, last_monday - dt.timedelta(weeks=HISTORY_WEEKS - 1 - n), int(per_week * (1 + 0.03 * n)))
    in_dataset = {text for text, _ in dataset}
    unused = sorted({m for m in messages if m[0] not in in_dataset} - history.drawn)
    random.Random(f"{seed}:unused").shuffle(unused)
    size = -(-len(unused) // shares)
    return [unused[i * size:(i + 1) * size] for i in range(shares)]


def write_later_weeks(args, messages: list, by_queue: dict, dataset: list) -> None:
    first_monday = iso_monday(args.first_week, "--first-week")
    history_end = iso_monday(HISTORY_LAST_WEEK)
    if first_monday <= history_end:
        sys.exit(f"error: --first-week {args.first_week} must come after {HISTORY_LAST_WEEK}, the last of the "
                 f"worked example's weeks (write those with --last-week)")
    if args.fresh_weeks < 1:
        sys.exit("error: --fresh-weeks must be at least 1")
    shares = unused_shares(args.seed, args.per_week, messages, by_queue, dataset, args.fresh_weeks)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for n in range(args.weeks):
        monday = first_monday + dt.timedelta(weeks=n)
        year, week, _ = monday.isocalendar()
        name = f"{year}-W{week:02d}"
        after = (monday - history_end).days // 7  # 1 for the first week after the worked example's
        since_first = after + HISTORY_WEEKS - 1  # weeks since 2026-W44: traffic keeps growing
        # Each week on its own: the same seed and week give the same bytes, whatever else is written.
        traffic = WeekTraffic(random.Random(f"{args.seed}:{name}"), messages, by_queue, dataset,
                              shares[(after - 1) % len(shares)])
        path = args.out_dir / f"{name}.jsonl.gz"
        count = int(args.per_week * (1 + 0.03 * since_first))
        stats = write_week(traffic, monday, count, path)
        reused = " (the unused messages are spent: this week's share comes round again)" \
            if after > len(shares) else ""
        print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {stats['records']} records, "
              f"{stats['broken']} broken lines, {stats['bytes']} bytes, {traffic.next_new} messages no earlier "
              f"week used{reused}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--banking77", type=Path, default=ROOT / "data" / "banking77",
                        help="directory holding Banking77's train.csv and test.csv [default: data/banking77]")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--last-week", default="2026-W47", help="ISO week of the last weekly file [default: 2026-W47]")
    parser.add_argument("--first-week", help="write --weeks weeks from this ISO week on, after 2026-W47 (e.g. 2026-W48), "
                        "each from the seed and its week alone, instead of the worked example's weeks up to --last-week")
    parser.add_argument("--fresh-weeks", type=int, default=8,
                        help="with --first-week: how many weeks after 2026-W47 share out the Banking77 messages "
                             "the worked example's weeks did not use (then the shares come round again) [default: 8]")
    parser.add_argument("--weeks", type=int, default=4)
    parser.add_argument("--per-week", type=int, default=1500, help="good records in the first week [default: 1500]")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "logs" / "support-triage")
    parser.add_argument("--records", type=int, help="write one uncompressed file of this many lines instead")
    parser.add_argument("--out", type=Path, help="the file --records writes")
    args = parser.parse_args()

    queue_of = load_queue_of()
    messages = load_messages(args.banking77, queue_of)
    by_queue = {}
    for text, queue in messages:
        by_queue.setdefault(queue, []).append(text)
    if args.first_week is not None:
        if args.records is not None:
            sys.exit("error: --first-week writes weekly files; it does not go with --records")
        write_later_weeks(args, messages, by_queue, load_dataset_messages())
        return
    traffic = Traffic(random.Random(args.seed), messages, by_queue, load_dataset_messages())
    last_monday = iso_monday(args.last_week)

    if args.records is not None:
        if args.out is None:
            sys.exit("error: --records needs --out FILE")
        end = last_monday + dt.timedelta(days=6)
        stats = write_stream(traffic, end, args.weeks, args.records, args.out)
        print(f"wrote {stats['lines']} lines ({stats['broken']} broken) to {args.out}: {stats['bytes']} bytes")
        return

    args.out_dir.mkdir(parents=True, exist_ok=True)
    for n in range(args.weeks):
        monday = last_monday - dt.timedelta(weeks=args.weeks - 1 - n)
        year, week, _ = monday.isocalendar()
        path = args.out_dir / f"{year}-W{week:02d}.jsonl.gz"
        count = int(args.per_week * (1 + 0.03 * n))  # traffic grows a little week by week
        stats = write_week(traffic, monday, count, path)
        print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {stats['records']} records, "
              f"{stats['broken']} broken lines, {stats['bytes']} bytes")


if __name__ == "__main__":
    main()
