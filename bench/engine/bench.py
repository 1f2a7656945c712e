#!/usr/bin/env python3
"""Engine benchmark: promptloop's embedded model served by `promptloop lm serve` against
llama.cpp's OpenAI-compatible server (llama-cpp-python[server]), on the same machine, the
same GGUF file and the same thread count, through the same HTTP client code.

Python 3.11 standard library only. The servers run one at a time (never both: they would
compete for the cores), each in its own process group, started fresh for each phase:

  promptloop            `promptloop lm serve` (prefix reuse on, its default budget)
  promptloop-noreuse    the same with `--prefix-cache-mb 0`: every prompt computed from scratch
  llama.cpp             `python -m llama_cpp.server` (llama-cpp-python)

Workloads (temperature 0; every request is identical for every server):

  prefill   a ~500-token prompt neither server has seen (its first line carries a number that
            differs per repetition, so no prefix state from an earlier request helps),
            max_tokens 1.  prefill tok/s = usage.prompt_tokens / wall time of the request.
  decode    a short prompt that asks for a long story, sent twice per repetition with two
            different reference numbers of the same digit count (so the same token count and
            no shared state beyond the chat template's first tokens): once with max_tokens 1
            (prefill + first token) and once with max_tokens 128.
            decode tok/s = (completion_tokens - 1) / (wall_128 - wall_1), completion_tokens
            as the server reports it in usage (so a reply that ends early counts only what was
            generated).
  eval      the support-triage program with 4 demos over the first N test examples (100; 20
            with --quick), sent sequentially: chat messages rendered as promptloop's chat
            adapter renders them (src/program/adapter.rs `render`): system = instructions +
            field lists + "Reply in this format" block, the 4 demos as user/assistant turns with
            `[[ ## field ## ]]` markers, then the example's input and the "Respond with ..."
            line. max_tokens 16, stop ["[[ ## completed ## ]]"]. All requests share the long
            prefix (system + demos) and differ in the last user message. Reported: the total
            wall time of the N requests, and how many replies hold a valid queue label (one of
            the seven names exactly, after the `[[ ## queue ## ]]` marker, or as the bare reply).

Each phase starts with one short warm-up request (not timed). Machine load is recorded before
each phase and workload, together with the CPU time other processes used during it.

The support-triage data is built from Banking77 (PolyAI, CC-BY-4.0): Casanueva et al.,
"Efficient Intent Detection with Dual Sentence Encoders", NLP4ConvAI @ ACL 2020,
arXiv:2003.04807.

Usage (from the repository root):
  python3 bench/engine/bench.py --promptloop target/release/promptloop \
      --llama-python /tmp/peers/venv/bin/python \
      --model .promptloop/models/SmolLM2-135M-Instruct.Q4_1.gguf --threads 2 \
      --out bench/results/engine.json
  add --quick for a smoke run, --only promptloop|llama to run one server.
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench" / "peers"))
from common import Example, Task, load_task  # noqa: E402  (the peers' loader: same splits)

MODEL_ALIAS = "smollm2"
EVAL_MAX_TOKENS = 16
EVAL_STOP = ["[[ ## completed ## ]]"]
DECODE_TOKENS = 128

# ---------------------------------------------------------------------------
# Machine state


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_total_mb() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def nproc() -> int | None:
    try:
        return int(subprocess.run(["nproc"], capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, ValueError, subprocess.SubprocessError):
        return os.cpu_count()


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


TICKS = os.sysconf("SC_CLK_TCK")


def system_busy_s() -> float:
    """CPU seconds (summed over cores) the whole machine has spent busy since boot."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    v = [int(x) for x in fields]
    # user nice system idle iowait irq softirq steal (guest is already in user)
    return (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / TICKS


def process_cpu_s(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    rest = raw.rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / TICKS  # utime, stime (fields 14, 15)


def own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


class CpuMeter:
    """CPU time used during a span: by the server, by this script, by everything else."""

    def __init__(self, server_pid: int | None):
        self.pid = server_pid
        self.t0 = time.perf_counter()
        self.sys0 = system_busy_s()
        self.srv0 = process_cpu_s(server_pid)
        self.own0 = own_cpu_s()

    def done(self) -> dict:
        wall = time.perf_counter() - self.t0
        busy = system_busy_s() - self.sys0
        srv = process_cpu_s(self.pid) - self.srv0
        own = own_cpu_s() - self.own0
        other = max(0.0, busy - srv - own)
        return {
            "wall_s": round(wall, 2),
            "server_cpu_s": round(srv, 2),
            "client_cpu_s": round(own, 2),
            "other_cpu_s": round(other, 2),
            # Cores' worth of CPU that other processes used on average during the span.
            "other_cores_avg": round(other / wall, 3) if wall > 0 else None,
        }


def cpu_busy_fraction(seconds: float = 3.0) -> float:
    """Fraction of all cores busy over the next `seconds` (nothing of ours running)."""
    b0, t0 = system_busy_s(), time.perf_counter()
    time.sleep(seconds)
    b1, t1 = system_busy_s(), time.perf_counter()
    return (b1 - b0) / ((t1 - t0) * (os.cpu_count() or 1))


def wait_quiet(max_wait_s: float, busy_below: float) -> dict:
    """Waits (up to max_wait_s) until other work leaves the cores mostly idle."""
    start = time.perf_counter()
    busy = cpu_busy_fraction()
    while busy >= busy_below and time.perf_counter() - start < max_wait_s:
        log(f"  machine busy ({busy:.0%} of cores used by other processes, load {loadavg()}); waiting")
        time.sleep(20)
        busy = cpu_busy_fraction()
    return {
        "waited_s": round(time.perf_counter() - start, 1),
        "busy_fraction_3s": round(busy, 3),
        "quiet": busy < busy_below,
        "loadavg_1_5_15": loadavg(),
    }


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# HTTP client (the same for every server)


class RequestFailed(Exception):
    pass


def http_json(url: str, body: dict | None, timeout: float) -> dict:
    data = None if body is None else json.dumps(body).encode("utf-8")
    req = urllib.request.Request(
        url,
        data=data,
        headers={"Content-Type": "application/json", "Authorization": "Bearer none"},
        method="GET" if body is None else "POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as e:
        detail = e.read()[:400].decode("utf-8", "replace")
        raise RequestFailed(f"HTTP {e.code} from {url}: {detail}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise RequestFailed(f"{url}: {type(reason).__name__}: {reason}") from None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise RequestFailed(f"{url}: reply is not JSON ({e}): {raw[:200]!r}") from None


def chat(base: str, messages: list[dict], max_tokens: int, timeout: float, stop: list[str] | None = None) -> dict:
    """One chat completion; returns the reply, usage and the request's wall time."""
    body = {"model": MODEL_ALIAS, "messages": messages, "temperature": 0.0, "max_tokens": max_tokens}
    if stop:
        body["stop"] = stop
    t0 = time.perf_counter()
    doc = http_json(base + "/chat/completions", body, timeout)
    wall = time.perf_counter() - t0
    try:
        choice = doc["choices"][0]
        usage = doc.get("usage") or {}
        return {
            "content": choice["message"].get("content") or "",
            "finish_reason": choice.get("finish_reason"),
            "prompt_tokens": int(usage["prompt_tokens"]),
            "completion_tokens": int(usage["completion_tokens"]),
            "wall_s": wall,
        }
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise RequestFailed(f"unexpected reply shape ({e!r}): {json.dumps(doc)[:300]}") from None


# ---------------------------------------------------------------------------
# Servers

LIVE: list["Server"] = []


class Server:
    def __init__(self, name: str, kind: str, argv: list[str], port: int, log_dir: Path, startup_timeout: float):
        self.name, self.kind, self.argv, self.port = name, kind, argv, port
        self.startup_timeout = startup_timeout
        self.stdout_path = log_dir / f"{name}.stdout.log"
        self.stderr_path = log_dir / f"{name}.stderr.log"
        self.proc: subprocess.Popen | None = None
        self.base = f"http://127.0.0.1:{port}/v1"
        self.startup_s: float | None = None

    def start(self) -> None:
        log(f"[{self.name}] starting: {' '.join(self.argv)}")
        t0 = time.perf_counter()
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            # A new session and process group (setsid): stopped as a group, and not tied to a terminal.
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=REPO, start_new_session=True
            )
        LIVE.append(self)
        deadline = t0 + self.startup_timeout
        while True:
            if self.proc.poll() is not None:
                raise RequestFailed(
                    f"{self.name} exited with status {self.proc.returncode} before it was ready; "
                    f"stderr ends with:\n{self.tail()}"
                )
            if self.ready():
                break
            if time.perf_counter() > deadline:
                raise RequestFailed(
                    f"{self.name} not ready after {self.startup_timeout:.0f} s; stderr ends with:\n{self.tail()}"
                )
            time.sleep(0.25)
        self.startup_s = time.perf_counter() - t0
        log(f"[{self.name}] ready at {self.base} after {self.startup_s:.1f} s (pid {self.proc.pid})")

    def ready(self) -> bool:
        if self.kind == "promptloop":
            # Ready once it prints `listening on http://127.0.0.1:PORT/v1`.
            try:
                text = self.stdout_path.read_text(errors="replace")
            except OSError:
                return False
            m = re.search(r"listening on (http://\S+/v1)", text)
            if m:
                self.base = m.group(1)
                return True
            return False
        try:
            http_json(self.base + "/models", None, timeout=5)
            return True
        except RequestFailed:
            return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, n: int = 15) -> str:
        try:
            lines = self.stderr_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no stderr log)"
        return "\n".join("    " + line for line in lines[-n:])

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        # Anything left in its group (it was the group leader).
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self in LIVE:
            LIVE.remove(self)
        log(f"[{self.name}] stopped")


def stop_all() -> None:
    for s in list(LIVE):
        s.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------
# Prompts


def numbered(i: int, base: int) -> str:
    """A six-digit reference number, distinct per (workload, repetition)."""
    return str(base + 7919 * i)


def prefill_messages(filler: str, rep: int) -> list[dict]:
    ref = numbered(rep, 310000)
    return [
        {"role": "system", "content": f"Reference {ref}. You are a support analyst at an online bank."},
        {"role": "user", "content": "Read these customer messages, then name the three most common problems.\n\n" + filler},
    ]


def decode_messages(ref: str) -> list[dict]:
    return [
        {"role": "system", "content": f"Reference {ref}. You are a novelist who writes long, detailed stories."},
        {
            "role": "user",
            "content": "Write a long story, at least 800 words, about a lighthouse keeper who finds a "
            "message in a bottle. Describe every scene in detail.",
        },
    ]


def build_filler(task: Task, target_chars: int) -> str:
    """Dev-split messages (Banking77) as a numbered list, about target_chars long."""
    lines, size = [], 0
    for i, ex in enumerate(task.dev, 1):
        line = f"{i}. {ex.message.strip()}"
        lines.append(line)
        size += len(line) + 1
        if size >= target_chars:
            break
    return "\n".join(lines)


# promptloop's chat adapter (src/program/adapter.rs, `render`), for one predictor.


def describe_type(spec: dict) -> str:
    ty = spec.get("type", "string")
    if ty == "enum":
        return "one of: " + "; ".join(spec["values"])
    return {"string": "str", "int": "int", "integer": "int", "float": "float", "bool": "bool"}.get(ty, ty)


def field_list(title: str, fields: list[tuple[str, dict]]) -> str:
    out = f"{title}\n"
    for i, (name, spec) in enumerate(fields, 1):
        out += f"{i}. `{name}` ({describe_type(spec)})"
        if spec.get("description"):
            out += f": {spec['description']}"
        out += "\n"
    return out


def chat_reply(outputs: list[tuple[str, dict]], values: dict) -> str:
    out = "".join(f"[[ ## {name} ## ]]\n{values[name]}\n\n" for name, _ in outputs)
    return out + "[[ ## completed ## ]]"


def input_block(inputs: list[tuple[str, dict]], values: dict) -> str:
    return "\n\n".join(f"[[ ## {name} ## ]]\n{values[name]}" for name, _ in inputs)


class Program:
    def __init__(self, task: Task, demos: list[Example]):
        pred = task.config["program"]["predictors"][0]
        sig = task.config["signatures"][pred["signature"]]
        self.inputs = list(sig["inputs"].items())
        self.outputs = list(sig["outputs"].items())
        self.in_name, self.out_name = self.inputs[0][0], self.outputs[0][0]
        system = sig["instructions"].strip() + "\n\n"
        system += field_list("Your input fields are:", self.inputs)
        system += field_list("Your output fields are:", self.outputs)
        system += "\nReply in this format:\n\n"
        system += chat_reply(self.outputs, {name: "{" + name + "}" for name, _ in self.outputs})
        self.prefix = [{"role": "system", "content": system}]
        for d in demos:
            self.prefix.append({"role": "user", "content": input_block(self.inputs, {self.in_name: d.message})})
            self.prefix.append({"role": "assistant", "content": chat_reply(self.outputs, {self.out_name: d.queue})})
        self.respond = "\n\nRespond with " + ", ".join(f"`[[ ## {n} ## ]]`" for n, _ in self.outputs)
        self.respond += ", then `[[ ## completed ## ]]`."

    def messages(self, message: str) -> list[dict]:
        last = input_block(self.inputs, {self.in_name: message}) + self.respond
        return self.prefix + [{"role": "user", "content": last}]


def pick_demos(task: Task, k: int) -> list[Example]:
    """The first train example (id order) of each queue; the k with the smallest ids."""
    first: dict[str, Example] = {}
    for ex in task.train:
        first.setdefault(ex.queue, ex)
    return sorted(first.values(), key=lambda e: e.id)[:k]


def label_of(reply: str, field: str, queues: tuple[str, ...], strict: bool = False) -> str | None:
    """The queue a reply names: after the `[[ ## queue ## ]]` marker, else the bare reply.

    Default: the first non-empty line after the marker must be a queue name exactly (the small model
    often follows it with a malformed end marker such as `[## completed ## ]`). strict: the whole
    section up to the next `[[ ## ... ## ]]` marker must be, as promptloop's unconstrained chat parser
    reads it (it forgives case and wrapping quotes, which this does not).
    """
    marker = re.search(r"\[\[ ## " + re.escape(field) + r" ## \]\]", reply)
    if marker:
        section = re.split(r"\[\[\s*##", reply[marker.end():], maxsplit=1)[0]
    else:
        section = reply
    if strict:
        value = section.strip()
    else:
        value = next((line.strip() for line in section.splitlines() if line.strip()), "")
    return value if value in queues else None


# ---------------------------------------------------------------------------
# Workloads


def stats(values: list[float], digits: int = 1) -> dict | None:
    if not values:
        return None
    return {
        "min": round(min(values), digits),
        "median": round(statistics.median(values), digits),
        "max": round(max(values), digits),
        "n": len(values),
    }


class ServerDied(Exception):
    pass


def guarded(server: Server, what: str, fn):
    try:
        return fn(), None
    except RequestFailed as e:
        msg = f"{what}: {e}"
        log(f"[{server.name}] FAILED {msg}")
        if not server.alive():
            raise ServerDied(f"{server.name} exited (status {server.proc.returncode}) during {what}; "
                             f"stderr ends with:\n{server.tail()}") from None
        return None, msg


def run_prefill(server: Server, filler: str, reps: int, timeout: float) -> dict:
    runs, errors = [], []
    for rep in range(reps):
        r, err = guarded(server, f"prefill rep {rep}",
                         lambda: chat(server.base, prefill_messages(filler, rep), 1, timeout))
        if err:
            errors.append(err)
            continue
        r["tok_s"] = r["prompt_tokens"] / r["wall_s"]
        runs.append({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()})
        log(f"[{server.name}] prefill {rep + 1}/{reps}: {r['prompt_tokens']} tokens in {r['wall_s']:.2f} s "
            f"= {r['tok_s']:.1f} tok/s")
    return {"runs": runs, "errors": errors, "tok_s": stats([r["tok_s"] for r in runs]),
            "prompt_tokens": sorted({r["prompt_tokens"] for r in runs})}


def run_decode(server: Server, reps: int, timeout: float) -> dict:
    runs, errors = [], []
    for rep in range(reps):
        ref_short, ref_long = numbered(rep, 520000), numbered(rep, 740000)
        short, err = guarded(server, f"decode rep {rep} (max_tokens 1)",
                             lambda: chat(server.base, decode_messages(ref_short), 1, timeout))
        if err:
            errors.append(err)
            continue
        long, err = guarded(server, f"decode rep {rep} (max_tokens {DECODE_TOKENS})",
                            lambda: chat(server.base, decode_messages(ref_long), DECODE_TOKENS, timeout))
        if err:
            errors.append(err)
            continue
        n = long["completion_tokens"]
        dt = long["wall_s"] - short["wall_s"]
        run = {
            "prompt_tokens": long["prompt_tokens"],
            "prompt_tokens_max1": short["prompt_tokens"],
            "completion_tokens": n,
            "finish_reason": long["finish_reason"],
            "wall_max1_s": round(short["wall_s"], 3),
            "wall_s": round(long["wall_s"], 3),
            "tok_s": round((n - 1) / dt, 3) if n > 1 and dt > 0 else None,
            "end_to_end_tok_s": round(n / long["wall_s"], 3),
            "reply_head": long["content"][:160],
        }
        if short["prompt_tokens"] != long["prompt_tokens"]:
            run["warning"] = "the two prompts differ in token count"
        runs.append(run)
        log(f"[{server.name}] decode {rep + 1}/{reps}: {n} tokens ({long['finish_reason']}), "
            f"{long['wall_s']:.2f} s - {short['wall_s']:.2f} s -> {run['tok_s']} tok/s")
    good = [r["tok_s"] for r in runs if r["tok_s"] is not None]
    return {"runs": runs, "errors": errors, "tok_s": stats(good),
            "completion_tokens": [r["completion_tokens"] for r in runs]}


def run_eval(server: Server, program: Program, task: Task, examples: list[Example], reps: int,
             timeout: float) -> dict:
    reps_out, first_replies, errors = [], None, []
    for rep in range(reps):
        replies, n_err, n_valid, n_strict, n_correct = [], 0, 0, 0, 0
        prompt_tokens = completion_tokens = 0
        t0 = time.perf_counter()
        for i, ex in enumerate(examples):
            r, err = guarded(server, f"eval rep {rep} example {ex.id}",
                             lambda: chat(server.base, program.messages(ex.message), EVAL_MAX_TOKENS, timeout,
                                          stop=EVAL_STOP))
            if err:
                n_err += 1
                errors.append(err)
                replies.append(None)
                continue
            replies.append(r["content"])
            prompt_tokens += r["prompt_tokens"]
            completion_tokens += r["completion_tokens"]
            label = label_of(r["content"], program.out_name, task.queues)
            n_valid += label is not None
            n_strict += label_of(r["content"], program.out_name, task.queues, strict=True) is not None
            n_correct += label == ex.queue
            if (i + 1) % 20 == 0:
                log(f"[{server.name}] eval rep {rep + 1}/{reps}: {i + 1}/{len(examples)} "
                    f"({time.perf_counter() - t0:.1f} s)")
        wall = time.perf_counter() - t0
        rep_out = {"wall_s": round(wall, 2), "errors": n_err, "valid_labels": n_valid,
                   "valid_labels_strict": n_strict, "correct": n_correct,
                   "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
        if first_replies is None:
            first_replies = replies
        else:
            rep_out["replies_same_as_rep1"] = sum(a == b for a, b in zip(replies, first_replies))
        reps_out.append(rep_out)
        log(f"[{server.name}] eval rep {rep + 1}/{reps}: {len(examples)} requests in {wall:.1f} s, "
            f"valid labels {n_valid}, correct {n_correct}, errors {n_err}")
    complete = [r["wall_s"] for r in reps_out if r["errors"] == 0]
    return {
        "n": len(examples),
        "reps": reps_out,
        "wall_s": stats(complete, 2),
        "valid_labels": reps_out[0]["valid_labels"] if reps_out else None,
        "valid_labels_strict": reps_out[0]["valid_labels_strict"] if reps_out else None,
        "correct": reps_out[0]["correct"] if reps_out else None,
        "errors": errors[:20],
        "replies": [{"id": ex.id, "gold": ex.queue, "reply": rep} for ex, rep in zip(examples, first_replies or [])],
    }


# ---------------------------------------------------------------------------
# Phases


def run_phase(name: str, server: Server, workloads: list[str], ctx: dict) -> dict:
    out: dict = {"server": name, "argv": server.argv}
    if ctx["wait_quiet_s"] > 0:
        out["before"] = wait_quiet(ctx["wait_quiet_s"], ctx["quiet_busy_below"])
    else:
        out["before"] = {"busy_fraction_3s": round(cpu_busy_fraction(), 3), "loadavg_1_5_15": loadavg()}
    log(f"[{name}] before start: load {out['before']['loadavg_1_5_15']}, "
        f"cores busy {out['before']['busy_fraction_3s']:.0%}")
    try:
        server.start()
        out["startup_s"] = round(server.startup_s, 2)
        out["base_url"] = server.base
        warm = chat(server.base, [{"role": "user", "content": "Say hello."}], 4, ctx["timeout"])
        out["warmup_s"] = round(warm["wall_s"], 3)
        for w in workloads:
            meter = CpuMeter(server.proc.pid)
            la = loadavg()
            log(f"[{name}] {w}: load before {la}")
            if w == "prefill":
                res = run_prefill(server, ctx["filler"], ctx["prefill_reps"], ctx["timeout"])
            elif w == "decode":
                res = run_decode(server, ctx["decode_reps"], ctx["timeout"])
            else:
                res = run_eval(server, ctx["program"], ctx["task"], ctx["examples"], ctx["eval_reps"], ctx["timeout"])
            res["loadavg_before"] = la
            res["cpu"] = meter.done()
            res["loadavg_after"] = loadavg()
            out[w] = res
    except (RequestFailed, ServerDied) as e:
        out["error"] = str(e)
        log(f"[{name}] FAILED: {e}")
    finally:
        server.stop()
    return out


def interference(phase: dict) -> float:
    """The most CPU (in cores, averaged over a workload) that other processes used during the phase."""
    vals = [(phase.get(w) or {}).get("cpu", {}).get("other_cores_avg") for w in ("prefill", "decode", "eval")]
    return max([v for v in vals if v is not None], default=0.0)


def phase_summary(phase: dict) -> dict:
    return {w: {k: phase[w].get(k) for k in ("tok_s", "wall_s")} for w in ("prefill", "decode", "eval") if w in phase}


def version_of(argv: list[str]) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if p.returncode == 0:
            return (p.stdout.strip() or p.stderr.strip()).splitlines()[0]
        last = (p.stderr.strip().splitlines() or ["no output"])[-1]
        return f"(exit {p.returncode}: {last[:160]})"
    except (OSError, subprocess.SubprocessError, IndexError) as e:
        return f"(unavailable: {e})"


def sha256_of(path: Path) -> str | None:
    try:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    except OSError:
        return None


def git_head(where: Path = REPO) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# ---------------------------------------------------------------------------
# Report


def med(d: dict | None) -> float | None:
    return d["median"] if d else None


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def show(x) -> str:
    return "—" if x is None else str(x)


def fmt_stats(d: dict | None, unit: str = "") -> str:
    if not d:
        return "—"
    return f"{d['median']:g}{unit} ({d['min']:g}–{d['max']:g})"


def summarize(phases: dict) -> dict:
    ours, nore, llama = phases.get("promptloop", {}), phases.get("promptloop-noreuse", {}), phases.get("llama.cpp", {})

    def get(p, w, k):
        return (p.get(w) or {}).get(k)

    r = {
        "prefill_tok_s_ours_over_llama": ratio(med(get(ours, "prefill", "tok_s")), med(get(llama, "prefill", "tok_s"))),
        "decode_tok_s_ours_over_llama": ratio(med(get(ours, "decode", "tok_s")), med(get(llama, "decode", "tok_s"))),
        "eval_wall_llama_over_ours": ratio(med(get(llama, "eval", "wall_s")), med(get(ours, "eval", "wall_s"))),
        "eval_wall_ours_noreuse_over_ours_reuse": ratio(med(get(nore, "eval", "wall_s")),
                                                        med(get(ours, "eval", "wall_s"))),
        "eval_wall_ours_reuse_over_noreuse": ratio(med(get(ours, "eval", "wall_s")), med(get(nore, "eval", "wall_s"))),
        "basis": "ratios of medians",
    }
    # Do the replies agree? (ours with and without reuse must be identical: reuse is an optimisation.)
    def replies(p):
        return [x["reply"] for x in (get(p, "eval", "replies") or [])]
    agree = {}
    queues = tuple(load_task().queues)
    for a, b, key in ((ours, nore, "ours_reuse_vs_noreuse"), (ours, llama, "ours_vs_llama")):
        ra, rb = replies(a), replies(b)
        if ra and rb and len(ra) == len(rb):
            same_label = sum(x is not None and y is not None and label_of(x, "queue", queues) is not None
                             and label_of(x, "queue", queues) == label_of(y, "queue", queues) for x, y in zip(ra, rb))
            agree[key] = {"identical": sum(x == y and x is not None for x, y in zip(ra, rb)),
                          "same_valid_label": same_label, "n": len(ra)}
    r["eval_reply_agreement"] = agree
    return r


def markdown(doc: dict) -> str:
    phases = doc["phases"]
    names = [n for n in ("promptloop", "promptloop-noreuse", "llama.cpp") if n in phases]
    m, v, s = doc["machine"], doc["versions"], doc["settings"]
    lines = [
        "# Engine benchmark: promptloop lm serve vs llama.cpp server",
        "",
        f"Run {doc['date']}{' (quick smoke run)' if s['quick'] else ''}. Machine: {m['nproc']} cores, {m['cpu_model']}, "
        f"{m['mem_total_mb']} MiB. Model: `{Path(doc['model']['path']).name}` (same file for both). "
        f"Threads: {s['threads']}. Temperature 0. Servers run one at a time.",
        "",
        f"Versions: `{v['promptloop']}` (binary built {v['promptloop_binary'].get('mtime')}, its repository at "
        f"{str(v['promptloop_binary'].get('repo_head_at_run'))[:10]} when run); "
        f"llama-cpp-python {v['llama_cpp_python']}.",
        "",
        "Cells: median (min–max) over the repetitions.",
        "",
        "| metric | " + " | ".join(names) + " |",
        "| --- |" + " ---: |" * len(names),
    ]

    def row(label, fn):
        lines.append(f"| {label} | " + " | ".join(fn(phases[n]) for n in names) + " |")

    def w(p, k):
        return p.get(k) or {}

    row(f"prefill tok/s (~{'/'.join(map(str, doc['prefill_prompt_tokens'])) or '?'}-token prompt, max_tokens 1)",
        lambda p: fmt_stats(w(p, "prefill").get("tok_s")) if "prefill" in p else "—")
    row(f"decode tok/s ({DECODE_TOKENS} asked)",
        lambda p: fmt_stats(w(p, "decode").get("tok_s")) if "decode" in p else "—")
    row("decode: completion tokens per rep",
        lambda p: ", ".join(map(str, w(p, "decode").get("completion_tokens", []))) if "decode" in p else "—")
    row(f"eval wall s ({s['eval_examples']} requests, 4 demos)",
        lambda p: fmt_stats(w(p, "eval").get("wall_s"), " s") if "eval" in p else "—")
    row("eval: valid queue labels, first line / whole section (rep 1)",
        lambda p: f"{w(p, 'eval').get('valid_labels')} / {w(p, 'eval').get('valid_labels_strict')} of "
        f"{w(p, 'eval').get('n')}" if "eval" in p else "—")
    row("eval: correct (rep 1; accuracy is not the point)",
        lambda p: f"{w(p, 'eval').get('correct')} of {w(p, 'eval').get('n')}" if "eval" in p else "—")
    row("eval: prompt tokens per request (rep 1, mean)",
        lambda p: (f"{w(p, 'eval')['reps'][0]['prompt_tokens'] / w(p, 'eval')['n']:.0f}"
                   if "eval" in p and w(p, "eval").get("reps") else "—"))
    row("load avg (1 min) before phase", lambda p: str(p["before"]["loadavg_1_5_15"][0]))
    row("other processes' CPU during phase (cores, avg)",
        lambda p: ", ".join(f"{k} {w(p, k)['cpu']['other_cores_avg']}" for k in ("prefill", "decode", "eval")
                            if k in p and "cpu" in w(p, k)) or "—")
    row("errors", lambda p: p.get("error", "").splitlines()[0][:80] if p.get("error") else
        str(sum(len(w(p, k).get("errors", [])) for k in ("prefill", "decode", "eval"))))
    r = doc["ratios"]
    lines += [
        "",
        "Ratios (of medians):",
        "",
        f"- prefill tok/s, promptloop / llama.cpp: **{show(r['prefill_tok_s_ours_over_llama'])}**",
        f"- decode tok/s, promptloop / llama.cpp: **{show(r['decode_tok_s_ours_over_llama'])}**",
        f"- evaluation wall time, llama.cpp / promptloop: **{show(r['eval_wall_llama_over_ours'])}** (above 1: promptloop faster)",
        f"- evaluation wall time, promptloop with prefix reuse / without: **{show(r['eval_wall_ours_reuse_over_noreuse'])}** "
        f"(without / with: {show(r['eval_wall_ours_noreuse_over_ours_reuse'])})",
    ]
    errs = []
    for n in names:
        p = phases[n]
        if p.get("error"):
            errs.append(f"{n}: {p['error']}")
        for k in ("prefill", "decode", "eval"):
            errs += [f"{n}: {e}" for e in (p.get(k) or {}).get("errors", [])]
    for k, a in r.get("eval_reply_agreement", {}).items():
        lines.append(f"- evaluation replies, {k.replace('_', ' ')}: identical {a['identical']}/{a['n']}, "
                     f"same valid label {a.get('same_valid_label', '?')}/{a['n']}")
    lines += ["", "Method:", ""] + [f"- {x}" for x in doc["method"]]
    if errs:
        lines += ["", "Errors:", "", "```"] + [e for x in errs[:30] for e in x.splitlines()] + ["```"]
    if doc.get("notes"):
        lines += ["", "Notes:", ""] + [f"- {x}" for x in doc["notes"]]
    return "\n".join(lines) + "\n"


def print_table(doc: dict) -> None:
    md = markdown(doc)
    start = md.index("| metric")
    end = md.index("Method:")
    print(md[start:end].rstrip())


METHOD = [
    "Servers: `promptloop lm serve --threads T` (default prefix cache), the same with `--prefix-cache-mb 0`, and "
    "`python -m llama_cpp.server --n_ctx 4096 --n_threads T --n_threads_batch T --model_alias smollm2`; each started "
    "fresh in its own process group, ready on its `listening on` line (promptloop) or on GET /v1/models "
    "(llama.cpp), sent one untimed warm-up request, then stopped before the next starts.",
    "Requests: POST /v1/chat/completions, temperature 0, `max_tokens` (llama.cpp ignores "
    "`max_completion_tokens`), one at a time, by the same urllib client; wall time is measured around each "
    "request (connection, server queue, prompt processing, generation, reply).",
    "Prefill: a ~500-token prompt (system line with a reference number that differs per repetition, then "
    "support-triage dev-split messages as a numbered list), max_tokens 1; tok/s = usage.prompt_tokens / wall. "
    "The wall time includes one generated token and the HTTP round trip.",
    f"Decode: a short prompt asking for a long story, once with max_tokens 1 and once with max_tokens "
    f"{DECODE_TOKENS}, the two differing only in a six-digit reference number (same token count, checked); "
    "tok/s = (usage.completion_tokens - 1) / (wall_long - wall_1). A reply that ends before the budget counts "
    "only the tokens reported.",
    "Evaluation: the support-triage program rendered as promptloop's chat adapter renders it, with 4 demos (the "
    "first train example of each queue in id order, the 4 smallest ids) and the first N test examples in id "
    "order (splits by SHA-256 of the id, as promptloop); max_tokens 16, stop `[[ ## completed ## ]]`; sent "
    "sequentially. Wall = all N requests. A valid label is one of the seven queue names, exactly, on the first non-empty "
    "line after the `[[ ## queue ## ]]` marker (or of the whole reply if it has no marker); the strict count "
    "requires the whole section up to the next `[[ ## ... ## ]]` marker to be the name (a reply cut by the "
    "16-token budget, or one with a malformed end marker such as `[## completed ## ]`, keeps that text in the "
    "section). The evaluation is repeated; its min/median/max are over "
    "repetitions of all N requests.",
    "Prefix reuse: promptloop keeps the attention state of earlier prompts (`--prefix-cache-mb`); "
    "llama-cpp-python's server also keeps its context's state from the previous request and reuses the longest "
    "common token prefix (its default, no extra cache configured). So both reuse the shared evaluation prefix "
    "between consecutive requests; `promptloop-noreuse` shows the cost without it.",
    "Load: the 1-minute load average and a 3-second sample of busy cores before each phase; during each workload, "
    "the CPU seconds used by processes other than the server and this script (from /proc/stat) divided by wall "
    "time: near 0 means the machine was otherwise quiet.",
]


# ---------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--promptloop", default="target/release/promptloop", help="the promptloop binary")
    ap.add_argument("--llama-python", default="/tmp/peers/venv/bin/python",
                    help="a Python with llama-cpp-python[server] installed")
    ap.add_argument("--model", default=".promptloop/models/SmolLM2-135M-Instruct.Q4_1.gguf", help="the GGUF file")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench/results/engine.json")
    ap.add_argument("--md", default=None, help="Markdown table (default: --out with .md)")
    ap.add_argument("--only", choices=["promptloop", "llama"], help="run one server only")
    ap.add_argument("--no-noreuse", action="store_true", help="skip the promptloop --prefix-cache-mb 0 phase")
    ap.add_argument("--workloads", default="prefill,decode,eval")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 repetitions, 20 examples, 1 evaluation pass")
    ap.add_argument("--prefill-reps", type=int)
    ap.add_argument("--decode-reps", type=int)
    ap.add_argument("--eval-reps", type=int)
    ap.add_argument("--examples", type=int)
    ap.add_argument("--prefill-chars", type=int, default=1600,
                    help="length of the prefill prompt's message list (about 4 characters a token)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per request")
    ap.add_argument("--startup-timeout", type=float, default=600)
    ap.add_argument("--wait-quiet", type=float, default=0,
                    help="before each phase wait up to this many seconds for other processes to leave the cores idle")
    ap.add_argument("--quiet-busy-below", type=float, default=0.15,
                    help="fraction of all cores busy that counts as quiet (with --wait-quiet)")
    ap.add_argument("--busy-threshold", type=float, default=0.2,
                    help="cores' worth of CPU used by other processes during a workload above which it counts as "
                    "disturbed (recorded; with --retry-busy the phase is run again)")
    ap.add_argument("--retry-busy", type=int, default=0, help="run a disturbed phase again, up to this many times")
    ap.add_argument("--note", action="append", default=[], help="a note to record with the results")
    ap.add_argument("--log-dir", default=None, help="server logs (default: a temporary directory)")
    ap.add_argument("--render-only", metavar="JSON",
                    help="run nothing: rewrite the Markdown (and ratios, method text, --note notes) of an earlier "
                    "result file")
    args = ap.parse_args()

    if args.render_only:
        src = Path(args.render_only)
        doc = json.loads(src.read_text(encoding="utf-8"))
        doc["method"] = METHOD
        doc["notes"] = doc.get("notes", []) + [n for n in args.note if n not in doc.get("notes", [])]
        doc["ratios"] = summarize(doc["phases"])
        src.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        md_out = Path(args.md) if args.md else src.with_suffix(".md")
        md_out.write_text(markdown(doc), encoding="utf-8")
        print_table(doc)
        print(f"wrote {src} and {md_out}")
        return 0

    quick = args.quick
    prefill_reps = args.prefill_reps or (2 if quick else 5)
    decode_reps = args.decode_reps or (2 if quick else 3)
    eval_reps = args.eval_reps or (1 if quick else 3)
    n_examples = args.examples or (20 if quick else 100)
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    for w in workloads:
        if w not in ("prefill", "decode", "eval"):
            ap.error(f"unknown workload {w}")

    def resolve(p: str) -> Path:
        q = Path(p)
        return q if q.is_absolute() else (Path.cwd() / q).resolve()

    model = resolve(args.model)
    promptloop = resolve(args.promptloop)
    out = resolve(args.out)
    md_path = resolve(args.md) if args.md else out.with_suffix(".md")
    log_dir = Path(args.log_dir) if args.log_dir else Path(tempfile.mkdtemp(prefix="engine-bench-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    if not model.exists():
        sys.exit(f"model not found: {model}")

    binary: dict = {"path": str(promptloop)}
    if args.only != "llama":
        if not promptloop.exists():
            sys.exit(f"promptloop binary not found: {promptloop}")
        # Run a copy, so that a rebuild during the run cannot swap the binary between phases.
        copy = log_dir / "promptloop"
        shutil.copy2(promptloop, copy)
        binary.update({
            "sha256": sha256_of(copy),
            "mtime": datetime.fromtimestamp(promptloop.stat().st_mtime, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "repo_head_at_run": git_head(promptloop.parent),
        })
        promptloop = copy

    task = load_task()
    demos = pick_demos(task, 4)
    program = Program(task, demos)
    examples = list(task.test[:n_examples])
    ctx = {
        "task": task, "program": program, "examples": examples, "filler": build_filler(task, args.prefill_chars),
        "prefill_reps": prefill_reps, "decode_reps": decode_reps, "eval_reps": eval_reps,
        "timeout": args.timeout, "wait_quiet_s": args.wait_quiet, "quiet_busy_below": args.quiet_busy_below,
    }

    atexit.register(stop_all)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, f: (stop_all(), sys.exit(128 + s)))

    versions = {
        "promptloop": version_of([str(promptloop), "--version"]) if args.only != "llama" else None,
        "llama_cpp_python": version_of([args.llama_python, "-c", "import llama_cpp; print(llama_cpp.__version__)"])
        if args.only != "promptloop" else None,
        "bench_commit": git_head(),
        "promptloop_binary": binary,
        "python": platform.python_version(),
    }
    machine = {
        "nproc": nproc(), "cpu_count": os.cpu_count(), "cpu_model": cpu_model(), "mem_total_mb": mem_total_mb(),
        "platform": platform.platform(), "loadavg_1_5_15_at_start": loadavg(),
    }
    log(f"machine: {machine['nproc']} cores, {machine['cpu_model']}, load {machine['loadavg_1_5_15_at_start']}")
    log(f"versions: {versions}; server logs in {log_dir}")

    t = str(args.threads)
    plans = []
    if args.only != "llama":
        plans.append(("promptloop", "promptloop", lambda port: [str(promptloop), "lm", "serve", "--port", str(port),
                                                                "--model", str(model), "--threads", t], workloads))
        if not args.no_noreuse and "eval" in workloads:
            plans.append(("promptloop-noreuse", "promptloop",
                          lambda port: [str(promptloop), "lm", "serve", "--port", str(port), "--model", str(model),
                                        "--threads", t, "--prefix-cache-mb", "0"], ["eval"]))
    if args.only != "promptloop":
        plans.append(("llama.cpp", "llama", lambda port: [
            args.llama_python, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
            "--port", str(port), "--n_ctx", "4096", "--n_threads", t, "--n_threads_batch", t,
            "--model_alias", MODEL_ALIAS], workloads))

    phases = {}
    for name, kind, argv_of, wl in plans:
        discarded = []
        for attempt in range(1 + args.retry_busy):
            port = free_port()
            server = Server(name, kind, argv_of(port), port, log_dir, args.startup_timeout)
            phase = run_phase(name, server, wl, ctx)
            worst = interference(phase)
            if worst <= args.busy_threshold or attempt == args.retry_busy or "error" in phase:
                break
            log(f"[{name}] other processes used {worst} cores on average during a workload "
                f"(threshold {args.busy_threshold}); running the phase again")
            discarded.append({"other_cores_avg_max": worst, "summary": phase_summary(phase)})
        if discarded:
            phase["discarded_busy_attempts"] = discarded
        phases[name] = phase

    prefill_tokens = sorted({n for p in phases.values() for n in (p.get("prefill") or {}).get("prompt_tokens", [])})
    notes = list(args.note)
    busy = [(n, p["before"]["loadavg_1_5_15"][0]) for n, p in phases.items() if p["before"]["loadavg_1_5_15"][0] > 0.5]
    if busy:
        notes.append("1-minute load average above 0.5 before: " + ", ".join(f"{n} ({la})" for n, la in busy)
                     + " (the load average also counts the previous phase's server for about a minute; see "
                     "'other processes' CPU' for interference during the runs)")
    for n, p in phases.items():
        for w in ("prefill", "decode", "eval"):
            c = (p.get(w) or {}).get("cpu", {}).get("other_cores_avg")
            if c is not None and c > args.busy_threshold:
                notes.append(f"{n} {w}: other processes used {c} cores on average during the run: disturbed")
        if p.get("discarded_busy_attempts"):
            notes.append(f"{n}: {len(p['discarded_busy_attempts'])} earlier attempt(s) discarded as disturbed "
                         "(kept in the JSON)")
    doc = {
        "benchmark": "engine",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine,
        "versions": versions,
        "model": {"path": str(model), "bytes": model.stat().st_size, "sha256": sha256_of(model)},
        "settings": {
            "quick": quick, "threads": args.threads, "workloads": workloads, "prefill_reps": prefill_reps,
            "decode_reps": decode_reps, "decode_max_tokens": DECODE_TOKENS, "eval_reps": eval_reps,
            "eval_examples": n_examples, "eval_max_tokens": EVAL_MAX_TOKENS, "eval_stop": EVAL_STOP,
            "temperature": 0.0, "request_timeout_s": args.timeout, "log_dir": str(log_dir),
        },
        "dataset": {"pipeline": "pipelines/support-triage.toml", "license": "Banking77 (PolyAI), CC-BY-4.0",
                    "demos": [{"id": d.id, "queue": d.queue} for d in demos],
                    "examples": f"first {n_examples} of the test split ({len(task.test)}) in id order"},
        "prefill_prompt_tokens": prefill_tokens,
        "method": METHOD,
        "phases": phases,
        "notes": notes,
    }
    doc["ratios"] = summarize(phases)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    md_path.write_text(markdown(doc), encoding="utf-8")
    print_table(doc)
    print()
    for k, v in doc["ratios"].items():
        print(f"{k}: {v}")
    print(f"\nwrote {out} and {md_path}")
    return 0 if all("error" not in p for p in phases.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
