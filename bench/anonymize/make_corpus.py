"""Labeled PII corpus: Faker values (7 locales) in customer-support sentences.

Each line: {"id", "text", "spans": [{"start", "end", "type"}], "kind": "pii" | "negative"}.
Offsets are Python string indices (code points). Banking77 messages (CC-BY-4.0)
give the sentences their texture; the PII is synthetic.

    python make_corpus.py --banking77 data/banking77/train.csv --out corpus.jsonl
"""

import argparse
import base64
import csv
import json
import random
import string

from faker import Faker

SEED = 20240501
LOCALES = ["en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL"]
COUNTRY_CODES = {"en_US": "1", "en_GB": "44", "de_DE": "49", "fr_FR": "33", "es_ES": "34", "it_IT": "39", "nl_NL": "31"}


class Sentence:
    """Text built piece by piece, remembering where each PII value went."""

    def __init__(self):
        self.text = ""
        self.spans = []

    def add(self, piece):
        self.text += piece
        return self

    def pii(self, value, kind):
        start = len(self.text)
        self.text += value
        self.spans.append({"start": start, "end": len(self.text), "type": kind})
        return self


def rand_chars(rng, n, alphabet=string.ascii_letters + string.digits):
    return "".join(rng.choice(alphabet) for _ in range(n))


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def luhn_digit(body):
    total = 0
    for i, d in enumerate(reversed(body)):
        d = int(d)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def group(number, size=4, sep=" "):
    return sep.join(number[i : i + size] for i in range(0, len(number), size))


# ---- positives: (template prefix, value kind) ----

PHONE_LEADS = [
    "You can reach me on {}",
    "My number is {}",
    "Please call me back at {}",
    "New phone: {}",
    "Text me at {} when it's sorted",
    "I changed my mobile to {} last week",
    "Contact details: {}",
    "The caller used {}",
    "{} is the number on my account",
    "update my details, it's {} now",
]
EMAIL_LEADS = [
    "My email is {}",
    "Please send the statement to {}",
    "I no longer use {}",
    "Reply to {} please",
    "The confirmation went to {} instead of my usual address",
    "{} is the address on file",
]
CARD_LEADS = [
    "My card number is {}",
    "The card {} was declined",
    "Please block {} immediately",
    "I was charged twice on {}",
    "Card: {}",
    "{} got swallowed by the ATM",
]
IBAN_LEADS = [
    "Please refund to {}",
    "My IBAN is {}",
    "I sent the money to {} but it bounced",
    "Beneficiary account: {}",
    "Transfer from {} never arrived",
]
IP_LEADS = [
    "There was a login from {} that wasn't me",
    "The app says my IP {} is blocked",
    "Someone at {} tried to reset my password",
    "Logged in from {} yesterday",
]
SSN_LEADS = [
    "My SSN is {}",
    "social security number {}",
    "For the tax form: {}",
    "They asked for {} to verify me",
]
URL_LEADS = [
    "This link doesn't work: {}",
    "The reset link {} expired",
    "Your page sent me to {}",
    "I got a weird email with {} in it",
]
SECRET_LEADS = [
    "Our integration uses {} and now gets 401",
    "The webhook fails with key {}",
    "Is {} still valid?",
    "Logs show {} in the header",
]


def phone_value(fake, locale, rng):
    if rng.random() < 0.7:
        return fake.phone_number()
    if rng.random() < 0.5:
        # International form of a national number: +CC and the number without its trunk 0.
        digits = "".join(c for c in fake.phone_number().split("x")[0] if c.isdigit())
        if digits.startswith(COUNTRY_CODES[locale]) and len(digits) > 10:
            digits = digits[len(COUNTRY_CODES[locale]) :]
        digits = digits.lstrip("0")
        return f"+{COUNTRY_CODES[locale]} {digits[:3]} {digits[3:6]} {digits[6:]}".strip()
    return "+" + fake.msisdn()


def card_value(fake, rng):
    number = fake.credit_card_number()
    if len(number) == 16 and rng.random() < 0.5:
        return group(number, 4, rng.choice([" ", "-"]))
    return number


def iban_value(fake, rng):
    iban = fake.iban()
    return group(iban) if rng.random() < 0.5 else iban


def ip_value(fake, rng):
    r = rng.random()
    if r < 0.45:
        return fake.ipv4_public()
    if r < 0.6:
        return fake.ipv4_private()
    return fake.ipv6()


def url_value(fake, rng):
    host = fake.domain_name()
    path = "/" + fake.uri_path()
    r = rng.random()
    if r < 0.3:
        return f"https://{fake.user_name()}:{fake.password(special_chars=False)}@{host}{path}"
    if r < 0.4:
        return f"postgres://{fake.user_name()}:{fake.password(special_chars=False)}@db.{host}:5432/{fake.word()}"
    param = rng.choice(["token", "access_token", "api_key", "key", "secret", "sig", "signature", "auth", "code"])
    value = fake.sha1()[: rng.randint(16, 40)] if rng.random() < 0.5 else rand_chars(rng, 24)
    extra = f"&lang={fake.language_code()}" if rng.random() < 0.5 else ""
    return f"https://{host}{path}?{param}={value}{extra}"


def jwt(fake, rng):
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps({"sub": fake.uuid4(), "name": fake.name(), "iat": rng.randint(1.6e9, 1.8e9)}).encode())
    return f"{header}.{payload}.{b64url(rng.randbytes(32))}"


def secret_value(fake, rng):
    """(text, (start, end) of the secret inside it)."""
    upper = string.ascii_uppercase + string.digits
    kind = rng.randrange(11)
    if kind == 0:
        token = rng.choice(["AKIA", "ASIA"]) + rand_chars(rng, 16, upper)
    elif kind == 1:
        token = rng.choice(["ghp_", "gho_", "ghs_"]) + rand_chars(rng, 36)
    elif kind == 2:
        token = "github_pat_" + rand_chars(rng, 22) + "_" + rand_chars(rng, 59)
    elif kind == 3:
        token = f"xox{rng.choice('baprs')}-{rng.randint(10**11, 10**12)}-{rng.randint(10**12, 10**13)}-{rand_chars(rng, 24)}"
    elif kind == 4:
        token = rng.choice(["sk-", "sk-proj-"]) + rand_chars(rng, 48, string.ascii_letters + string.digits + "_-")
    elif kind == 5:
        token = rng.choice(["sk_live_", "rk_live_", "pk_live_"]) + rand_chars(rng, 24)
    elif kind == 6:
        token = "AIza" + rand_chars(rng, 35, string.ascii_letters + string.digits + "_-")
    elif kind == 7:
        token = "glpat-" + rand_chars(rng, 20, string.ascii_letters + string.digits + "_-")
    elif kind == 8:
        token = jwt(fake, rng)
    elif kind == 9:
        token = fake.sha256()[: rng.randint(24, 48)]
        text = f"Authorization: Bearer {token}"
        return text, (len(text) - len(token), len(text))
    else:
        name = rng.choice(["api_key", "apiKey", "client_secret", "secret", "password", "access_token"])
        token = fake.password(length=rng.randint(10, 24), special_chars=False)
        text = f"{name}={token}" if rng.random() < 0.5 else f'{name}: "{token}"'
        start = text.index(token, len(name))
        return text, (start, start + len(token))
    return token, (0, len(token))


# ---- negatives: look-alikes that are not PII ----


def luhn_invalid_card(rng):
    body = str(rng.choice([4, 5])) + "".join(rng.choice(string.digits) for _ in range(14))
    bad = str((int(luhn_digit(body)) + rng.randint(1, 9)) % 10)
    number = body + bad
    return group(number, 4, rng.choice([" ", "-", ""])) if rng.random() < 0.6 else number


def negative(fake, rng):
    r = rng.randrange(12)
    date = fake.date_between(start_date="-3y", end_date="today")
    if r == 0:
        return f"My card {luhn_invalid_card(rng)} isn't the one I ordered"
    if r == 1:
        fmt = rng.choice(["%Y-%m-%d", "%d.%m.%Y", "%d/%m/%Y", "%m/%d/%Y"])
        return f"The payment on {date.strftime(fmt)} at {fake.time()} is missing"
    if r == 2:
        amount = rng.uniform(1, 250000)
        return rng.choice([f"I was charged £{amount:,.2f} instead of £{amount / 10:,.2f}", f"Why is {amount:,.2f} EUR pending?"])
    if r == 3:
        return rng.choice([f"Order #{rng.randint(100000, 999999)} never arrived", f"Order number {rng.randint(10**7, 10**9)} is wrong"])
    if r == 4:
        return f"I'm on app version {rng.randint(1, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 99)} and it crashes"
    if r == 5:
        return f"Transaction reference {rng.randint(10**9, 10**12)} shows twice"
    if r == 6:
        iban = fake.iban()
        broken = iban[:2] + f"{(int(iban[2:4]) + rng.randint(1, 50)) % 97 + 2:02d}" + iban[4:]
        return f"Is {broken} a real account? the transfer failed"
    if r == 7:
        area = rng.choice(["000", "666", str(rng.randint(900, 999))])
        return f"The form shows {area}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)} which isn't my SSN"
    if r == 8:
        return f"My card ending {rng.randint(1000, 9999)} was charged {rng.randint(2, 5)} times"
    if r == 9:
        return f"Visit {fake.url()} for the fees, it says {rng.randint(2, 9)}.{rng.randint(0, 9)}%"
    if r == 10:
        return f"Between {rng.randint(2015, 2019)}-{rng.randint(2020, 2024)} I had no problems, then {date.year}"
    return f"Server {rng.randint(256, 999)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(0, 255)} rejected my top-up"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--banking77", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--n", type=int, default=3500)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    Faker.seed(args.seed)
    fakers = {locale: Faker(locale) for locale in LOCALES}
    with open(args.banking77, newline="") as f:
        messages = [row["text"].strip() for row in csv.DictReader(f)]

    kinds = ["EMAIL", "PHONE", "PHONE", "CARD", "IBAN", "IP", "SSN", "URL", "SECRET"]
    with open(args.out, "w") as out:
        for i in range(args.n):
            sentence = Sentence()
            locale = rng.choice(LOCALES)
            fake = fakers[locale]
            message = rng.choice(messages)
            if rng.random() < 0.5:
                sentence.add(message + " ")
            if rng.random() < 0.25:
                text = negative(fake, rng)
                sentence.add(text if text.endswith(("?", "!", ".")) else text + ".")
                kind_label = "negative"
            else:
                kind_label = "pii"
                for n in range(1 if rng.random() < 0.8 else 2):
                    if n:
                        sentence.add(" Also, ")
                    kind = rng.choice(kinds)
                    if kind == "SSN":
                        fake = fakers["en_US"]
                    lead = {
                        "EMAIL": EMAIL_LEADS,
                        "PHONE": PHONE_LEADS,
                        "CARD": CARD_LEADS,
                        "IBAN": IBAN_LEADS,
                        "IP": IP_LEADS,
                        "SSN": SSN_LEADS,
                        "URL": URL_LEADS,
                        "SECRET": SECRET_LEADS,
                    }[kind]
                    before, after = rng.choice(lead).split("{}")
                    sentence.add(before)
                    if kind == "SECRET":
                        text, (s, e) = secret_value(fake, rng)
                        sentence.add(text[:s]).pii(text[s:e], "SECRET").add(text[e:])
                    else:
                        value = {
                            "EMAIL": lambda: fake.email() if rng.random() < 0.8 else fake.email().upper(),
                            "PHONE": lambda: phone_value(fake, locale, rng),
                            "CARD": lambda: card_value(fake, rng),
                            "IBAN": lambda: iban_value(fake, rng),
                            "IP": lambda: ip_value(fake, rng),
                            "SSN": lambda: fake.ssn(),
                            "URL": lambda: url_value(fake, rng),
                        }[kind]()
                        sentence.pii(value, kind)
                    sentence.add(after + rng.choice([".", "", "!", ", thanks."]))
            if not sentence.text.strip().endswith((".", "!", "?")) and rng.random() < 0.5:
                sentence.add(" " + message)
            record = {"id": f"s{i:05d}", "text": sentence.text, "spans": sentence.spans, "kind": kind_label}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
