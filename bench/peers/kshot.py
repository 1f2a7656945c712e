"""Hand-written k-shot chat prompts against an OpenAI-compatible server (standard library only).

Variants, all at temperature 0 with max_tokens 16, scored on the whole test split:
  kshot7            system = the signature's instructions, 7 demos (the first train example
                    of each queue, in id order) as user/assistant turns, the assistant answering
                    just the queue name; the reply counts when its stripped text equals a queue
                    name (case-insensitive), anything else is a format error.
  kshot7-json       the same demos answered as {"queue": "..."}, with the server constraining the
                    reply to a JSON Schema whose "queue" is an enum of the seven queues.
  zeroshot-json     the constrained variant without demos.
  zeroshot          the unconstrained variant without demos.

"7" is the number of labels: one demo per label, whatever the pipeline.

The support-triage data is built from Banking77 (PolyAI, CC-BY-4.0), and so is the
small-data task's (bench/small-data/): Casanueva et al., "Efficient Intent Detection with
Dual Sentence Encoders", NLP4ConvAI @ ACL 2020, arXiv:2003.04807.

Usage: python bench/peers/kshot.py [--pipeline PATH] [variant ...]
  --pipeline PATH   the pipeline whose signature, dataset and splits to use (default
                    pipelines/support-triage.toml, results bench/results/peers-<variant>.json);
                    another pipeline's results go to bench/results/<name>-peers-<variant>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request

from common import (PIPELINE, SERVER_BASE, SERVER_MODEL, Example, Task, load_task, resolve_pipeline,
                    write_result)

MAX_TOKENS = 16
TIMEOUT_S = 300


class Client:
    def __init__(self, base: str, model: str):
        self.url = base.rstrip("/") + "/chat/completions"
        self.model = model
        self.calls = 0
        self.errors = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def chat(self, messages: list[dict], response_format: dict | None) -> str:
        body = {
            "model": self.model,
            "messages": messages,
            "temperature": 0.0,
            "max_tokens": MAX_TOKENS,
        }
        if response_format is not None:
            body["response_format"] = response_format
        req = urllib.request.Request(
            self.url,
            data=json.dumps(body).encode("utf-8"),
            headers={"Content-Type": "application/json", "Authorization": "Bearer none"},
        )
        self.calls += 1
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            doc = json.load(resp)
        usage = doc.get("usage") or {}
        self.prompt_tokens += usage.get("prompt_tokens", 0) or 0
        self.completion_tokens += usage.get("completion_tokens", 0) or 0
        return doc["choices"][0]["message"].get("content") or ""


def pick_demos(task: Task) -> list[Example]:
    """The first train example of each queue, the train split being in id order."""
    first: dict[str, Example] = {}
    for ex in task.train:  # already sorted by id
        first.setdefault(ex.queue, ex)
    missing = [q for q in task.queues if q not in first]
    if missing:
        raise SystemExit(f"no train example for queues {missing}")
    return sorted(first.values(), key=lambda e: e.id)


def schema(task: Task) -> dict:
    return {
        "type": "json_object",
        "schema": {
            "type": "object",
            "properties": {task.output_field: {"type": "string", "enum": list(task.queues)}},
            "required": [task.output_field],
        },
    }


def build_messages(task: Task, demos: list[Example], message: str, as_json: bool) -> list[dict]:
    msgs = [{"role": "system", "content": task.instructions}]
    for d in demos:
        answer = json.dumps({task.output_field: d.queue}) if as_json else d.queue
        msgs.append({"role": "user", "content": d.message})
        msgs.append({"role": "assistant", "content": answer})
    msgs.append({"role": "user", "content": message})
    return msgs


def parse_plain(task: Task, reply: str) -> str | None:
    lowered = {q.lower(): q for q in task.queues}
    return lowered.get(reply.strip().lower())


def parse_json(task: Task, reply: str) -> str | None:
    try:
        doc = json.loads(reply)
    except json.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    value = doc.get(task.output_field)
    return value if value in task.queues else None


VARIANTS = {
    # name: (use demos, constrained JSON)
    "kshot7": (True, False),
    "kshot7-json": (True, True),
    "zeroshot-json": (False, True),
    "zeroshot": (False, False),
}


def run(task: Task, variant: str) -> dict:
    use_demos, as_json = VARIANTS[variant]
    demos = pick_demos(task) if use_demos else []
    client = Client(SERVER_BASE, SERVER_MODEL)
    fmt = schema(task) if as_json else None
    parse = parse_json if as_json else parse_plain

    correct = format_errors = exceptions = 0
    predictions = []
    t0 = time.perf_counter()
    for i, ex in enumerate(task.test):
        try:
            reply = client.chat(build_messages(task, demos, ex.message, as_json), fmt)
        except (urllib.error.URLError, TimeoutError, KeyError, ValueError) as e:
            exceptions += 1
            predictions.append({"id": ex.id, "gold": ex.queue, "reply": None, "error": repr(e)})
            continue
        pred = parse(task, reply)
        if pred is None:
            format_errors += 1
        elif pred == ex.queue:
            correct += 1
        predictions.append({"id": ex.id, "gold": ex.queue, "pred": pred, "reply": reply})
        if (i + 1) % 20 == 0:
            print(f"  {variant}: {i + 1}/{len(task.test)} correct={correct} format_errors={format_errors}",
                  file=sys.stderr, flush=True)
    wall = time.perf_counter() - t0

    n = len(task.test)
    pred_counts: dict[str, int] = {}
    for p in predictions:
        key = p.get("pred") or "(none)"
        pred_counts[key] = pred_counts.get(key, 0) + 1
    return {
        "method": variant,
        "description": {
            "kshot7": "hand-written 7-shot chat prompt, plain-text reply, exact-match parse",
            "kshot7-json": "hand-written 7-shot chat prompt, JSON Schema-constrained reply",
            "zeroshot-json": "zero-shot chat prompt, JSON Schema-constrained reply",
            "zeroshot": "zero-shot chat prompt, plain-text reply, exact-match parse",
        }[variant],
        "demos": [d.id for d in demos],
        "split": "test",
        "n": n,
        "correct": correct,
        "accuracy": correct / n,
        "lm_calls": client.calls,
        "prompt_tokens": client.prompt_tokens,
        "completion_tokens": client.completion_tokens,
        "format_errors": format_errors,
        "exceptions": exceptions,
        "eval_wall_s": round(wall, 2),
        "compile_wall_s": 0.0,
        "params": {"temperature": 0.0, "max_tokens": MAX_TOKENS,
                   "response_format": fmt},
        "prediction_counts": pred_counts,
        "predictions": predictions,
    }


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description="Hand-written k-shot chat prompts against an OpenAI-compatible server.")
    ap.add_argument("--pipeline", default=str(PIPELINE.relative_to(PIPELINE.parents[1])),
                    help="pipeline TOML (default: pipelines/support-triage.toml)")
    ap.add_argument("variants", nargs="*", metavar="variant")
    args = ap.parse_args(argv)
    pipeline = resolve_pipeline(args.pipeline)
    task = load_task(pipeline)
    variants = args.variants or ["kshot7", "kshot7-json", "zeroshot-json", "zeroshot"]
    for v in variants:
        if v not in VARIANTS:
            raise SystemExit(f"unknown variant {v}; known: {', '.join(VARIANTS)}")
    for v in variants:
        res = run(task, v)
        path = write_result(v, res, pipeline=pipeline, pipeline_name=task.name)
        print(f"{v}: accuracy={res['accuracy']:.3f} ({res['correct']}/{res['n']}) calls={res['lm_calls']} "
              f"format_errors={res['format_errors']} exceptions={res['exceptions']} "
              f"wall={res['eval_wall_s']}s -> {path}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
