"""Labeled PII corpus: Faker values (12 locales) in customer-support sentences.

Each line: {"id", "text", "spans": [{"start", "end", "type"}], "kind": "pii" | "negative"}.
Offsets are Python string indices (code points). Banking77 messages (CC-BY-4.0)
give the sentences their texture; the PII is synthetic.

    python make_corpus.py --banking77 data/banking77/train.csv --seed 20261204 --out tune.jsonl
    python make_corpus.py --banking77 data/banking77/train.csv --seed 4711 --out heldout.jsonl

Two seeds make two corpora with the same generators and different values,
sentences and templates drawn: one to look at while writing the detectors, one
to score once at the end.
"""

import argparse
import base64
import csv
import json
import random
import string

from faker import Faker

SEED = 20240501
LOCALES = ["en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "pt_BR", "nl_NL", "pl_PL", "ja_JP", "en_IN", "sv_SE"]
COUNTRY_CODES = {
    "en_US": "1",
    "en_GB": "44",
    "de_DE": "49",
    "fr_FR": "33",
    "es_ES": "34",
    "it_IT": "39",
    "pt_BR": "55",
    "nl_NL": "31",
    "pl_PL": "48",
    "ja_JP": "81",
    "en_IN": "91",
    "sv_SE": "46",
}
CURRENCIES = ["£", "$", "€", "EUR ", "USD ", "R$", "zł ", "¥", "₹", "kr "]


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
    "Details: {}",
    "It's {}",
    "try {} tomorrow morning",
    "{} (after 6pm)",
    "Contact: {}",
    "ring {} if you need me",
    "Here is my WhatsApp {}",
    "Customer gave {} as callback",
    "or {}",
    "Tel:{}",
    "Account holder {}, please call",
    "Order delayed, {} is me",
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
    "Paid with {} yesterday",
    "Maestro {} was refused",
    "Card no. {} please cancel",
    "{AMOUNT}{}",
]
IBAN_LEADS = [
    "Please refund to {}",
    "My IBAN is {}",
    "I sent the money to {} but it bounced",
    "Beneficiary account: {}",
    "Transfer from {} never arrived",
    "Account: {}",
    "{} is where the salary goes",
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
    "I pasted {} by mistake, please revoke it",
    "token {}",
    "{}",
]


def national_digits(fake, locale):
    digits = "".join(c for c in fake.phone_number().split("x")[0] if c.isdigit())
    cc = COUNTRY_CODES[locale]
    if digits.startswith("00" + cc):
        digits = digits[2 + len(cc) :]
    elif digits.startswith(cc) and len(digits) > 10:
        digits = digits[len(cc) :]
    return digits.lstrip("0") or "7700900123"


def phone_value(fake, locale, rng):
    r = rng.random()
    if r < 0.55:
        return fake.phone_number()
    digits = national_digits(fake, locale)
    cc = COUNTRY_CODES[locale]
    if r < 0.72:
        # International form of a national number, grouped in one of the common ways.
        style = rng.randrange(4)
        if style == 0:
            return f"+{cc} {digits[:3]} {digits[3:6]} {digits[6:]}".strip()
        if style == 1:
            return f"+{cc} {digits[:2]} {digits[2:6]}-{digits[6:]}".strip("- ")
        if style == 2:
            return f"+{cc}-{digits[:3]}-{digits[3:6]}-{digits[6:]}".strip("-")
        return f"+{cc}{digits}"
    if r < 0.82:
        return "+" + fake.msisdn()
    # National forms with no country code, as people type them.
    area, mid, last = rng.randint(201, 989), rng.randint(200, 999), rng.randint(0, 9999)
    style = rng.randrange(6)
    if style == 0:
        return f"{area}-{mid}-{last:04d}"
    if style == 1:
        return f"{area}.{mid}.{last:04d}x{rng.randint(10, 99999)}"
    if style == 2:
        return f"({area}) {mid}-{last:04d}"
    if style == 3:
        return f"{rng.randint(500, 899)} {rng.randint(100, 999)} {rng.randint(100, 999)}"
    if style == 4:
        return f"0{rng.randint(1, 9)}{rng.randint(0, 9)} {rng.randint(100, 999)} {rng.randint(1000, 9999)}"
    return f"{area} {mid} {last:04d}"


def card_value(fake, rng):
    card_type = "maestro" if rng.random() < 0.15 else None
    number = fake.credit_card_number(card_type)
    if len(number) == 16 and rng.random() < 0.5:
        return group(number, 4, rng.choice([" ", "-"]))
    return number


def iban_value(fake, rng):
    iban = fake.iban()
    r = rng.random()
    if r < 0.1:
        # A digit lost in typing: the wrong length for its country, still an account number.
        at = rng.randrange(8, len(iban))
        iban = iban[:at] + iban[at + 1 :]
    elif r < 0.2:
        # A mistyped check: still an account number to a reader.
        iban = iban[:2] + f"{(int(iban[2:4]) + rng.randint(1, 50)) % 97 + 2:02d}" + iban[4:]
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
    header = b64url(json.dumps({"alg": rng.choice(["HS256", "RS256", "ES256"]), "typ": "JWT"}).encode())
    claims = {"sub": fake.uuid4(), "name": fake.name(), "iat": rng.randint(1.6e9, 1.8e9)}
    style = rng.randrange(3)
    if style == 0:
        payload = b64url(json.dumps(claims).encode())
    elif style == 1:
        # A payload that does not start with `eyJ`: JSON after a space or newline.
        payload = b64url(("\n" + json.dumps(claims, separators=(",", ":"))).encode())
    else:
        # An encrypted or opaque payload.
        payload = b64url(rng.randbytes(rng.randint(24, 80)))
    return f"{header}.{payload}.{b64url(rng.randbytes(rng.choice([32, 64])))}"


def secret_value(fake, rng):
    """(text, (start, end) of the secret inside it)."""
    upper = string.ascii_uppercase + string.digits
    kind = rng.randrange(14)
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
    elif kind == 11:
        token = rng.choice(["hf_", "npm_"]) + rand_chars(rng, 36)
    elif kind == 12:
        token = "sk-ant-api03-" + rand_chars(rng, 80, string.ascii_letters + string.digits + "_-") + "AA"
    elif kind == 13:
        token = "SG." + rand_chars(rng, 22, string.ascii_letters + string.digits + "_-") + "." + rand_chars(rng, 43, string.ascii_letters + string.digits + "_-")
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


LOOK_ALIKES = [
    "Luhn-invalid card number",
    "date and time",
    "amount",
    "order number",
    "app version",
    "transaction reference",
    "BIC and version",
    "invalid SSN",
    "card ending",
    "plain URL and percentage",
    "year range",
    "dotted quad over 255",
    "version with a date",
    "ISO timestamp",
    "four-part build number",
    "tracking id",
    "hex colour",
    "amount, date and time",
    "order number and date",
    "UUID",
    "thousands-grouped amount",
    "month and times",
    "exchange rate and fee",
    "sort code, card ending, ticket",
]


def negative(fake, rng):
    """(look-alike category, text)."""
    r = rng.randrange(24)
    return LOOK_ALIKES[r], negative_text(fake, rng, r)


def negative_text(fake, rng, r):
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
        bic = rand_chars(rng, 4, string.ascii_uppercase) + rng.choice(["GB", "DE", "FR", "NL", "ES", "IT"]) + rand_chars(rng, 2, string.ascii_uppercase + string.digits)
        return f"Is {bic} the right BIC for app {rng.randint(1, 9)}.{rng.randint(0, 30)}? the transfer failed"
    if r == 7:
        area = rng.choice(["000", "666", str(rng.randint(900, 999))])
        return f"The form shows {area}-{rng.randint(10, 99)}-{rng.randint(1000, 9999)} which isn't my SSN"
    if r == 8:
        return f"My card ending {rng.randint(1000, 9999)} was charged {rng.randint(2, 5)} times"
    if r == 9:
        return f"Visit {fake.url()} for the fees, it says {rng.randint(2, 9)}.{rng.randint(0, 9)}%"
    if r == 10:
        return f"Between {rng.randint(2015, 2019)}-{rng.randint(2020, 2024)} I had no problems, then {date.year}"
    if r == 12:
        return f"Updated to {rng.randint(1, 9)}.{rng.randint(0, 9)}.{rng.randint(0, 9)} ({rng.randint(1, 12)}/{rng.randint(1, 28)}/{rng.randint(2020, 2027)}) and it still crashes"
    if r == 13:
        return f"The transfer at {fake.iso8601()} is missing" if rng.random() < 0.5 else f"Logged {fake.date_time().isoformat(sep=' ')}.{rng.randint(100, 999)}+02:00"
    if r == 14:
        return f"Build {rng.randint(1, 20)}.{rng.randint(0, 9)}.{rng.randint(0, 9)}.{rng.randint(0, 255)} of the app logs me out"
    if r == 15:
        tracking = rng.choice([
            "1Z" + rand_chars(rng, 6, string.ascii_uppercase + string.digits) + "".join(rng.choice(string.digits) for _ in range(10)),
            "94001" + "".join(rng.choice(string.digits) for _ in range(17)),
            "JD01" + "".join(rng.choice(string.digits) for _ in range(16)),
            rand_chars(rng, 2, string.ascii_uppercase) + "".join(rng.choice(string.digits) for _ in range(9)) + rng.choice(["GB", "DE", "NL"]),
        ])
        return f"Tracking id {tracking} has not moved"
    if r == 16:
        return f"The button colour #{fake.hex_color()[1:]} is unreadable, use {fake.hex_color()}"
    if r == 17:
        amount = rng.uniform(1, 5000)
        return f"{rng.choice(CURRENCIES)}{amount:.2f} left my account on {date.strftime('%d/%m/%Y')} at {fake.time()[:5]}"
    if r == 18:
        return f"Order {rng.choice(['#', 'no. ', 'ID '])}{rng.randint(10**6, 10**10)} from {date.strftime('%d.%m.%Y')} is still open"
    if r == 19:
        return f"Request id {fake.uuid4()} failed"
    if r == 20:
        return f"I moved {rng.randint(1, 999)} {rng.randint(100, 999)} {rng.randint(100, 999)},{rng.randint(10, 99)} {rng.choice(['zł', 'kr', 'EUR', 'euros'])} last year"
    if r == 21:
        return f"The statement for {date.strftime('%Y-%m')} shows {rng.randint(2, 40)} payments between {rng.randint(1, 12):02d}:{rng.randint(0, 59):02d} and {rng.randint(13, 23)}:{rng.randint(0, 59):02d}"
    if r == 22:
        return f"Exchange rate {rng.uniform(0.5, 200):.4f} on {date.strftime('%d.%m.%Y')}, fee {rng.randint(1, 9)}.{rng.randint(0, 99):02d}%"
    if r == 23:
        return f"Sort code {rng.randint(10, 99)}-{rng.randint(10, 99)}-{rng.randint(10, 99)} and card ending {rng.randint(1000, 9999)}, ticket {rng.randint(10**5, 10**7)}"
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
            look_alike = None
            if rng.random() < 0.25:
                look_alike, text = negative(fake, rng)
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
                    if "{AMOUNT}" in before:
                        before = before.replace("{AMOUNT}", f"I was charged {rng.choice(CURRENCIES)}{rng.uniform(1, 900):.2f} ")
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
            record = {"id": f"s{i:05d}", "text": sentence.text, "spans": sentence.spans, "kind": kind_label, "locale": locale}
            if look_alike:
                record["look_alike"] = look_alike
            out.write(json.dumps(record, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
