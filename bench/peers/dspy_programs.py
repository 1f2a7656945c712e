"""DSPy on promptloop's multi-stage and router examples: meeting-actions and support-reply.

Each pipeline is written as a DSPy module with the pipeline's signatures (instructions, field
descriptions), the same splits (common.load_program: the same ids in the same splits as
promptloop) and the same LM (an OpenAI-compatible server at PEERS_BASE_URL, normally
`promptloop lm serve` with the embedded SmolLM2-135M-Instruct Q4_1), temperature 0, no DSPy
cache, `max_tokens` as the pipeline's [lm] (in extra_body: see README.md), DSPy's default
ChatAdapter (JSONAdapter fallback).

- meeting-actions: three dspy.Predict stages. classify (transcript -> meeting_type, a Literal
  of the eight values), extract (transcript, meeting_date -> candidate_actions:
  list[Action]), review (transcript, candidate_actions -> actions: list[Action]); Action is
  {action: str, owner: str, due_date: str | None}. max_tokens 320. Compiled with
  dspy.BootstrapFewShot(max_bootstrapped_demos=1, max_labeled_demos=1, metric_threshold=0.6)
  on train; the metric is a Python port of the pipeline's weighted metric (exact_match on
  meeting_type, weight 1; json_match on actions, weight 2: src/metric/).
- support-reply: a router. Three dspy.Predict handlers (routine, urgent, escalating;
  message, history -> reply) with the pipeline's instructions; the branch is the example's
  `meta.signal` (what promptloop's detector reads: scripts/check-support-reply.py), passed to
  the module as the input `signal`, which is not an LM input. max_tokens 120. Compiled with
  dspy.BootstrapFewShotWithRandomSearch(max_bootstrapped_demos=2, max_labeled_demos=2,
  max_rounds=1, num_candidate_programs=4, metric_threshold=0.8) on train, valset = dev; the
  metric runs `python3 scripts/reply-rubric.py` from the repository root with the JSON
  promptloop's command metric sends ({"inputs", "outputs", "prediction", "field"}).

Variants: `uncompiled` (the program as written) and `compiled`. Each is scored on test and
dev: every prediction, the Python metric's score, the error when DSPy lost the prediction
(exception type, message, and which stage raised), adapter parse failures by adapter, LM
calls and prompt/completion tokens per phase (as the server reports them), wall times, and
for `compiled` the demos and instructions of every predictor and what the optimizer tried.
Results: bench/results/<pipeline>-peers-dspy-<variant>.json, and one JSONL line per example
for promptloop's `eval --predictions`: bench/results/<pipeline>-peers-dspy-<variant>-<split>.jsonl
({"id", "outputs"} or {"id", "error"}).

The support-reply data is built from Banking77 (PolyAI, CC-BY-4.0): Casanueva et al.,
"Efficient Intent Detection with Dual Sentence Encoders", NLP4ConvAI @ ACL 2020,
arXiv:2003.04807. The meeting-actions transcripts are fictional, written for promptloop.

Usage:
  LITELLM_LOCAL_MODEL_COST_MAP=True PEERS_BASE_URL=http://127.0.0.1:PORT/v1 \\
    python bench/peers/dspy_programs.py --program meeting-actions|support-reply --variant uncompiled|compiled
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import argparse
import json
import math
import re
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from datetime import date, datetime
from importlib import metadata
from pathlib import Path
from typing import Literal, Optional

import dspy
import pydantic
from dspy.utils.callback import BaseCallback

import common
from common import REPO, SERVER_BASE, SERVER_MODEL, Program, load_program, resolve_pipeline, write_result
from dspy_optimizers import PHASE, Meter, MeteredLM, set_phase

BIG = 10**9
SMOKE: dict = {}  # --smoke-train / --smoke-dev: cut the optimizer's train and dev (smoke tests only)
PROGRESS_DIR = Path("/tmp/peers")
LICENSES = {
    "support-reply": "Banking77 (PolyAI), CC-BY-4.0 (messages rewritten in tone; reference replies written "
                     "for promptloop: datasets/support-reply/README.md)",
    "meeting-actions": "fictional transcripts written for promptloop (datasets/meeting-actions/README.md)",
}


# ---------------------------------------------------------------- the LM and its counters

def make_lm(max_tokens: int) -> MeteredLM:
    # promptloop lm serve (like llama.cpp's server) is given max_tokens in the body: litellm would
    # send max_completion_tokens for openai/ models, so the limit goes in extra_body.
    lm = MeteredLM(
        f"openai/{SERVER_MODEL}", api_base=SERVER_BASE, api_key="none", temperature=0,
        extra_body={"max_tokens": max_tokens}, cache=False,
    )
    lm._peers_meter = Meter("task")
    lm._peers_max_tokens = max_tokens
    return lm


class ParseCounter(BaseCallback):
    """Adapter parse attempts and failures, by phase and adapter (ChatAdapter, JSONAdapter)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.open: dict[str, tuple[str, str]] = {}
        self.by_phase: dict[str, Counter] = {}

    def on_adapter_parse_start(self, call_id, instance, inputs):
        with self.lock:
            self.open[call_id] = (PHASE["name"], type(instance).__name__)

    def on_adapter_parse_end(self, call_id, outputs, exception=None):
        with self.lock:
            phase, adapter = self.open.pop(call_id, (PHASE["name"], "?"))
            c = self.by_phase.setdefault(phase, Counter())
            c[f"{adapter}:parsed" if exception is None else f"{adapter}:failed"] += 1

    def snapshot(self) -> dict:
        with self.lock:
            return {p: dict(c) for p, c in self.by_phase.items()}


def meter_total(lm: MeteredLM) -> Counter:
    snap = lm._peers_meter.snapshot()["total"]
    return Counter({k: snap.get(k, 0) for k in ("calls", "prompt_tokens", "completion_tokens",
                                                "replies_at_max_tokens")})


# ---------------------------------------------------------------- promptloop's metrics, in Python

def normalize_value(value) -> str:
    """src/metric/mod.rs normalize_value: lowercase, whitespace collapsed, wrapping punctuation gone."""
    text = value if isinstance(value, str) else json.dumps(value)
    text = " ".join(text.lower().split())
    punct = set("!\"#$%&'()*+,./:;<=>?@[\\]^`{|}~")  # ASCII punctuation except _ and -
    i, j = 0, len(text)
    while i < j and text[i] in punct:
        i += 1
    while j > i and text[j - 1] in punct:
        j -= 1
    return text[i:j].strip()


def f1_tokens(text: str) -> list[str]:
    lowered = "".join(c if c.isalnum() or c.isspace() else " " for c in text.lower())
    return [w for w in lowered.split() if w not in ("a", "an", "the")]


def token_f1(reference: str, prediction: str) -> float:
    want, got = f1_tokens(reference), f1_tokens(prediction)
    if not want or not got:
        return float(want == got)
    counts = Counter(want)
    common_n = 0
    for g in got:
        if counts[g] > 0:
            counts[g] -= 1
            common_n += 1
    if common_n == 0:
        return 0.0
    p, r = common_n / len(got), common_n / len(want)
    return 2 * p * r / (p + r)


MONTHS = {m.lower(): i + 1 for i, m in enumerate(
    ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
     "November", "December"])}
MONTHS.update({k[:3]: v for k, v in list(MONTHS.items())})
WEEKDAYS = {"mon", "tue", "wed", "thu", "fri", "sat", "sun", "monday", "tuesday", "wednesday", "thursday",
            "friday", "saturday", "sunday"}


def normalize_date(text: str) -> str | None:
    """src/metric/json_match.rs normalize_date: an ISO 8601 day, or None."""
    t = text.strip()
    if len(t) < 8 or len(t) > 40:
        return None
    if len(t) >= 10:
        d, rest = t[:10], t[10:]
        if rest == "" or rest.startswith("T") or rest.startswith(" "):
            for fmt in ("%Y-%m-%d", "%Y/%m/%d"):
                try:
                    return datetime.strptime(d, fmt).date().isoformat()
                except ValueError:
                    pass
    parts = re.split(r"[/.\-]", t)
    if len(parts) == 3 and all(p and p.isascii() and p.isdigit() for p in parts):
        a, b, y = int(parts[0]), int(parts[1]), int(parts[2])
        if len(parts[2]) != 4:
            return None
        if a <= 12 and b > 12:
            month, day = a, b
        elif a > 12 and b <= 12:
            month, day = b, a
        elif a <= 12 and b <= 12 and a == b:
            month, day = a, b
        else:
            return None
        try:
            return date(y, month, day).isoformat()
        except ValueError:
            return None
    words = []
    for w in t.replace(",", " ").split():
        m = re.fullmatch(r"(\d+)(st|nd|rd|th)", w, re.I)
        words.append(m.group(1) if m else w.rstrip("."))
    if len(words) == 4 and words[0].lower() in WEEKDAYS:
        words = words[1:]
    if len(words) != 3:
        return None
    for order in (("m", "d", "y"), ("d", "m", "y"), ("y", "m", "d")):
        got = dict(zip(order, words))
        month = MONTHS.get(got["m"].lower())
        if month is None or not got["d"].isdigit() or not got["y"].lstrip("+-").isdigit():
            continue
        try:
            return date(int(got["y"]), month, int(got["d"])).isoformat()
        except ValueError:
            continue
    return None


def assign(similarity: list[list[float]]) -> list[int | None]:
    """The Hungarian algorithm as src/metric/json_match.rs assign: each row's column, or None."""
    rows = len(similarity)
    cols = len(similarity[0]) if rows else 0
    if rows == 0 or cols == 0:
        return [None] * rows
    if rows > cols:
        transposed = [[similarity[i][j] for i in range(rows)] for j in range(cols)]
        by_col = assign(transposed)
        by_row: list[int | None] = [None] * rows
        for j, i in enumerate(by_col):
            if i is not None:
                by_row[i] = j
        return by_row
    n, m = rows, cols
    inf = float("inf")
    u = [0.0] * (n + 1)
    v = [0.0] * (m + 1)
    owner = [0] * (m + 1)
    way = [0] * (m + 1)
    for i in range(1, n + 1):
        owner[0] = i
        j0 = 0
        min_to = [inf] * (m + 1)
        used = [False] * (m + 1)
        while True:
            used[j0] = True
            i0 = owner[j0]
            delta, j1 = inf, 0
            for j in range(1, m + 1):
                if not used[j]:
                    reduced = -similarity[i0 - 1][j - 1] - u[i0] - v[j]
                    if reduced < min_to[j]:
                        min_to[j] = reduced
                        way[j] = j0
                    if min_to[j] < delta:
                        delta = min_to[j]
                        j1 = j
            for j in range(m + 1):
                if used[j]:
                    u[owner[j]] += delta
                    v[j] -= delta
                else:
                    min_to[j] -= delta
            j0 = j1
            if owner[j0] == 0:
                break
        while True:
            j1 = way[j0]
            owner[j0] = owner[j1]
            j0 = j1
            if j0 == 0:
                break
    out: list[int | None] = [None] * rows
    for j in range(1, m + 1):
        if owner[j] != 0:
            out[owner[j] - 1] = j - 1
    return out


def _type_fits(types: list[str], value) -> bool:
    for t in types:
        if (t == "null" and value is None) or (t == "boolean" and isinstance(value, bool)) or \
           (t == "integer" and isinstance(value, int) and not isinstance(value, bool)) or \
           (t == "number" and isinstance(value, (int, float)) and not isinstance(value, bool)) or \
           (t == "string" and isinstance(value, str)) or (t == "array" and isinstance(value, list)) or \
           (t == "object" and isinstance(value, dict)) or t not in (
               "null", "boolean", "integer", "number", "string", "array", "object"):
            return True
    return False


def _leaf_similarity(want, got) -> float:
    if want is None and got is None:
        return 1.0
    if want is None or got is None:
        return 0.0
    if isinstance(want, str) and isinstance(got, str):
        wd, gd = normalize_date(want), normalize_date(got)
        if wd is not None and gd is not None:
            return float(wd == gd)
        if wd is not None:
            return 0.0
        s = token_f1(want, got)
        return 1.0 if s >= 1.0 else s
    if isinstance(want, (int, float)) and isinstance(got, (int, float)) and not isinstance(want, bool) \
            and not isinstance(got, bool):
        return float(abs(want - got) <= 1e-9 * max(abs(want), abs(got), 1.0))
    if isinstance(want, (list, dict)):
        return float(want == got)
    return float(normalize_value(want) == normalize_value(got))


def json_match(reference, predicted, item_schema: dict) -> float:
    """src/metric/json_match.rs for a list field: one-to-one matching of items, F1 of the pairs."""
    if isinstance(predicted, str):
        t = predicted.strip()
        t = t[7:] if t.startswith("```json") else t[3:] if t.startswith("```") else t
        t = t[:-3] if t.endswith("```") else t
        try:
            predicted = json.loads(t.strip())
        except ValueError:
            return 0.0
    if not isinstance(predicted, list):
        return 0.0
    if not reference and not predicted:
        return 1.0
    if not reference or not predicted:
        return 0.0
    props = item_schema.get("properties", {})
    required = item_schema.get("required")

    def item_sim(r, p) -> float:
        if not (isinstance(r, dict) and isinstance(p, dict)):
            return _leaf_similarity(r, p)
        req = required if required is not None else list(r.keys())
        keys = list(props.keys()) if props else list(r.keys())
        keys += [k for k in r if k not in keys]
        total = weights = 0.0
        for k in keys:
            weights += 1.0
            if k not in r and k not in p:
                s = 1.0
            elif k not in p:
                s = 0.0 if (k in req or r.get(k) is not None) else 1.0
            else:
                ks = props.get(k)
                types = None
                if ks is not None and "type" in ks:
                    types = ks["type"] if isinstance(ks["type"], list) else [ks["type"]]
                if types is not None and not _type_fits(types, p[k]):
                    s = 0.0
                else:
                    s = _leaf_similarity(r.get(k), p[k])
            total += s
        return total / weights if weights else 1.0

    sim = [[item_sim(r, p) for r in reference] for p in predicted]
    matched = 0.0
    for i, j in enumerate(assign(sim)):
        if j is not None and sim[i][j] > 0.0:
            matched += sim[i][j]
    precision, recall = matched / len(predicted), matched / len(reference)
    f1 = 2 * precision * recall / (precision + recall) if matched > 0 else 0.0
    return min(1.0, max(0.0, f1))


# ---------------------------------------------------------------- meeting-actions

class Action(pydantic.BaseModel):
    action: str
    owner: str
    due_date: Optional[str]


def _field(spec: dict) -> str:
    return spec.get("description", "")


def meeting_signatures(prog: Program) -> dict[str, type[dspy.Signature]]:
    s = prog.signatures
    types = tuple(s["classify"]["outputs"]["meeting_type"]["values"])
    classify = dspy.Signature({
        "transcript": (str, dspy.InputField(desc=_field(s["classify"]["inputs"]["transcript"]))),
        "meeting_type": (Literal[types], dspy.OutputField(desc=_field(s["classify"]["outputs"]["meeting_type"]))),
    }, prog.instructions("classify"))
    extract = dspy.Signature({
        "transcript": (str, dspy.InputField(desc=_field(s["extract"]["inputs"]["transcript"]))),
        "meeting_date": (str, dspy.InputField(desc=_field(s["extract"]["inputs"]["meeting_date"]))),
        "candidate_actions": (list[Action], dspy.OutputField(
            desc=_field(s["extract"]["outputs"]["candidate_actions"]))),
    }, prog.instructions("extract"))
    review = dspy.Signature({
        "transcript": (str, dspy.InputField(desc=_field(s["review"]["inputs"]["transcript"]))),
        "candidate_actions": (list[Action], dspy.InputField(desc=_field(s["review"]["inputs"]["candidate_actions"]))),
        "actions": (list[Action], dspy.OutputField(desc=_field(s["review"]["outputs"]["actions"]))),
    }, prog.instructions("review"))
    return {"classify": classify, "extract": extract, "review": review}


def _stage(name, fn, **kwargs):
    try:
        return fn(**kwargs)
    except Exception as e:
        if not hasattr(e, "peers_stage"):
            e.peers_stage = name
        raise


class MeetingActions(dspy.Module):
    def __init__(self, sigs):
        super().__init__()
        self.classify = dspy.Predict(sigs["classify"])
        self.extract = dspy.Predict(sigs["extract"])
        self.review = dspy.Predict(sigs["review"])

    def forward(self, transcript, meeting_date):
        c = _stage("classify", self.classify, transcript=transcript)
        e = _stage("extract", self.extract, transcript=transcript, meeting_date=meeting_date)
        r = _stage("review", self.review, transcript=transcript, candidate_actions=e.candidate_actions)
        return dspy.Prediction(meeting_type=c.meeting_type, candidate_actions=e.candidate_actions,
                               actions=r.actions)


def _plain(value):
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def meeting_metric_fn(prog: Program):
    """The pipeline's weighted metric: exact_match(meeting_type) x 1 + json_match(actions) x 2, over 3."""
    parts = prog.config["metric"]["parts"]
    weights = {p["kind"]: float(p.get("weight", 1.0)) for p in parts}
    schema = prog.signatures["review"]["outputs"]["actions"]["schema"]
    item_schema = schema.get("items", schema)

    def score(outputs: dict, reference: dict) -> tuple[float, dict]:
        want = normalize_value(reference.get("meeting_type", ""))
        got = normalize_value(outputs.get("meeting_type", "")) if "meeting_type" in outputs else ""
        em = float(bool(want) and want == got)
        jm = json_match(reference["actions"], outputs["actions"], item_schema) if "actions" in outputs else 0.0
        total = weights["exact_match"] + weights["json_match"]
        return (weights["exact_match"] * em + weights["json_match"] * jm) / total, {"exact_match": em,
                                                                                   "json_match": round(jm, 4)}
    return score


# ---------------------------------------------------------------- support-reply

def reply_signatures(prog: Program) -> dict[str, type[dspy.Signature]]:
    out = {}
    for branch in ("routine", "urgent", "escalating"):
        name = prog.config["program"]["stages"][0]["branches"][branch]["signature"]
        s = prog.signatures[name]
        out[branch] = dspy.Signature({
            "message": (str, dspy.InputField(desc=_field(s["inputs"]["message"]))),
            "history": (list[str], dspy.InputField(desc=_field(s["inputs"]["history"]))),
            "reply": (str, dspy.OutputField(desc=_field(s["outputs"]["reply"]))),
        }, prog.instructions(name))
    return out


class SupportReply(dspy.Module):
    """A router: `signal` (the detector's reading, given with the example) picks the handler."""

    def __init__(self, sigs):
        super().__init__()
        self.routine = dspy.Predict(sigs["routine"])
        self.urgent = dspy.Predict(sigs["urgent"])
        self.escalating = dspy.Predict(sigs["escalating"])

    def forward(self, message, history, signal):
        handler = {"routine": self.routine, "urgent": self.urgent, "escalating": self.escalating}[signal]
        out = _stage(signal, handler, message=message, history=history)
        return dspy.Prediction(reply=out.reply)


def rubric_score(row: dict, outputs: dict) -> tuple[float, str]:
    """promptloop's command metric: the same JSON on stdin, run from the repository root."""
    metric = {"inputs": row["inputs"], "outputs": row["outputs"], "prediction": outputs, "field": "reply"}
    if "reply" not in outputs:
        return 0.0, "the prediction has no `reply`"
    p = subprocess.run(["python3", "scripts/reply-rubric.py"], input=json.dumps(metric), cwd=REPO,
                       capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        raise RuntimeError(f"reply-rubric.py exited {p.returncode}: {p.stderr[-300:]}")
    lines = [l for l in p.stdout.splitlines() if l.strip()]
    verdict = json.loads(lines[-1])
    return float(verdict["score"]), verdict.get("feedback", "")


# ---------------------------------------------------------------- the two programs, uniformly

class Spec:
    def __init__(self, prog: Program):
        self.prog = prog
        self.rows = {r["id"]: r for part in (prog.train, prog.dev, prog.test) for r in part}
        if prog.name == "meeting-actions":
            self.sigs = meeting_signatures(prog)
            self.inputs = ("transcript", "meeting_date")
            self.outputs = ("meeting_type", "actions")
            self.max_tokens = int(prog.config["lm"]["max_tokens"])
            self._score = meeting_metric_fn(prog)
        elif prog.name == "support-reply":
            self.sigs = reply_signatures(prog)
            self.inputs = ("message", "history", "signal")
            self.outputs = ("reply",)
            self.max_tokens = int(prog.config["lm"]["max_tokens"])
        else:
            raise SystemExit(f"no DSPy program for {prog.name}")

    def program(self) -> dspy.Module:
        return MeetingActions(self.sigs) if self.prog.name == "meeting-actions" else SupportReply(self.sigs)

    def example(self, row: dict) -> dspy.Example:
        fields = dict(row["inputs"])
        if self.prog.name == "support-reply":
            fields["signal"] = row["meta"]["signal"]
        fields.update(row["outputs"])
        return dspy.Example(**fields, id=row["id"]).with_inputs(*self.inputs)

    def branch(self, row: dict) -> str | None:
        return row.get("meta", {}).get("signal") if self.prog.name == "support-reply" else None

    def score(self, row: dict, outputs: dict) -> tuple[float, object]:
        if self.prog.name == "meeting-actions":
            return self._score(outputs, row["outputs"])
        return rubric_score(row, outputs)

    def dspy_metric(self, counter: Counter):
        def metric(example, pred, trace=None):
            counter[PHASE["name"]] += 1
            outputs = {k: _plain(pred.get(k)) for k in self.outputs if pred.get(k) is not None}
            return self.score(self.rows[example.id], outputs)[0]
        return metric


def describe(spec: Spec, program: dspy.Module) -> list[dict]:
    by_inputs = {}
    for r in spec.rows.values():
        by_inputs[json.dumps(r["inputs"], sort_keys=True)] = r["id"]
    out = []
    for name, pred in program.named_predictors():
        demos = []
        for d in pred.demos:
            d = dict(d)
            inputs = {k: d.get(k) for k in spec.rows[next(iter(spec.rows))]["inputs"]}
            demo_id = d.get("id") or by_inputs.get(json.dumps(_plain(inputs), sort_keys=True))
            demos.append({"id": demo_id, "augmented": bool(d.get("augmented", False)),
                          "fields": {k: _plain(v) for k, v in d.items() if k not in ("id", "augmented")}})
        out.append({"name": name, "instructions": pred.signature.instructions, "demos": demos})
    return out


def evaluate(spec: Spec, program: dspy.Module, lm: MeteredLM, split: str, limit: int | None) -> dict:
    rows = list(spec.prog.split(split))[:limit] if limit else list(spec.prog.split(split))
    preds = []
    errors: Counter = Counter()
    stages: Counter = Counter()
    t0 = time.perf_counter()
    for row in rows:
        ex = spec.example(row)
        before = meter_total(lm)
        hist0 = len(lm.history)
        s0 = time.perf_counter()
        entry: dict = {"id": row["id"]}
        if spec.branch(row):
            entry["branch"] = spec.branch(row)
        try:
            pred = program(**ex.inputs())
            entry["outputs"] = {k: _plain(pred.get(k)) for k in spec.outputs}
            if "candidate_actions" in pred:
                entry["candidate_actions"] = _plain(pred.get("candidate_actions"))
            score, detail = spec.score(row, entry["outputs"])
            entry["score"] = round(score, 4)
            entry["metric_detail"] = detail
        except Exception as e:
            kind = type(e).__name__
            stage = getattr(e, "peers_stage", None)
            errors[kind] += 1
            if stage:
                stages[f"{stage}:{kind}"] += 1
            entry["error"] = {"type": kind, "stage": stage, "message": str(e)[:1500]}
            entry["score"] = 0.0
            # The raw replies behind a lost prediction (the ChatAdapter's, then the JSONAdapter's).
            entry["lm_replies"] = [str((h.get("outputs") or [""])[0])[:600] for h in lm.history[hist0:]]
        used = meter_total(lm) - before
        entry["lm_calls"] = used["calls"]
        entry["prompt_tokens"] = used["prompt_tokens"]
        entry["completion_tokens"] = used["completion_tokens"]
        entry["replies_at_max_tokens"] = used["replies_at_max_tokens"]
        entry["wall_s"] = round(time.perf_counter() - s0, 2)
        preds.append(entry)
        print(f"  {split} {row['id']} score={entry['score']} calls={entry['lm_calls']} "
              f"{entry.get('error', {}).get('type', '')}", flush=True)
    n = len(rows)
    total = sum(p["score"] for p in preds)
    out = {
        "split": split, "n": n, "score_python_metric": round(total / n, 4) if n else None,
        "predictions_lost": sum(1 for p in preds if "error" in p),
        "errors_by_type": dict(errors), "errors_by_stage": dict(stages),
        "lm_calls": sum(p["lm_calls"] for p in preds),
        "prompt_tokens": sum(p["prompt_tokens"] for p in preds),
        "completion_tokens": sum(p["completion_tokens"] for p in preds),
        "replies_at_max_tokens": sum(p["replies_at_max_tokens"] for p in preds),
        "wall_s": round(time.perf_counter() - t0, 2),
    }
    if spec.prog.name == "support-reply":
        by = {}
        for b in ("routine", "urgent", "escalating"):
            ps = [p for p in preds if p.get("branch") == b]
            if ps:
                by[b] = {"n": len(ps), "score_python_metric": round(sum(p["score"] for p in ps) / len(ps), 4),
                         "predictions_lost": sum(1 for p in ps if "error" in p)}
        out["by_branch"] = by
    out["predictions"] = preds
    return out


def write_jsonl(path: Path, ev: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for p in ev["predictions"]:
            if "error" in p:
                e = p["error"]
                why = f"{e['type']}" + (f" in stage {e['stage']}" if e.get("stage") else "") + f": {e['message'][:300]}"
                line = {"id": p["id"], "error": why}
                if e["type"] == "AdapterParseError":
                    # The reply was there but did not parse: promptloop counts it as a format error.
                    line["format_error"] = True
            else:
                line = {"id": p["id"], "outputs": p["outputs"]}
            f.write(json.dumps(line, ensure_ascii=False) + "\n")


def versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for pkg in ("dspy", "gepa", "litellm", "pydantic"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def compile_program(spec: Spec, program: dspy.Module, metric_calls: Counter) -> tuple[dspy.Module, dict, dict]:
    cfg = spec.prog.config["optimizer"]
    metric = spec.dspy_metric(metric_calls)
    train = [spec.example(r) for r in spec.prog.train][:SMOKE.get("train")]
    dev = [spec.example(r) for r in spec.prog.dev][:SMOKE.get("dev")]
    if spec.prog.name == "support-reply":
        args = dict(max_bootstrapped_demos=cfg["max_bootstrapped_demos"], max_labeled_demos=cfg["max_labeled_demos"],
                    max_rounds=cfg["max_rounds"], num_candidate_programs=cfg["num_candidates"],
                    metric_threshold=cfg["metric_threshold"], num_threads=1, max_errors=BIG)
        opt = dspy.BootstrapFewShotWithRandomSearch(metric=metric, **args)
        compiled = opt.compile(program, trainset=train, valset=dev)
        info = {"optimizer": "dspy.BootstrapFewShotWithRandomSearch", "args": args,
                "compile": {"trainset": "train (id order)", "valset": "dev"},
                "candidates": [{"seed": c["seed"], "dev_score": c["score"],
                                "dev_subscores": c["subscores"], "program": describe(spec, c["program"])}
                               for c in compiled.candidate_programs]}
    else:
        args = dict(max_bootstrapped_demos=cfg["max_bootstrapped_demos"], max_labeled_demos=cfg["max_labeled_demos"],
                    max_rounds=cfg.get("max_rounds", 1), metric_threshold=cfg["metric_threshold"], max_errors=BIG)
        opt = dspy.BootstrapFewShot(metric=metric, **args)
        compiled = opt.compile(program, trainset=train)
        info = {"optimizer": "dspy.BootstrapFewShot", "args": args, "compile": {"trainset": "train (id order)"},
                "bootstrap_errors": opt.error_count,
                "traces_found": {k: len(v) for k, v in opt.name2traces.items()}}
    return compiled, info, args


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--program", choices=["meeting-actions", "support-reply"], required=True)
    ap.add_argument("--variant", choices=["uncompiled", "compiled"], required=True)
    ap.add_argument("--splits", default="test,dev")
    ap.add_argument("--limit", type=int, default=None, help="score only the first N examples of each split")
    ap.add_argument("--results-dir", default=None)
    ap.add_argument("--smoke-train", type=int, default=None, help="smoke tests: the optimizer sees the first N train")
    ap.add_argument("--smoke-dev", type=int, default=None, help="smoke tests: the optimizer sees the first N dev")
    args = ap.parse_args(argv)
    SMOKE.update(train=args.smoke_train, dev=args.smoke_dev)
    if args.results_dir:
        common.RESULTS = Path(args.results_dir)

    run_t0 = time.perf_counter()
    pipeline = resolve_pipeline(f"pipelines/{args.program}.toml")
    spec = Spec(load_program(pipeline))
    lm = make_lm(spec.max_tokens)
    parses = ParseCounter()
    dspy.configure(lm=lm, max_errors=BIG, callbacks=[parses])
    program = spec.program()
    metric_calls: Counter = Counter()
    name = f"dspy-{args.variant}"
    result: dict = {
        "method": name, "program": args.program, "variant": args.variant, "versions": versions(),
        "splits": {s: len(spec.prog.split(s)) for s in ("train", "dev", "test")},
        "params": {"lm": {"model": f"openai/{SERVER_MODEL}", "temperature": 0, "max_tokens": spec.max_tokens,
                          "max_tokens_via": "extra_body", "cache": False},
                   "adapter": "ChatAdapter (default; JSONAdapter fallback)",
                   "response_format_sent": "response_format" in lm.supported_params,
                   "num_threads": 1},
        "status": "started",
    }
    if args.smoke_train or args.smoke_dev or args.limit:
        result["smoke_test"] = {"train": args.smoke_train, "dev": args.smoke_dev, "limit": args.limit}
    if args.program == "support-reply":
        result["routing"] = "the example's meta.signal, passed as the module input `signal` (not an LM input)"

    def save() -> Path:
        result["lm_usage"] = lm._peers_meter.snapshot()
        result["adapter_parses_by_phase"] = parses.snapshot()
        result["metric_calls_by_phase"] = dict(metric_calls)
        result["run_wall_s"] = round(time.perf_counter() - run_t0, 2)
        return write_result(name, result, pipeline=pipeline, pipeline_name=spec.prog.name,
                            dataset_license=LICENSES[spec.prog.name])

    if args.variant == "compiled":
        set_phase("optimize")
        t0 = time.perf_counter()
        try:
            program, info, _ = compile_program(spec, program, metric_calls)
        except Exception:
            result["status"] = "failed during optimization"
            result["traceback"] = traceback.format_exc()[-4000:]
            print(f"-> {save()}", flush=True)
            raise
        result["optimization"] = info
        result["optimize_wall_s"] = round(time.perf_counter() - t0, 2)
        result["optimize_lm_usage"] = lm._peers_meter.snapshot()["by_phase"].get("optimize", {})
        print(f"optimize: {result['optimize_wall_s']} s, LM {result['optimize_lm_usage']}", flush=True)
        program.save(str(PROGRESS_DIR / f"{spec.prog.name}-{name}-program.json"))
    result["program_state"] = describe(spec, program)
    result["status"] = "optimized" if args.variant == "compiled" else "ready"
    save()

    for split in args.splits.split(","):
        set_phase(f"eval-{split}")
        ev = evaluate(spec, program, lm, split, args.limit)
        result[split] = ev
        jsonl = common.RESULTS / f"{spec.prog.name}-peers-{name}-{split}.jsonl"
        write_jsonl(jsonl, ev)
        result[split]["predictions_file"] = str(jsonl.relative_to(REPO)) if jsonl.is_relative_to(REPO) else str(jsonl)
        result["status"] = f"scored {split}"
        print(f"{split}: python metric {ev['score_python_metric']} (n={ev['n']}), lost {ev['predictions_lost']} "
              f"{ev['errors_by_type']}, calls {ev['lm_calls']}, {ev['wall_s']} s", flush=True)
        save()
    result["status"] = "done"
    print(f"-> {save()}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
