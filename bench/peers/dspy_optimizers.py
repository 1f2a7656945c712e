"""DSPy's MIPROv2 and GEPA on a pipeline (e.g. the small-data task queues7), scored on its test split.

The program is the one dspy_bootstrap.py builds: one dspy.Predict over a signature with the
pipeline's instructions, input `message: str` and output `queue: Literal[<the labels>]`, on
the default ChatAdapter (which falls back to the JSONAdapter when a reply does not parse).

Two LMs on the same OpenAI-compatible server (PEERS_BASE_URL) and model (PEERS_MODEL):
- the task LM: temperature 0, 64 new tokens (in extra_body: see PEERS.md), no cache;
- the proposer / reflection LM: temperature 1.0, 512 new tokens, no cache; MIPROv2 gets it as
  `prompt_model=`, GEPA as `reflection_lm=`.

Optimizers:
- mipro: dspy.MIPROv2(metric, auto="light", prompt_model, task_model, seed=7, num_threads=1)
  .compile(program, trainset=train, valset=dev, seed=7). `--auto none --num-trials N
  --num-candidates N` runs a smaller search (smoke tests). One guard (guard_mipro_proposer):
  a proposed instruction whose reply does not parse is replaced by the original instructions
  (after --proposer-attempts tries, default 1) instead of ending the whole compile.
- gepa: dspy.GEPA(metric, reflection_lm, max_metric_calls=N | auto="light", seed=7,
  num_threads=1, track_stats=True).compile(program, trainset=train, valset=dev); the metric
  returns dspy.Prediction(score, feedback="expected `x`, got `y`").
  `--format-failure-feedback` sets GEPA's add_format_failure_as_feedback=True (default False).

Recorded (bench/results/<pipeline>-peers-dspy-<optimizer>.json through common.write_result):
test and dev accuracy of the uncompiled and the compiled program (every test prediction), LM
calls and prompt/completion tokens per LM (task vs proposer) and per phase, task-predictor
calls and the exceptions they raised (parse failures) during the optimization, metric calls
during the optimization (counted by a wrapper; GEPA's own count too), wall times, the final
instructions and demos, what the optimizer tried (MIPROv2's evaluated candidates, GEPA's
candidates with their dev scores), versions and the server. The result file is rewritten after
each phase (status says how far it got); a SIGTERM or Ctrl-C during the optimization stops it
and still writes what was measured. While running, /tmp/peers/progress-<optimizer>.json has
the counters every 30 s.

LM calls are counted by a dspy.LM subclass whose history hook adds each recorded call (usage
as the server reports it) to a meter shared with the LM's copies (DSPy's optimizers call
copies of the LMs they are given, whose histories are not the original's).

The data of the queues7 and support-triage tasks is built from Banking77 (PolyAI, CC-BY-4.0):
Casanueva et al., "Efficient Intent Detection with Dual Sentence Encoders", NLP4ConvAI @ ACL
2020, arXiv:2003.04807.

Usage:
  LITELLM_LOCAL_MODEL_COST_MAP=True PEERS_BASE_URL=http://127.0.0.1:PORT/v1 \\
    python bench/peers/dspy_optimizers.py --optimizer mipro|gepa \\
      --pipeline bench/small-data/pipelines/queues7.toml [--max-metric-calls 400] [...]
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import argparse
import json
import platform
import signal
import sys
import threading
import time
from collections import Counter
from importlib import metadata
from pathlib import Path

import dspy
from dspy.utils.callback import BaseCallback

import common
from common import PIPELINE, SERVER_BASE, SERVER_MODEL, Task, load_task, resolve_pipeline, write_result
from dspy_bootstrap import BIG, Recording, make_signature, to_examples

TASK_MAX_TOKENS = 64
PROPOSER_MAX_TOKENS = 512
PROPOSER_TEMPERATURE = 1.0
SEED = 7
PROGRESS_DIR = Path("/tmp/peers")


# ---------------------------------------------------------------- metering

class Meter:
    """LM calls and tokens, per phase; shared by an LM and all its copies."""

    def __init__(self, role: str):
        self.role = role
        self.lock = threading.Lock()
        self.by_phase: dict[str, Counter] = {}

    def record(self, phase: str, usage: dict, max_tokens: int) -> None:
        usage = usage or {}
        completion = int(usage.get("completion_tokens", 0) or 0)
        with self.lock:
            c = self.by_phase.setdefault(phase, Counter())
            c["calls"] += 1
            c["prompt_tokens"] += int(usage.get("prompt_tokens", 0) or 0)
            c["completion_tokens"] += completion
            if completion >= max_tokens:
                c["replies_at_max_tokens"] += 1

    def snapshot(self) -> dict:
        with self.lock:
            phases = {p: dict(c) for p, c in self.by_phase.items()}
        total = Counter()
        for c in phases.values():
            total.update(c)
        return {"total": dict(total), "by_phase": phases}


PHASE = {"name": "setup"}


def set_phase(name: str) -> None:
    PHASE["name"] = name


class MeteredLM(dspy.LM):
    """A dspy.LM that adds every call it records to a Meter (copies share the meter)."""

    def update_history(self, entry):
        meter = getattr(self, "_peers_meter", None)
        if meter is not None:
            meter.record(PHASE["name"], entry.get("usage") or {}, getattr(self, "_peers_max_tokens", 0))
        super().update_history(entry)


def make_lm(role: str, temperature: float, max_tokens: int) -> MeteredLM:
    # The server may ignore max_completion_tokens (which litellm sends for openai/ models),
    # so the limit goes in extra_body, as in dspy_bootstrap.py.
    lm = MeteredLM(
        f"openai/{SERVER_MODEL}",
        api_base=SERVER_BASE,
        api_key="none",
        temperature=temperature,
        extra_body={"max_tokens": max_tokens},
        cache=False,
    )
    lm._peers_meter = Meter(role)
    lm._peers_max_tokens = max_tokens
    return lm


class Counters(BaseCallback):
    """Counts task-predictor calls (by phase) and the exceptions they raise, and LM exceptions."""

    def __init__(self, output_field: str):
        self.output_field = output_field
        self.lock = threading.Lock()
        self.open: dict[str, str] = {}
        self.predict: dict[str, Counter] = {}
        self.lm_exceptions: Counter = Counter()

    def on_module_start(self, call_id, instance, inputs):
        sig = getattr(instance, "signature", None)
        if isinstance(instance, dspy.Predict) and sig is not None and self.output_field in sig.output_fields:
            with self.lock:
                self.open[call_id] = PHASE["name"]

    def on_module_end(self, call_id, outputs, exception=None):
        with self.lock:
            phase = self.open.pop(call_id, None)
            if phase is None:
                return
            c = self.predict.setdefault(phase, Counter())
            c["calls"] += 1
            if exception is not None:
                c[f"exception:{type(exception).__name__}"] += 1

    def on_lm_end(self, call_id, outputs, exception=None):
        if exception is not None:
            with self.lock:
                self.lm_exceptions[type(exception).__name__] += 1

    def snapshot(self) -> dict:
        with self.lock:
            return {"task_predictor_by_phase": {p: dict(c) for p, c in self.predict.items()},
                    "lm_exceptions": dict(self.lm_exceptions)}


class MetricCounter:
    """Wraps a metric and counts its calls by phase."""

    def __init__(self, fn):
        self.fn = fn
        self.lock = threading.Lock()
        self.calls: Counter = Counter()
        # GEPA checks the metric's arity by binding five arguments.
        self.__signature__ = __import__("inspect").signature(fn)

    def __call__(self, *args, **kwargs):
        with self.lock:
            self.calls[PHASE["name"]] += 1
        return self.fn(*args, **kwargs)


# ---------------------------------------------------------------- evaluation

def evaluate(task: Task, program: dspy.Module, examples: list[dspy.Example], split: str,
             keep_predictions: bool) -> dict:
    field = task.output_field

    def metric(example, pred, trace=None):
        return float(getattr(pred, field, None) == getattr(example, field))

    wrapped = Recording(program)
    t0 = time.perf_counter()
    result = dspy.Evaluate(
        devset=examples, metric=metric, num_threads=1, max_errors=BIG, display_progress=False,
        display_table=False, provide_traceback=False,
    )(wrapped)
    wall = time.perf_counter() - t0
    correct = lost = 0
    counts: Counter = Counter()
    predictions = []
    for example, pred, score in result.results:
        value = pred.get(field) if hasattr(pred, "get") else getattr(pred, field, None)
        if value is None:
            lost += 1
        correct += int(score == 1.0)
        counts[str(value) if value is not None else "(none)"] += 1
        predictions.append({"id": example.id, "gold": getattr(example, field), "pred": value})
    n = len(examples)
    out = {
        "split": split,
        "n": n,
        "correct": correct,
        "accuracy": correct / n if n else None,
        "wall_s": round(wall, 2),
        "format_errors": lost,
        "exceptions_by_type": dict(wrapped.exceptions),
        "prediction_counts": dict(counts),
    }
    if keep_predictions:
        out["predictions"] = predictions
    return out


def describe_program(task: Task, program: dspy.Module) -> list[dict]:
    id_of = {e.message: e.id for e in (*task.train, *task.dev, *task.test)}
    preds = []
    for name, pred in program.named_predictors():
        demos = []
        for d in pred.demos:
            msg = d.get(task.input_field)
            demos.append({
                "id": d.get("id") or id_of.get(msg),
                task.output_field: d.get(task.output_field),
                task.input_field: msg,
                "augmented": bool(d.get("augmented", False)),
            })
        preds.append({"name": name, "instructions": pred.signature.instructions, "demos": demos})
    return preds


# ---------------------------------------------------------------- optimizers

def exact_metric(field: str):
    def metric(example, pred, trace=None):
        return float(getattr(pred, field, None) == getattr(example, field))
    return metric


def feedback_metric(field: str):
    def metric(gold, pred, trace=None, pred_name=None, pred_trace=None):
        expected = getattr(gold, field)
        got = getattr(pred, field, None) if pred is not None else None
        score = float(got == expected)
        if score == 1.0:
            feedback = f"correct: expected `{expected}`, got `{got}`"
        elif got is None:
            feedback = f"expected `{expected}`, got no answer that parses as one of the labels"
        else:
            feedback = f"expected `{expected}`, got `{got}`"
        return dspy.Prediction(score=score, feedback=feedback)
    return metric


def guard_mipro_proposer(task: Task, attempts: int) -> dict:
    """Keeps MIPROv2 running when the proposer's reply does not parse.

    dspy 3.4.1's GroundedProposer lets an AdapterParseError from the instruction generator
    escape, which ends MIPROv2.compile (seen with the 135M model as proposer: a reply of
    unrelated prose with no `proposed_instruction` field). This makes up to `attempts` tries
    (--proposer-attempts, default 1: no retry; each retry is a fresh sample at temperature 1.0
    with a new rollout id), then uses the predictor's current instructions for that candidate,
    as DSPy itself carries on without its dataset summary when that fails. Every attempt is
    recorded.
    """
    from dspy.propose import grounded_proposer as gp
    from dspy.teleprompt.utils import get_signature
    from dspy.utils.exceptions import AdapterParseError

    log: dict = {"dataset_summary": None, "dataset_summary_error": None, "proposals": [],
                 "parse_failures": 0, "fell_back_to_original": 0}
    orig_propose = gp.GroundedProposer.propose_instruction_for_predictor
    orig_summary = gp.create_dataset_summary

    def summary(*a, **kw):
        try:
            out = orig_summary(*a, **kw)
            log["dataset_summary"] = out
            return out
        except Exception as e:  # DSPy catches it too ("Running without data aware proposer")
            log["dataset_summary_error"] = f"{type(e).__name__}: {str(e)[:500]}"
            raise

    def propose(self, program, predictor, pred_i, demo_candidates, demo_set_i, trial_logs, tip=None):
        errors = []
        for _ in range(attempts):
            try:
                out = orig_propose(self, program, predictor, pred_i, demo_candidates, demo_set_i, trial_logs, tip)
                log["proposals"].append({"demo_set": demo_set_i, "tip": tip, "instruction": out,
                                         "failed_attempts": errors})
                return out
            except AdapterParseError as e:
                log["parse_failures"] += 1
                errors.append(str(e)[:300])
        log["fell_back_to_original"] += 1
        out = get_signature(predictor).instructions
        log["proposals"].append({"demo_set": demo_set_i, "tip": tip, "instruction": None,
                                 "fell_back_to_original": True, "failed_attempts": errors})
        return out

    gp.GroundedProposer.propose_instruction_for_predictor = propose
    gp.create_dataset_summary = summary
    return log


def run_mipro(args, task, program, train, dev, task_lm, proposer_lm, state) -> tuple[dspy.Module, dict]:
    state["proposer_log"] = guard_mipro_proposer(task, args.proposer_attempts)
    metric = MetricCounter(exact_metric(task.output_field))
    state["metric"] = metric
    if args.auto == "none":
        kwargs = dict(auto=None, num_candidates=args.num_candidates)
        compile_extra = dict(num_trials=args.num_trials, minibatch=len(dev) > 35)
    else:
        kwargs = dict(auto=args.auto)
        compile_extra = {}
    optimizer = dspy.MIPROv2(
        metric=metric, prompt_model=proposer_lm, task_model=task_lm, seed=SEED, num_threads=1,
        max_errors=BIG, **kwargs,
    )
    state["optimizer_args"] = {
        "constructor": {"auto": kwargs.get("auto"), "num_candidates": kwargs.get("num_candidates"),
                        "seed": SEED, "num_threads": 1, "max_errors": BIG,
                        "max_bootstrapped_demos": 4, "max_labeled_demos": 4},
        "compile": {"trainset": "train", "valset": "dev", "seed": SEED, **compile_extra},
        "note": "requires_permission_to_run is deprecated in dspy 3.4.1 (False only logs a warning); not passed",
        "proposer_attempts": args.proposer_attempts,
    }
    compiled = optimizer.compile(program, trainset=train, valset=dev, seed=SEED, **compile_extra)

    info: dict = {"dev_score_reported": getattr(compiled, "score", None)}
    info["proposer"] = state["proposer_log"]
    cands = []
    for c in getattr(compiled, "candidate_programs", []) or []:
        cands.append({"dev_score": c["score"], "program": describe_program(task, c["program"])})
    info["full_eval_candidates"] = cands
    mbs = getattr(compiled, "mb_candidate_programs", []) or []
    info["minibatch_candidates"] = len(mbs)
    logs = getattr(compiled, "trial_logs", {}) or {}
    trials = []
    for k in sorted(logs):
        t = logs[k]
        trials.append({kk: v for kk, v in t.items() if not kk.endswith("_program") and not kk.endswith("_path")}
                      | {"trial": k})
    info["trials"] = trials
    info["prompt_model_total_calls_reported"] = getattr(compiled, "prompt_model_total_calls", None)
    info["total_calls_reported"] = getattr(compiled, "total_calls", None)
    return compiled, info


def run_gepa(args, task, program, train, dev, task_lm, proposer_lm, state) -> tuple[dspy.Module, dict]:
    metric = MetricCounter(feedback_metric(task.output_field))
    state["metric"] = metric
    budget = dict(max_metric_calls=args.max_metric_calls) if args.max_metric_calls else dict(auto=args.auto)
    state["gepa_log_dir"] = str(PROGRESS_DIR / f"gepa-log-{os.getpid()}")
    optimizer = dspy.GEPA(
        metric=metric, reflection_lm=proposer_lm, seed=SEED, num_threads=1, track_stats=True,
        add_format_failure_as_feedback=args.format_failure_feedback,
        log_dir=state["gepa_log_dir"], **budget,
    )
    state["optimizer_args"] = {
        "constructor": {**budget, "seed": SEED, "num_threads": 1, "track_stats": True,
                        "reflection_minibatch_size": optimizer.reflection_minibatch_size,
                        "candidate_selection_strategy": optimizer.candidate_selection_strategy,
                        "use_merge": optimizer.use_merge,
                        "add_format_failure_as_feedback": args.format_failure_feedback,
                        "skip_perfect_score": optimizer.skip_perfect_score},
        "compile": {"trainset": "train", "valset": "dev"},
        "max_metric_calls_effective": None,
    }
    with dspy.context(lm=task_lm):
        compiled = optimizer.compile(program, trainset=train, valset=dev)
    state["optimizer_args"]["max_metric_calls_effective"] = optimizer.max_metric_calls

    info: dict = {}
    r = getattr(compiled, "detailed_results", None)
    if r is not None:
        info["dev_score_reported"] = r.val_aggregate_scores[r.best_idx]
        info["best_idx"] = r.best_idx
        info["total_metric_calls_reported"] = r.total_metric_calls
        info["num_full_val_evals"] = r.num_full_val_evals
        info["candidates"] = [
            {"idx": i, "dev_score": r.val_aggregate_scores[i], "parents": r.parents[i],
             "discovered_at_metric_calls": r.discovery_eval_counts[i],
             "instructions": {n: p.signature.instructions for n, p in c.named_predictors()}}
            for i, c in enumerate(r.candidates)
        ]
    return compiled, info


# ---------------------------------------------------------------- main

def versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("dspy", "gepa", "litellm", "optuna"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


class Stop(BaseException):
    """SIGTERM: a BaseException, so that no `except Exception` inside DSPy or GEPA swallows it."""


def gepa_best_so_far(task: Task, program: dspy.Module, log_dir: str) -> tuple[dspy.Module | None, dict]:
    """After a stopped GEPA run: the best candidate on dev so far, from GEPA's saved state."""
    from gepa.core.state import GEPAState

    if not os.path.exists(os.path.join(log_dir, "gepa_state.bin")):
        return None, {"best_so_far": None}
    st = GEPAState.load(log_dir)
    scores = st.program_full_scores_val_set
    best = max(range(len(scores)), key=lambda i: scores[i])
    compiled = program.deepcopy()
    for name, pred in compiled.named_predictors():
        pred.signature = pred.signature.with_instructions(st.program_candidates[best][name])
    return compiled, {
        "best_so_far_from_saved_state": True,
        "dev_score_reported": scores[best],
        "best_idx": best,
        "total_metric_calls_reported": st.total_num_evals,
        "iterations": st.i + 1,
        "candidates": [
            {"idx": i, "dev_score": scores[i], "dev_examples_scored": len(st.prog_candidate_val_subscores[i]),
             "parents": st.parent_program_for_candidate[i], "instructions": c}
            for i, c in enumerate(st.program_candidates)
        ],
    }


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description="DSPy MIPROv2 / GEPA against an OpenAI-compatible server.")
    ap.add_argument("--optimizer", choices=["mipro", "gepa"], required=True)
    ap.add_argument("--pipeline", default=str(PIPELINE.relative_to(PIPELINE.parents[1])),
                    help="pipeline TOML (default: pipelines/support-triage.toml)")
    ap.add_argument("--auto", default="light", choices=["light", "medium", "heavy", "none"],
                    help="MIPROv2's auto (none: give --num-trials and --num-candidates); GEPA's auto "
                         "when --max-metric-calls is not given")
    ap.add_argument("--num-trials", type=int, default=3, help="MIPROv2 with --auto none")
    ap.add_argument("--num-candidates", type=int, default=3, help="MIPROv2 with --auto none")
    ap.add_argument("--proposer-attempts", type=int, default=1,
                    help="MIPROv2: tries per proposed instruction before falling back to the original")
    ap.add_argument("--max-metric-calls", type=int, default=None, help="GEPA's budget (else --auto)")
    ap.add_argument("--format-failure-feedback", action="store_true",
                    help="GEPA: add_format_failure_as_feedback=True")
    ap.add_argument("--test-limit", type=int, default=None, help="score only the first N test examples")
    ap.add_argument("--skip-uncompiled", action="store_true", help="do not score the uncompiled program")
    ap.add_argument("--uncompiled-from", default=None,
                    help="copy the uncompiled program's scores from an earlier result file of this script")
    ap.add_argument("--results-dir", default=None, help="write the result here instead of bench/results/")
    ap.add_argument("--name", default=None, help="result name (default dspy-<optimizer>)")
    args = ap.parse_args(argv)

    run_t0 = time.perf_counter()
    if args.results_dir:
        common.RESULTS = Path(args.results_dir)
    pipeline = resolve_pipeline(args.pipeline)
    task = load_task(pipeline)
    name = args.name or f"dspy-{args.optimizer}"
    PROGRESS_DIR.mkdir(parents=True, exist_ok=True)
    progress_path = PROGRESS_DIR / f"progress-{name}.json"

    task_lm = make_lm("task", 0.0, TASK_MAX_TOKENS)
    proposer_lm = make_lm("proposer", PROPOSER_TEMPERATURE, PROPOSER_MAX_TOKENS)
    counters = Counters(task.output_field)
    dspy.configure(lm=task_lm, max_errors=BIG, callbacks=[counters])

    train = to_examples(task, task.train)
    dev = to_examples(task, task.dev)
    test = to_examples(task, task.test)
    if args.test_limit:
        test = test[: args.test_limit]
    program = dspy.Predict(make_signature(task))

    state: dict = {"status": "started", "metric": None}
    result: dict = {
        "method": name,
        "optimizer": args.optimizer,
        "description": "",
        "versions": versions(),
        "dspy_version": dspy.__version__,
        "argv": argv,
        "splits": {"train": len(train), "dev": len(dev), "test": len(test)},
        "params": {
            "task_lm": {"model": f"openai/{SERVER_MODEL}", "temperature": 0.0, "max_tokens": TASK_MAX_TOKENS,
                        "cache": False, "max_tokens_via": "extra_body"},
            "proposer_lm": {"model": f"openai/{SERVER_MODEL}", "temperature": PROPOSER_TEMPERATURE,
                            "max_tokens": PROPOSER_MAX_TOKENS, "cache": False, "max_tokens_via": "extra_body"},
            "adapter": "ChatAdapter (default; JSONAdapter fallback)",
            "num_threads": 1,
        },
    }
    if args.optimizer == "mipro":
        result["description"] = ("dspy.MIPROv2 (prompt_model = the proposer LM, task_model = the task LM) on train, "
                                 "valset = dev; dspy.Predict (ChatAdapter)")
    else:
        result["description"] = ("dspy.GEPA (reflection_lm = the proposer LM; metric with feedback "
                                 "'expected `x`, got `y`') on train, valset = dev; dspy.Predict (ChatAdapter)")

    def collect() -> dict:
        metric = state.get("metric")
        return {
            "lm": {"task": task_lm._peers_meter.snapshot(), "proposer": proposer_lm._peers_meter.snapshot()},
            "metric_calls_by_phase": dict(metric.calls) if metric else {},
            **counters.snapshot(),
        }

    def save() -> Path:
        c = collect()
        result["status"] = state["status"]
        result["lm_usage"] = c["lm"]
        result["metric_calls_by_phase"] = c["metric_calls_by_phase"]
        result["metric_calls_optimization"] = c["metric_calls_by_phase"].get("optimize", 0)
        result["task_predictor_calls_by_phase"] = c["task_predictor_by_phase"]
        result["lm_exceptions"] = c["lm_exceptions"]
        result["run_wall_s"] = round(time.perf_counter() - run_t0, 2)
        return write_result(name, result, pipeline=pipeline, pipeline_name=task.name)

    stop_flag = threading.Event()

    def progress_loop():
        while not stop_flag.wait(30):
            try:
                progress_path.write_text(json.dumps({
                    "phase": PHASE["name"], "elapsed_s": round(time.perf_counter() - run_t0, 1),
                    **collect()}, indent=1) + "\n")
            except Exception:
                pass

    threading.Thread(target=progress_loop, daemon=True).start()

    def on_signal(signum, frame):
        raise Stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)

    # 1. Optimize.
    set_phase("optimize")
    t0 = time.perf_counter()
    compiled = None
    try:
        runner = run_mipro if args.optimizer == "mipro" else run_gepa
        compiled, info = runner(args, task, program, train, dev, task_lm, proposer_lm, state)
        result["optimization"] = info
        state["status"] = "optimized"
    except (Stop, KeyboardInterrupt) as e:
        state["status"] = f"stopped during optimization ({type(e).__name__} {e})"
        result["optimization"] = {"stopped": True, "proposer": state.get("proposer_log")}
        if args.optimizer == "gepa" and state.get("gepa_log_dir"):
            compiled, info = gepa_best_so_far(task, program, state["gepa_log_dir"])
            result["optimization"].update(info)
            if compiled is not None:
                state["status"] += "; scoring GEPA's best candidate so far"
    except Exception as e:
        import traceback
        state["status"] = f"failed during optimization ({type(e).__name__}: {str(e)[:300]})"
        result["optimization"] = {"failed": True, "proposer": state.get("proposer_log"),
                                  "traceback": traceback.format_exc()[-4000:]}
        result["optimizer_args"] = state.get("optimizer_args")
        result["optimize_wall_s"] = round(time.perf_counter() - t0, 2)
        stop_flag.set()
        print(f"-> {save()}", flush=True)
        raise
    result["optimizer_args"] = state.get("optimizer_args")
    result["optimize_wall_s"] = round(time.perf_counter() - t0, 2)
    opt_usage = collect()["lm"]
    result["optimize_lm_usage"] = {role: u["by_phase"].get("optimize", {}) for role, u in opt_usage.items()}
    print(f"optimize: {state['status']} in {result['optimize_wall_s']} s; "
          f"metric calls {result.get('metric_calls_optimization', collect()['metric_calls_by_phase'].get('optimize', 0))}; "
          f"LM {result['optimize_lm_usage']}", flush=True)
    save()

    try:
        # 2. The uncompiled program's scores from an earlier run, if asked (the same program,
        #    server and greedy decoding: no need to score it again).
        if args.uncompiled_from:
            prev = json.loads(Path(args.uncompiled_from).read_text())
            for k in ("uncompiled_test", "uncompiled_dev"):
                if k in prev:
                    result[k] = {**prev[k], "copied_from": str(args.uncompiled_from)}

        # 3. Score the compiled program: dev, then test. A compiled program identical to the
        #    uncompiled one (same instructions, no demos) takes the uncompiled scores when known.
        if compiled is not None:
            compiled.save(str(PROGRESS_DIR / f"{task.name}-{name}-program.json"))
            result["compiled_program"] = describe_program(task, compiled)
            same = result["compiled_program"] == describe_program(task, program)
            result["compiled_identical_to_uncompiled"] = same
            known = ("uncompiled_test" in result and result["uncompiled_test"]["n"] == len(test)
                     and "uncompiled_dev" in result)
            if same and known:
                for split in ("dev", "test"):
                    result[f"compiled_{split}"] = {**result[f"uncompiled_{split}"],
                                                   "note": "the compiled program is the uncompiled one; "
                                                           "these are the uncompiled program's scores"}
            else:
                set_phase("eval-compiled-dev")
                result["compiled_dev"] = evaluate(task, compiled, dev, "dev", keep_predictions=True)
                print(f"compiled dev: {result['compiled_dev']['accuracy']:.3f}", flush=True)
                save()
                set_phase("eval-compiled-test")
                result["compiled_test"] = evaluate(task, compiled, test, "test", keep_predictions=True)
            print(f"compiled test: {result['compiled_test']['accuracy']:.3f} "
                  f"({result['compiled_test']['correct']}/{result['compiled_test']['n']})", flush=True)
            state["status"] = "compiled scored"
            save()

        # 4. The uncompiled program: test, then dev.
        if not args.uncompiled_from and not args.skip_uncompiled:
            set_phase("eval-uncompiled-test")
            result["uncompiled_test"] = evaluate(task, program, test, "test", keep_predictions=True)
            print(f"uncompiled test: {result['uncompiled_test']['accuracy']:.3f}", flush=True)
            save()
            set_phase("eval-uncompiled-dev")
            result["uncompiled_dev"] = evaluate(task, program, dev, "dev", keep_predictions=True)
            print(f"uncompiled dev: {result['uncompiled_dev']['accuracy']:.3f}", flush=True)
        if compiled is not None:
            state["status"] = "done"
    except (Stop, KeyboardInterrupt) as e:
        state["status"] += f"; stopped during {PHASE['name']} ({type(e).__name__} {e})"
    finally:
        stop_flag.set()
        path = save()
    # Headline fields, as the other peers' results have them.
    if "compiled_test" in result:
        result["accuracy"] = result["compiled_test"]["accuracy"]
        result["correct"] = result["compiled_test"]["correct"]
        result["n"] = result["compiled_test"]["n"]
        path = save()
    print(json.dumps({k: result.get(k) for k in ("status", "optimize_wall_s", "run_wall_s",
                                                "metric_calls_optimization", "optimize_lm_usage")}, indent=1))
    print(f"-> {path}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
