"""Writes bench/results/peers.md from the bench/results/peers-*.json files."""

from __future__ import annotations

import json
import sys

from collections import Counter

import re

from common import RESULTS, SERVER_SOFTWARE, load_task

ORDER = [
    "dspy-zeroshot",
    "dspy-bootstrap",
    "dspy-zeroshot-promptloop-serve",
    "dspy-bootstrap-promptloop-serve",
    "zeroshot",
    "zeroshot-json",
    "kshot7",
    "kshot7-json",
]


def flags(doc: dict) -> str:
    """The server's thread flags, the only ones that differ between runs."""
    f = doc["server"]["flags"]
    return " ".join(re.findall(r"--n_threads(?:_batch)? \d+", f)) or f


def main() -> None:
    docs = {}
    for p in sorted(RESULTS.glob("peers-*.json")):
        d = json.loads(p.read_text(encoding="utf-8"))
        docs[d.get("name", d["method"])] = d
    if not docs:
        sys.exit("no results")
    methods = [m for m in ORDER if m in docs] + [m for m in docs if m not in ORDER]
    dates = sorted(d["date"] for d in docs.values())
    n = {d["n"] for d in docs.values()}
    lines = [
        "# Peer baselines on support-triage",
        "",
        f"Run {dates[0][:10]}" + (f" to {dates[-1][:10]}" if dates[-1][:10] != dates[0][:10] else "")
        + f"; machine: {next(iter(docs.values()))['machine']['cores']} cores (shared with other work, "
        "so wall times are indicative); "
        f"server: {SERVER_SOFTWARE}, flags per row below (rows ending in `-promptloop-serve`: the same model "
        f"served by `promptloop lm serve` instead); test split, n = {', '.join(map(str, sorted(n)))}.",
        "",
        "The data is built from Banking77 (PolyAI, CC-BY-4.0). Scripts and setup: `bench/peers/`.",
        "",
        "| method | test accuracy | correct | LM calls (compile + eval) | compile wall | eval wall | format errors | server flags | load avg (1 min) at end |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for m in methods:
        d = docs[m]
        if d.get("status") == "stopped":
            lines.append(
                f"| {m} | not reached | — | {d['compile_lm_calls']} + 0 (stopped) | {d['compile_wall_s']:.0f} s (stopped) "
                f"| — | {d['compile_errors']} in compile | `{flags(d)}` | {d['machine']['loadavg_1_5_15_at_write'][0]} |"
            )
            continue
        compile_calls = d.get("compile_lm_calls", 0)
        eval_calls = d.get("eval_lm_calls", d["lm_calls"] - compile_calls)
        lost = d["format_errors"] + d.get("exceptions", 0)
        lines.append(
            f"| {m} | {d['accuracy'] * 100:.1f}% | {d['correct']}/{d['n']} | {compile_calls} + {eval_calls} = {d['lm_calls']} "
            f"| {d.get('compile_wall_s', 0):.0f} s | {d['eval_wall_s']:.0f} s | {lost} | `{flags(d)}` | {d['machine']['loadavg_1_5_15_at_write'][0]} |"
        )
    lines += ["", "Methods:", ""]
    for m in methods:
        lines.append(f"- `{m}`: {docs[m]['description']}.")
        if docs[m].get("note"):
            lines.append(f"  {docs[m]['note']}")
    test = load_task().test
    (top, count), = Counter(e.queue for e in test).most_common(1)
    lines += [
        "",
        f"For scale: always answering the most common test queue (`{top}`) scores "
        f"{count / len(test) * 100:.1f}% ({count}/{len(test)}).",
        "",
        "A format error is a prediction that did not parse into one of the seven queues (scored 0);",
        "for the DSPy rows it is a failure of both the ChatAdapter and its JSONAdapter fallback,",
        "each failure costing two LM calls. The constrained (`-json`) rows fail only when the reply",
        "is cut by max_tokens=16 before the JSON closes (the schema grammar allows padding whitespace).",
        "Per-example predictions are in `peers-<method>.json`.",
        "",
        "Against `promptloop lm serve` (same weights), DSPy's BootstrapFewShot ran to the end: with its",
        "labeled demos in the prompt the teacher's replies parsed, and 4 traces were bootstrapped after",
        "35 train examples. All four are labeled `transfers`, and the compiled program answers",
        "`transfers` for every test message (15.1%, that queue's share of the test split). The",
        "uncompiled program's replies failed both of DSPy's adapters there too.",
        "",
    ]
    (RESULTS / "peers.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
