"""DSPy baseline: BootstrapFewShot on the support-triage pipeline, scored on the test split.

The program is a dspy.Predict over a signature with the pipeline's instructions, input
`message: str` and output `queue: Literal[<the seven queues>]`, on the default ChatAdapter
(which falls back to the JSONAdapter when a reply does not parse). The LM is the llama.cpp
server at PEERS_BASE_URL (default http://127.0.0.1:8081/v1), temperature 0, 64 new tokens.

Reports for the zero-shot (uncompiled) and the compiled program: test accuracy, LM calls,
wall time of compile and of eval, and predictions lost to errors (parse failures or other
exceptions, each scored 0).

The support-triage data is built from Banking77 (PolyAI, CC-BY-4.0).

Usage: LITELLM_LOCAL_MODEL_COST_MAP=True python bench/peers/dspy_bootstrap.py [zeroshot] [bootstrap]
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import sys
import time
from collections import Counter
from typing import Literal

import dspy

from common import SERVER_BASE, SERVER_MODEL, Task, load_task, write_result

BIG = 10**9
MAX_TOKENS = 64


def make_lm() -> dspy.LM:
    # The llama.cpp server ignores max_completion_tokens, so the limit goes in extra_body.
    return dspy.LM(
        f"openai/{SERVER_MODEL}",
        api_base=SERVER_BASE,
        api_key="none",
        temperature=0,
        extra_body={"max_tokens": MAX_TOKENS},
        cache=False,
    )


def make_signature(task: Task) -> type[dspy.Signature]:
    queue_type = Literal[task.queues]  # type: ignore[valid-type]
    return dspy.Signature(
        {
            task.input_field: (str, dspy.InputField(desc=task.input_description)),
            task.output_field: (queue_type, dspy.OutputField(desc=task.output_description)),
        },
        task.instructions,
    )


def to_examples(task: Task, part) -> list[dspy.Example]:
    return [
        dspy.Example(**{task.input_field: e.message, task.output_field: e.queue}, id=e.id).with_inputs(task.input_field)
        for e in part
    ]


class Recording(dspy.Module):
    """Passes calls to the wrapped program, recording the type of each exception it raises."""

    def __init__(self, program: dspy.Module):
        super().__init__()
        self.program = program
        self.exceptions: Counter[str] = Counter()

    def forward(self, **kwargs):
        try:
            return self.program(**kwargs)
        except Exception as e:  # recorded, then handed to Evaluate, which scores it 0
            self.exceptions[type(e).__name__] += 1
            raise


def evaluate(task: Task, program: dspy.Module, lm: dspy.LM, testset: list[dspy.Example]) -> dict:
    field = task.output_field

    def metric(example, pred, trace=None):
        return float(getattr(pred, field, None) == getattr(example, field))

    wrapped = Recording(program)
    calls_before = len(lm.history)
    t0 = time.perf_counter()
    result = dspy.Evaluate(
        devset=testset, metric=metric, num_threads=1, max_errors=BIG, display_progress=False,
        display_table=False, provide_traceback=False,
    )(wrapped)
    wall = time.perf_counter() - t0
    calls = len(lm.history) - calls_before

    correct = 0
    lost = 0
    predictions = []
    counts: Counter[str] = Counter()
    for example, pred, score in result.results:
        value = pred.get(field) if hasattr(pred, "get") else getattr(pred, field, None)
        if value is None:
            lost += 1
        correct += int(score == 1.0)
        counts[str(value) if value is not None else "(none)"] += 1
        predictions.append({"id": example.id, "gold": getattr(example, field), "pred": value})
    n = len(testset)
    return {
        "split": "test",
        "n": n,
        "correct": correct,
        "accuracy": correct / n,
        "eval_lm_calls": calls,
        "eval_wall_s": round(wall, 2),
        "format_errors": lost,
        "exceptions_by_type": dict(wrapped.exceptions),
        "prediction_counts": dict(counts),
        "predictions": predictions,
    }


def usage_totals(history: list[dict]) -> dict:
    p = c = 0
    for h in history:
        u = h.get("usage") or {}
        p += u.get("prompt_tokens", 0) or 0
        c += u.get("completion_tokens", 0) or 0
    return {"prompt_tokens": p, "completion_tokens": c}


def run_zeroshot(task: Task) -> dict:
    lm = make_lm()
    dspy.configure(lm=lm, max_errors=BIG)
    program = dspy.Predict(make_signature(task))
    ev = evaluate(task, program, lm, to_examples(task, task.test))
    return {
        "method": "dspy-zeroshot",
        "description": "dspy.Predict (ChatAdapter), uncompiled",
        "dspy_version": dspy.__version__,
        "compile_lm_calls": 0,
        "compile_wall_s": 0.0,
        "lm_calls": ev["eval_lm_calls"],
        **usage_totals(lm.history),
        **ev,
        "params": {"temperature": 0, "max_tokens": MAX_TOKENS, "cache": False},
    }


def run_bootstrap(task: Task) -> dict:
    lm = make_lm()
    dspy.configure(lm=lm, max_errors=BIG)
    student = dspy.Predict(make_signature(task))
    field = task.output_field

    def metric(example, pred, trace=None):
        return getattr(pred, field, None) == getattr(example, field)

    optimizer = dspy.BootstrapFewShot(
        metric=metric, max_bootstrapped_demos=4, max_labeled_demos=4, max_rounds=1, max_errors=BIG,
    )
    trainset = to_examples(task, task.train)
    t0 = time.perf_counter()
    compiled = optimizer.compile(student, trainset=trainset)
    compile_wall = time.perf_counter() - t0
    compile_calls = len(lm.history)
    compile_usage = usage_totals(lm.history)

    id_of = {e.message: e.id for e in task.train}
    demos = []
    for d in compiled.demos:
        demos.append({
            "id": d.get("id") or id_of.get(d.get(task.input_field)),
            field: d.get(field),
            task.input_field: d.get(task.input_field),
            "augmented": bool(d.get("augmented", False)),
        })
    compiled.save("/tmp/peers/dspy-bootstrap-program.json")

    ev = evaluate(task, compiled, lm, to_examples(task, task.test))
    return {
        "method": "dspy-bootstrap",
        "description": "dspy.BootstrapFewShot(max_bootstrapped_demos=4, max_labeled_demos=4, max_rounds=1) "
                       "on train (id order), dspy.Predict (ChatAdapter)",
        "dspy_version": dspy.__version__,
        "compile_lm_calls": compile_calls,
        "compile_wall_s": round(compile_wall, 2),
        "compile_tokens": compile_usage,
        "compile_errors": optimizer.error_count,
        "demos": demos,
        "lm_calls": compile_calls + ev["eval_lm_calls"],
        **usage_totals(lm.history),
        **ev,
        "params": {"temperature": 0, "max_tokens": MAX_TOKENS, "cache": False,
                   "max_bootstrapped_demos": 4, "max_labeled_demos": 4, "max_rounds": 1},
    }


def main(argv: list[str]) -> None:
    task = load_task()
    which = argv or ["zeroshot", "bootstrap"]
    for w in which:
        res = {"zeroshot": run_zeroshot, "bootstrap": run_bootstrap}[w](task)
        path = write_result(res["method"], res)
        print(f"{res['method']}: accuracy={res['accuracy']:.3f} ({res['correct']}/{res['n']}) "
              f"calls={res['lm_calls']} (compile {res['compile_lm_calls']}, eval {res['eval_lm_calls']}) "
              f"compile={res['compile_wall_s']}s eval={res['eval_wall_s']}s format_errors={res['format_errors']} "
              f"exceptions={res['exceptions_by_type']} -> {path}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
