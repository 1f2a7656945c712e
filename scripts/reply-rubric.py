#!/usr/bin/env python3
"""The support-reply example's metric: a deterministic rubric for a customer reply.

promptloop's `command` metric runs it once per example (from the repository root,
no shell) with `{"inputs", "outputs", "prediction", "field"}` on stdin and reads
`{"score", "feedback"}` from the last line of stdout. Standard library only.

The example's `meta` is not passed, so everything the rubric needs is read from
what is: the signal (routine / urgent / escalating) from `inputs.message` and
`inputs.history` by a port of the rules of src/logs/signals.rs (the same
detector the router uses), and the topic from the words the customer's message
shares with the reference reply. So an example `promptloop pull` adds from
production logs, which has no `meta`, is scored exactly as a built one.

Five criteria, each a part of the score (weights below; acknowledgement counts
only where the customer is urgent or escalating, and the others are rescaled):

  topic            the reply uses the topic words (half of them, at most two needed)
                   and says more than the customer's own words
  acknowledgement  urgent: says it understands the urgency;
                   escalating: acknowledges the frustration and names the failure
  next step        a concrete action: what to do, where, or what we will do and when
  apology          routine messages get no apology; nobody gets more than two
  length           at most 60 words

The feedback names every criterion, its verdict and, for each one missed, what
to change: GEPA's reflection reads it to rewrite the handlers' instructions.

A malformed request (stdin that is not a JSON object, or no `inputs.message`)
is the caller's mistake, not the reply's: the rubric says so on stderr and exits
with status 2, so promptloop counts the example as one it could not score.
"""
import json
import re
import sys

# --- The signal detector: a port of src/logs/signals.rs (default [signals]) -----

ESCALATION_PHRASES = [
    "legal action", "lawyer", "solicitor", "attorney", "sue you", "take you to court",
    "speak to a manager", "speak to your manager", "talk to a manager", "talk to your manager",
    "speak to a supervisor", "talk to a supervisor", "escalate this", "formal complaint",
    "file a complaint", "ombudsman", "regulator", "second time i've asked", "third time i've asked",
    "third time i have asked", "third time", "3rd time", "fourth time", "4th time", "asked you before",
    "asked several times", "asked multiple times", "still no answer", "still no reply",
    "still haven't heard", "nobody has replied", "no one has replied", "unacceptable",
]
URGENT_PHRASES = [
    "urgent", "urgently", "asap", "as soon as possible", "immediately", "right now", "right away",
    "emergency", "help me please", "please help",
]
ACRONYMS = {
    "ATM", "PIN", "IBAN", "SWIFT", "BIC", "USD", "EUR", "GBP", "CHF", "JPY", "AUD", "CAD", "CVV", "CVC", "SMS",
    "OTP", "API", "URL", "FAQ", "SEPA", "ACH", "APP", "USA", "UK", "EU", "ID", "VAT", "NFC", "SIM",
}
MIN_WORDS_FOR_CAPS = 3
CAPS_SHARE = 0.5
HISTORY_REPEATS = 2


def _phrase_regex(phrases):
    # As in SignalDetector::new: longest first (ties by text), escaped, an
    # apostrophe also matches a typographic one, case-insensitive, whole words.
    ordered = sorted(set(phrases), key=lambda p: (-len(p), p))
    alternation = [re.escape(p).replace("'", "['’]") for p in ordered]
    return re.compile(r"\b(?:" + "|".join(alternation) + r")\b", re.IGNORECASE)


ESCALATION_RE = _phrase_regex(ESCALATION_PHRASES)
URGENT_RE = _phrase_regex(URGENT_PHRASES)


def punctuation_runs(text):
    """(runs of 2+ `!` without `?`, clusters mixing `?` and `!` or holding `‽`)."""
    bangs, clusters, run = 0, [], ""

    def flush(run):
        nonlocal bangs
        has_bang, has_question = "!" in run, "?" in run
        if "‽" in run or (has_bang and has_question):
            if run not in clusters:
                clusters.append(run)
        elif has_bang and len(run) >= 2:
            bangs += 1

    for c in text:
        if c in "!?‽":
            run += c
        elif run:
            flush(run)
            run = ""
    if run:
        flush(run)
    return bangs, clusters


def caps_words(text):
    """(all-caps words, words) over words of 3+ letters, without placeholders and acronyms."""
    caps = words = 0
    for token in re.split(r"\s", text):
        if token.startswith("<"):
            continue
        word = token
        while word and not word[0].isalnum():
            word = word[1:]
        while word and not word[-1].isalnum():
            word = word[:-1]
        letters = sum(1 for c in word if c.isalpha())
        if letters < 3 or any(c in "0123456789" for c in word):
            continue
        words += 1
        if all(not c.isalpha() or c.isupper() for c in word) and word not in ACRONYMS:
            caps += 1
    return caps, words


def urgency_cues(message):
    """(the number of urgency cues in one message, their evidence in words)."""
    cues, evidence = 0, []
    bangs, clusters = punctuation_runs(message)
    if bangs:
        cues += 1
        evidence.append(f'{bangs} run{"" if bangs == 1 else "s"} of "!!"')
    if clusters:
        cues += 1
        evidence.append("interrobang " + " ".join(clusters))
    caps, words = caps_words(message)
    if words >= MIN_WORDS_FOR_CAPS and caps > 0 and caps / words >= CAPS_SHARE:
        cues += 1
        evidence.append(f"{caps} of {words} words in capitals")
    found = []
    for m in URGENT_RE.finditer(message):
        word = m.group(0).lower()
        if word not in found:
            found.append(word)
    if found:
        cues += 1
        evidence += [f'urgency word "{w}"' for w in found]
    return cues, evidence


def read_signal(message, history):
    """(label, evidence) as SignalDetector::read gives them for this message and history."""
    cues, evidence = urgency_cues(message)
    escalation = []
    for m in ESCALATION_RE.finditer(message):
        phrase = m.group(0).lower().replace("’", "'")
        if phrase not in escalation:
            escalation.append(phrase)
    evidence += [f'escalation phrase "{p}"' for p in escalation]
    earlier = sum(1 for m in history if m.strip())
    repeated_urgency = False
    if earlier:
        evidence.append(f'{earlier} earlier message{"" if earlier == 1 else "s"} in the conversation')
        repeated_urgency = any(urgency_cues(m)[0] > 0 for m in history)
    if escalation or (cues and (earlier >= HISTORY_REPEATS or repeated_urgency)):
        return "escalating", evidence
    if cues:
        return "urgent", evidence
    return "routine", evidence


def history_list(value):
    """The history input as the router reads it: a list (items as text) or lines of a string."""
    if isinstance(value, list):
        return [v if isinstance(v, str) else json.dumps(v) for v in value]
    if isinstance(value, str):
        return [line for line in value.splitlines() if line.strip()]
    return []


# --- Topic ------------------------------------------------------------------------

# Function words, and the words of the reference replies' frames (greetings,
# acknowledgements, escalation notes) and of tone rewrites, which say nothing
# about the topic.
STOPWORDS = set("""
a about above after again against all already also am an and any anyone anything are aren't as at be
because been before being below between both but by can can't cannot could couldn't did didn't do does
doesn't doing don't down during each either else even ever every few for from further get gets getting
got had hadn't has hasn't have haven't having he her here hers herself him himself his how i i'd i'll
i'm i've if in into is isn't it it's its itself just let let's like me might more most much must mustn't
my myself need needs no nor not now of off ok okay on once one only or other our ours ourselves out over
own please pls same shall she should shouldn't so some still such than that that's the their theirs them
themselves then there there's these they they're this those though through to too under until up upon
us very via was wasn't we we'll we're we've were weren't what what's when where which while who whom
why will with within won't would wouldn't yet you you'd you'll you're you've your yours yourself
hi hello hey thanks thank cheers dear there sir madam regards
help happy sorry apologise apologize apologies understand understood urgent urgently asap emergency
immediately right away straight now today hour hours minute minutes day days week weeks working
reply replied replies answer answered message messages asked asking ask question questions time third
second fourth manager supervisor unacceptable complaint formal escalated escalate senior specialist
team failure fault should sooner first earlier previous twice again more than once waiting wait still
nobody anyone someone something anything everything thing things way want wanted know let sort sorted
fix fixed here's how what works work going really done make sure yes
long take takes taking took made tell told see able
""".split())

WORD_RE = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def stem(word):
    word = word.lower().replace("’", "'")
    if word.endswith("'s"):
        word = word[:-2]
    word = word.replace("'", "")
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def content_words(text):
    out = []
    for raw in WORD_RE.findall(text.lower().replace("’", "'")):
        if raw in STOPWORDS or len(raw) < 3 and raw not in ("id",):
            continue
        s = stem(raw)
        if s in STOPWORDS or s in out:
            continue
        out.append(s)
    return out


def topic_words(message, history, reference):
    """The words the customer's messages share with the reference reply, in the reply's order;
    the reply's own content words when they share none; the message's when there is no reply."""
    asked = set(content_words(" ".join([message] + list(history))))
    ref = content_words(reference or "")
    shared = [w for w in ref if w in asked]
    if shared:
        return shared
    if ref:
        return ref[:4]
    return content_words(message)[:4]


# --- The other criteria -------------------------------------------------------------

APOLOGY_RE = re.compile(r"\b(sorry|apologi[sz]e[sd]?|apologi[sz]ing|apologies|regret|regrets)\b", re.I)
URGENCY_ACK_RE = re.compile(
    r"\b(understand|urgent|urgency|right away|straight away|immediately|priority|prioriti[sz]e|"
    r"right now|as quickly|quickly|as a priority|i know|time-sensitive|first thing)\b",
    re.I,
)
FRUSTRATION_ACK_RE = re.compile(
    r"\b(sorry|apologi[sz]e|apologies|frustrat\w*|understand|i hear you|you're right|you are right|"
    r"fair|annoying|not good enough)\b",
    re.I,
)
FAILURE_RE = re.compile(
    r"\b(more than once|again|earlier message|earlier messages|previous message|previous messages|"
    r"last message|last messages|should have|our failure|our fault|our mistake|let you down|"
    r"not (?:been )?(?:resolved|answered|fixed|sorted)|unanswered|went unanswered|no reply|no answer|"
    r"delay|delayed|too long|kept you waiting|still|failed to|didn't (?:reply|answer|fix|resolve)|"
    r"haven't (?:replied|answered|fixed|resolved))\b",
    re.I,
)
ACTION_RE = re.compile(
    r"\b(tap|open|go to|select|choose|check|order|freeze|unfreeze|block|reply|send|upload|enter|call|"
    r"visit|use|contact|request|cancel|top up|follow|add|link|update|change|confirm|dispute|report|"
    r"wait|reset|verify|activate|type|scan|take|keep|turn on|switch|try|remove|share|ask|close|"
    r"we will|we'll|i will|i'll|i have|i've|we have|we've)\b",
    re.I,
)
CONCRETE_RE = re.compile(
    r"(\bapp\b|\bsettings\b|\btab\b|\bmenu\b|\bscreen\b|>|\bwithin\b|\bhours?\b|\bdays?\b|\btoday\b|"
    r"\bminutes?\b|\bby \w+day\b|\d|\bhelp centre\b|\bhelp center\b|\bchat\b|\bcase\b|\bticket\b|"
    r"\bstatement\b|\bcard details\b|\bprofile\b|\baccount page\b|\bescalated\b|\bspecialist\b|"
    r"\breference\b|\bpasscode\b|\bphoto\b|\bselfie\b|\breceipt\b|\bform\b|\bbutton\b|\bpage\b)",
    re.I,
)

MAX_WORDS = 60
WEIGHTS = {"topic": 0.30, "acknowledgement": 0.20, "next step": 0.25, "apology": 0.10, "length": 0.15}


def grade(request):
    """(score, feedback) for one request; raises ValueError on a malformed one."""
    if not isinstance(request, dict):
        raise ValueError("the request is not a JSON object")
    inputs = request.get("inputs")
    if not isinstance(inputs, dict) or not isinstance(inputs.get("message"), str):
        raise ValueError("the request has no `inputs.message` text")
    field = request.get("field") or "reply"
    if not isinstance(field, str):
        raise ValueError("`field` is not a string")
    message = inputs["message"]
    history = history_list(inputs.get("history"))
    reference = request.get("outputs")
    reference = reference.get(field) if isinstance(reference, dict) else reference
    reference = reference if isinstance(reference, str) else ""

    signal, evidence = read_signal(message, history)
    topic = topic_words(message, history, reference)
    why = f" ({'; '.join(evidence)})" if evidence else ""
    head = f"signal: {signal}{why}. topic words: {', '.join(topic) or 'none'}."

    prediction = request.get("prediction")
    reply = prediction.get(field) if isinstance(prediction, dict) else prediction
    if not isinstance(reply, str) or not reply.strip():
        what = "empty" if isinstance(reply, str) or reply is None else f"not text ({type(reply).__name__})"
        return 0.0, (
            f"{head} The `{field}` is {what}: write a reply of at most {MAX_WORDS} words that answers the "
            f"customer about {', '.join(topic[:3]) or 'their question'} and gives one concrete next step."
        )

    parts, notes, fixes = {}, [], []

    # Topic; a reply that only repeats the customer's words answers nothing.
    said = set(content_words(reply))
    hits = [w for w in topic if w in said]
    need = min(2, (len(topic) + 1) // 2)  # half the topic words, at most two
    parts["topic"] = 1.0 if need == 0 else min(1.0, len(hits) / need)
    asked = set(content_words(" ".join([message] + history)))
    echo = bool(said) and said <= asked
    if echo:
        parts["topic"] = 0.0
        notes.append("topic: 0.00, the reply only repeats the customer's words")
        fixes.append("do not repeat the customer's message: answer it, in the bank's voice")
    elif parts["topic"] >= 1.0:
        notes.append(f"topic: ok ({', '.join(hits) or 'no topic words to check'})")
    else:
        missing = [w for w in topic if w not in said][:4]
        notes.append(f"topic: {parts['topic']:.2f}, missing {', '.join(missing)}")
        fixes.append(f"answer what the customer asked about: mention {', '.join(missing)} and address it directly")

    # Acknowledgement.
    if signal == "urgent":
        ok = bool(URGENCY_ACK_RE.search(reply))
        parts["acknowledgement"] = 1.0 if ok else 0.0
        notes.append("acknowledgement: ok" if ok else "acknowledgement: missing (urgent message)")
        if not ok:
            fixes.append("the customer is urgent: open by saying you understand it is urgent and are acting on it now")
    elif signal == "escalating":
        frustration = bool(FRUSTRATION_ACK_RE.search(reply))
        failure = bool(FAILURE_RE.search(reply))
        parts["acknowledgement"] = 0.5 * frustration + 0.5 * failure
        if frustration and failure:
            notes.append("acknowledgement: ok")
        else:
            lacking = [n for n, have in (("the frustration", frustration), ("the failure", failure)) if not have]
            notes.append(f"acknowledgement: {parts['acknowledgement']:.2f}, does not acknowledge {' or '.join(lacking)}")
            if not frustration:
                fixes.append("the customer is escalating: acknowledge their frustration in the first sentence")
            if not failure:
                fixes.append("name what went wrong (e.g. they had to ask more than once, or the issue is still not fixed)")
    else:
        notes.append("acknowledgement: not needed (routine message)")

    # Next step.
    action = bool(ACTION_RE.search(reply))
    concrete = bool(CONCRETE_RE.search(reply))
    parts["next step"] = 1.0 if action and concrete else 0.5 if action or concrete else 0.0
    if parts["next step"] >= 1.0:
        notes.append("next step: ok")
    else:
        notes.append(f"next step: {parts['next step']:.2f}, {'vague' if action or concrete else 'missing'}")
        fixes.append(
            "give one concrete next step: what the customer should do and where (e.g. 'in the app, go to ...'), "
            "or what we will do and by when"
        )

    # Apology.
    apologies = APOLOGY_RE.findall(reply)
    if signal == "routine":
        parts["apology"] = 0.0 if apologies else 1.0
        if apologies:
            notes.append(f"apology: {len(apologies)} on a routine message")
            fixes.append("the customer is calm: drop the apology ('" + apologies[0].lower() + "') and answer directly")
        else:
            notes.append("apology: ok (none)")
    else:
        parts["apology"] = 1.0 if len(apologies) <= 2 else 0.5
        if len(apologies) > 2:
            notes.append(f"apology: {len(apologies)}, over-apologizing")
            fixes.append("apologize once, then spend the words on the fix")
        else:
            notes.append("apology: ok")

    # Length.
    words = len(reply.split())
    parts["length"] = 1.0 if words <= MAX_WORDS else max(0.0, 1.0 - (words - MAX_WORDS) / 30.0)
    if words <= MAX_WORDS:
        notes.append(f"length: ok ({words} words)")
    else:
        notes.append(f"length: {words} words, over {MAX_WORDS}")
        fixes.append(f"cut the reply to at most {MAX_WORDS} words (it has {words}): keep the answer and the next step")

    total = sum(WEIGHTS[name] for name in parts)
    score = round(sum(WEIGHTS[name] * value for name, value in parts.items()) / total, 4)
    change = "Change: " + "; ".join(fixes) + "." if fixes else "Nothing to change."
    return score, f"{head} {'; '.join(notes)}. {change}"


def main():
    try:
        request = json.loads(sys.stdin.read())
        score, feedback = grade(request)
    except (ValueError, UnicodeDecodeError) as e:
        print(f"reply-rubric: malformed request: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"score": score, "feedback": feedback}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
