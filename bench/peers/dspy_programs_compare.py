"""Scores dspy_programs.py's predictions with promptloop's own metric and compares them with promptloop.

For each program (meeting-actions, support-reply) and DSPy variant (uncompiled, compiled):
runs `promptloop eval <pipeline> --predictions <the DSPy JSONL> --split test --results OUT`
from the repository root (the pipeline's metric on DSPy's predictions; a missing or errored
id scores 0), then sets the per-example scores beside promptloop's own
(`promptloop eval <pipeline> [--baseline] --results F` on the same test split), with paired
bootstrap intervals (10,000 resamples of the test examples, seed 7, 95% percentile interval)
on the difference of the means, overall and, for support-reply, per branch (the example's
signal).

Inputs (bench/results/):
  <pipeline>-peers-dspy-<variant>-test.jsonl          DSPy's predictions (dspy_programs.py)
  <pipeline>-promptloop-<baseline|compiled>-test.jsonl promptloop's per-example results
Outputs:
  <pipeline>-peers-dspy-<variant>-test-scored.jsonl   promptloop's per-example verdicts on DSPy's predictions
  dspy-programs-compare.json                          scores, agreement with the Python metric, paired comparisons
                                                      (dspy-programs-compare-<split>.json for --split dev)

The support-reply data is built from Banking77 (PolyAI, CC-BY-4.0): Casanueva et al.,
"Efficient Intent Detection with Dual Sentence Encoders", NLP4ConvAI @ ACL 2020,
arXiv:2003.04807.

Usage: python3 bench/peers/dspy_programs_compare.py [--promptloop target/release/promptloop] [--split test]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

from common import REPO, RESULTS, load_program, resolve_pipeline

PROGRAMS = ("support-reply", "meeting-actions")
VARIANTS = ("uncompiled", "compiled")
RESAMPLES = 10_000
SEED = 7


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(l) for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]


def score_with_promptloop(binary: str, pipeline: str, predictions: Path, split: str, out: Path) -> dict:
    cmd = [binary, "eval", pipeline, "--predictions", str(predictions.relative_to(REPO)), "--split", split,
           "--results", str(out.relative_to(REPO))]
    if out.exists():
        out.unlink()
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    return {"command": " ".join(["promptloop"] + cmd[1:]), "exit_status": p.returncode,
            "stdout": p.stdout.strip(), "stderr": p.stderr.strip()[-1000:], "results_written": out.exists()}


def paired_bootstrap(a: list[float], b: list[float]) -> dict:
    """Mean of b - a with a 95% percentile interval over RESAMPLES paired resamples (seed SEED)."""
    n = len(a)
    diffs = [y - x for x, y in zip(a, b)]
    rng = random.Random(SEED)
    means = []
    for _ in range(RESAMPLES):
        s = 0.0
        for _ in range(n):
            s += diffs[rng.randrange(n)]
        means.append(s / n)
    means.sort()
    return {
        "n": n, "mean_a": round(sum(a) / n, 4), "mean_b": round(sum(b) / n, 4),
        "delta": round(sum(diffs) / n, 4),
        "ci95": [round(means[int(0.025 * RESAMPLES)], 4), round(means[int(0.975 * RESAMPLES) - 1], 4)],
        "p_delta_le_0": round(sum(1 for m in means if m <= 0) / RESAMPLES, 4),
        "b_better": sum(1 for d in diffs if d > 1e-9), "b_worse": sum(1 for d in diffs if d < -1e-9),
        "ties": sum(1 for d in diffs if abs(d) <= 1e-9),
    }


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--promptloop", default=str(REPO / "target/release/promptloop"),
                    help="a promptloop binary with `eval --predictions`")
    ap.add_argument("--split", default="test")
    args = ap.parse_args(argv)

    report: dict = {"split": args.split, "bootstrap": {"resamples": RESAMPLES, "seed": SEED,
                                                       "interval": "95% percentile, paired over examples"},
                    "programs": {}}
    for name in PROGRAMS:
        prog = load_program(resolve_pipeline(f"pipelines/{name}.toml"))
        rows = prog.split(args.split)
        ids = [r["id"] for r in rows]
        branch = {r["id"]: r.get("meta", {}).get("signal") for r in rows} if name == "support-reply" else {}
        entry: dict = {"n": len(ids), "systems": {}, "comparisons": {}}
        scores: dict[str, dict[str, float]] = {}

        for variant in VARIANTS:
            preds = RESULTS / f"{name}-peers-dspy-{variant}-{args.split}.jsonl"
            if not preds.exists():
                continue
            out = RESULTS / f"{name}-peers-dspy-{variant}-{args.split}-scored.jsonl"
            run = score_with_promptloop(args.promptloop, name, preds, args.split, out)
            lines = read_jsonl(preds)
            lost = sum(1 for l in lines if "error" in l)
            if run["results_written"]:
                verdicts = {r["example_id"]: r for r in read_jsonl(out)}
                s = {i: float(verdicts[i]["score"] or 0.0) if i in verdicts else 0.0 for i in ids}
            elif run["exit_status"] != 0 and lost == len(ids):
                # promptloop eval exits 1 without a results file when every prediction failed:
                # each example scores 0 by the rule that a lost prediction fails.
                s = {i: 0.0 for i in ids}
                run["note"] = "every prediction was lost: each scores 0 (no results file is written then)"
            else:
                raise SystemExit(f"{name} {variant}: promptloop eval failed: {run}")
            scores[f"dspy-{variant}"] = s
            # DSPy's own record: the Python metric's scores.
            own = json.loads((RESULTS / f"{name}-peers-dspy-{variant}.json").read_text())[args.split]
            py = {p["id"]: float(p["score"]) for p in own["predictions"]}
            agree = max(abs(py.get(i, 0.0) - s[i]) for i in ids)
            entry["systems"][f"dspy-{variant}"] = {
                "score_promptloop_metric": round(sum(s.values()) / len(ids), 4),
                "score_python_metric": own["score_python_metric"],
                "max_abs_difference_per_example": round(agree, 6),
                "predictions_lost": lost,
                "scoring": run,
            }

        for variant in ("baseline", "compiled"):
            path = RESULTS / f"{name}-promptloop-{variant}-{args.split}.jsonl"
            if not path.exists():
                continue
            res = {r["example_id"]: r for r in read_jsonl(path)}
            scores[f"promptloop-{variant}"] = {i: float(res[i]["score"] or 0.0) for i in ids}
            entry["systems"][f"promptloop-{variant}"] = {
                "score_promptloop_metric": round(sum(scores[f"promptloop-{variant}"].values()) / len(ids), 4),
                "predictions_lost": sum(1 for i in ids if res[i].get("error")),
                "lm_calls": sum(res[i].get("lm_calls", 0) for i in ids),
                "prompt_tokens": sum(res[i]["usage"]["prompt_tokens"] for i in ids),
                "completion_tokens": sum(res[i]["usage"]["completion_tokens"] for i in ids),
            }

        if branch:
            for sysname, s in scores.items():
                per = {}
                for b in ("routine", "urgent", "escalating"):
                    bi = [i for i in ids if branch[i] == b]
                    per[b] = {"n": len(bi), "score": round(sum(s[i] for i in bi) / len(bi), 4)}
                entry["systems"][sysname]["by_branch"] = per

        pairs = [("promptloop-baseline", "dspy-uncompiled"), ("promptloop-compiled", "dspy-compiled"),
                 ("promptloop-baseline", "dspy-compiled"), ("dspy-uncompiled", "dspy-compiled")]
        for a, b in pairs:
            if a not in scores or b not in scores:
                continue
            key = f"{b} vs {a}"
            comp = {"all": paired_bootstrap([scores[a][i] for i in ids], [scores[b][i] for i in ids])}
            if branch:
                for br in ("routine", "urgent", "escalating"):
                    bi = [i for i in ids if branch[i] == br]
                    comp[br] = paired_bootstrap([scores[a][i] for i in bi], [scores[b][i] for i in bi])
            entry["comparisons"][key] = comp
        entry["per_example"] = {i: {k: round(v[i], 4) for k, v in scores.items()} | (
            {"branch": branch[i]} if branch else {}) for i in ids}
        report["programs"][name] = entry

    out = RESULTS / ("dspy-programs-compare.json" if args.split == "test" else f"dspy-programs-compare-{args.split}.json")
    report["dataset_license"] = {"support-reply": "Banking77 (PolyAI), CC-BY-4.0",
                                 "meeting-actions": "fictional transcripts written for promptloop"}
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for name, e in report["programs"].items():
        print(name, {k: v["score_promptloop_metric"] for k, v in e["systems"].items()})
        for k, c in e["comparisons"].items():
            print("  ", k, {br: (x["delta"], x["ci95"]) for br, x in c.items()})
    print(f"-> {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
