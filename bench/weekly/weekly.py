#!/usr/bin/env python3
"""Week after week, shown: the worked example's weekly loop simulated over N weeks.

In a scratch clone of this repository's committed HEAD (with a local bare
repository as `origin`), each simulated week:

1. writes that week's production logs with scripts/demo-logs.py
   (`--first-week <week> --weeks 1`) into the pipeline's [source] folder;
2. runs `promptloop run support-triage --since <Monday> --until <next Monday>`
   with no token set (the run commits to the local branch
   promptloop/support-triage);
3. merges like a reviewer: on promote, the run's branch into main (fast-forward,
   else a merge commit); on hold, only the dataset files the run wrote
   (SavedRun.files under the dataset's folder): the data is merged every week;
   then pushes main to origin, where the next run reads production;
4. scores main's program.json on ONE fixed held-out set: the test split of the
   dataset as it was at week 0, before any pull (`promptloop eval` on a copy of
   the pipeline file whose [dataset] is that set, all of it test).

Writes <out>/weekly.jsonl (one line per week, week 0 = the start), <out>/weekly.md
(table and Mermaid chart), <out>/fixed-test.jsonl, and per week the run's log,
run.json and the per-example fixed-set results under <out>/weeks/.

Run it through bench/weekly/run.sh; see bench/weekly/README.md.
"""
import argparse
import datetime as dt
import hashlib
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PIPELINE = "support-triage"
FIXED = f"{PIPELINE}-fixed-test"  # the eval-only copy of the pipeline
BOT_BRANCH = f"promptloop/{PIPELINE}"
BASE = "main"
NO_TOKENS = ["GITHUB_TOKEN", "SLACK_BOT_TOKEN", "SLACK_WEBHOOK_URL", "GITHUB_ACTIONS"]


def log(message: str) -> None:
    print(f"[weekly {time.strftime('%H:%M:%S')}] {message}", flush=True)


def fail(message: str) -> None:
    sys.exit(f"weekly: error: {message}")


def git(cwd: Path, *args: str, check: bool = True) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if check and result.returncode != 0:
        fail(f"`git {' '.join(args)}` in {cwd} failed ({result.returncode}):\n{result.stderr.strip()}")
    return result.stdout.strip()


def iso_monday(week: str) -> dt.date:
    try:
        year, number = week.split("-W")
        return dt.date.fromisocalendar(int(year), int(number), 1)
    except ValueError:
        fail(f"--first-week {week!r} is not an ISO week like 2026-W48")


def iso_name(monday: dt.date) -> str:
    year, week, _ = monday.isocalendar()
    return f"{year}-W{week:02d}"


def split_of(example_id: str, split: dict) -> str:
    """promptloop's split (src/dataset/mod.rs split_of): SHA-256 of the id, first 8 bytes big-endian, mod 10 000."""
    bucket = int.from_bytes(hashlib.sha256(example_id.encode("utf-8")).digest()[:8], "big") % 10_000
    if bucket < round(split["train"] * 10_000):
        return "train"
    if bucket < round((split["train"] + split["dev"]) * 10_000):
        return "dev"
    return "test"


def no_token_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in NO_TOKENS}


def timed(cmd: list, cwd: Path, log_path: Path, env: dict = None) -> tuple:
    """Runs cmd with its output in log_path (and `env` added to its environment);
    (exit code, wall seconds, peak RSS MiB or None)."""
    time_path = log_path.with_suffix(".time")
    wrapped = cmd
    if Path("/usr/bin/time").exists():
        wrapped = ["/usr/bin/time", "-f", "%e %M", "-o", str(time_path), *cmd]
    start = time.monotonic()
    with open(log_path, "wb") as out:
        code = subprocess.run(wrapped, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                              env={**no_token_env(), **(env or {})}).returncode
    wall = time.monotonic() - start
    peak = None
    if time_path.exists():
        fields = time_path.read_text().split()
        if len(fields) >= 2 and fields[-1].isdigit():
            peak = int(fields[-1]) / 1024
        time_path.unlink()
    return code, wall, peak


def tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log, progress bars' carriage returns as line breaks."""
    text = path.read_text(errors="replace").replace("\r", "\n")
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


class Bench:
    def __init__(self, args):
        self.args = args
        self.out = args.out.resolve()
        self.weeks_dir = self.out / "weeks"
        self.scratch = Path(args.scratch).resolve() if args.scratch else Path(
            tempfile.mkdtemp(prefix="promptloop-weekly-"))
        self.work = self.scratch / "work"
        self.origin = self.scratch / "origin.git"
        self.rows = []
        self.started = time.monotonic()

    # ------------------------------------------------------------ setup

    def setup(self) -> None:
        args = self.args
        source_bin = Path(os.environ.get("PROMPTLOOP_BIN") or REPO / "target" / "release" / "promptloop").resolve()
        if not source_bin.is_file():
            fail(f"no promptloop binary at {source_bin}: build it (cargo build --release) or set PROMPTLOOP_BIN")
        if args.scratch and self.scratch.exists() and any(self.scratch.iterdir()):
            fail(f"--scratch {self.scratch} is not empty")
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.out.mkdir(parents=True, exist_ok=True)
        for stale in ("weekly.jsonl", "weekly.md"):  # an earlier bench's results in the same --out
            (self.out / stale).unlink(missing_ok=True)
        if self.weeks_dir.is_dir():
            for stale in self.weeks_dir.glob("week-*"):
                stale.unlink()
        self.weeks_dir.mkdir(exist_ok=True)

        # The same binary for every week, whatever a build does to target/ meanwhile.
        self.bin = self.scratch / "bin" / "promptloop"
        self.bin.parent.mkdir(exist_ok=True)
        shutil.copy2(source_bin, self.bin)
        self.bin_version = subprocess.run([str(self.bin), "--version"], capture_output=True, text=True).stdout.strip()

        # origin: a bare repository whose main is this repository's committed HEAD (read, never written).
        self.repo_head = git(REPO, "rev-parse", "HEAD")
        git(self.scratch, "init", "-q", "--bare", str(self.origin))
        git(self.origin, "fetch", "-q", "--no-tags", str(REPO), f"{self.repo_head}:refs/heads/{BASE}")
        git(self.origin, "symbolic-ref", "HEAD", f"refs/heads/{BASE}")
        git(self.scratch, "clone", "-q", str(self.origin), str(self.work))
        git(self.work, "config", "user.name", "weekly bench reviewer")
        git(self.work, "config", "user.email", "weekly-bench@example.invalid")
        git(self.work, "config", "commit.gpgsign", "false")
        if args.start == "declared":
            # Production starts as the hand-written program: what the loop lifts from week 1.
            artifact = f"artifacts/{PIPELINE}/program.json"
            if (self.work / artifact).exists():
                git(self.work, "rm", "-q", artifact)
                git(self.work, "commit", "-q", "-m", f"Start from the program as declared: remove {artifact}")
                git(self.work, "push", "-q", "origin", BASE)

        pipeline_file = self.work / "pipelines" / f"{PIPELINE}.toml"
        self.pipeline_text = pipeline_file.read_text()
        config = tomllib.loads(self.pipeline_text)
        self.dataset_path = config["dataset"]["path"]
        self.dataset_dir = str(Path(self.dataset_path).parent)
        self.split = config["dataset"]["split"]
        self.optimizer = args.optimizer or config.get("optimizer", {}).get("kind", "?")
        paths = config.get("source", {}).get("paths", [])
        if config.get("source", {}).get("kind") != "files" or not paths:
            fail(f"{pipeline_file} has no [source] of kind \"files\" to write the weekly logs for")
        self.logs_dir = self.work / Path(paths[0]).parent

        # The model: a link to this repository's copy; the response cache: the scratch's own, or --cache.
        model = config["lm"]["model"]
        model_source = (REPO / model).resolve()
        if not model_source.is_file():
            fail(f"no model at {model_source}: run scripts/setup-model.sh")
        (self.work / model).parent.mkdir(parents=True, exist_ok=True)
        (self.work / model).symlink_to(model_source)
        self.cache = self.work / ".promptloop" / "cache.sqlite"
        if args.cache:
            cache = args.cache.resolve()
            if cache.exists():
                self.cache.symlink_to(cache)
                log(f"response cache: {cache} (shared, updated in place)")
            else:
                log(f"response cache: a new one, copied to {cache} at the end")

        # Week 0's test split, saved aside: the fixed set every week is scored on.
        examples = (self.work / self.dataset_path).read_text(encoding="utf-8").splitlines()
        fixed = [line for line in examples if line.strip() and split_of(json.loads(line)["id"], self.split) == "test"]
        self.fixed_n = len(fixed)
        (self.out / "fixed-test.jsonl").write_text("\n".join(fixed) + "\n", encoding="utf-8")
        fixed_path = self.work / ".promptloop" / "weekly" / "fixed-test.jsonl"
        fixed_path.parent.mkdir(parents=True, exist_ok=True)
        fixed_path.write_text("\n".join(fixed) + "\n", encoding="utf-8")
        self.week0_examples = len([line for line in examples if line.strip()])
        # The eval-only pipeline: the same LM, adapter, program and metric; its dataset is the fixed set, all test.
        # It sits in pipelines/ (untracked) so its root, and so its response cache, is the scratch repository's.
        text = re.sub(r'(?m)^name = ".*"$', f'name = "{FIXED}"', self.pipeline_text, count=1)
        text, paths_done = re.subn(r'(?m)^(\[dataset\]\n(?:.*\n)*?)path = .*$',
                                   lambda m: m.group(1) + f'path = ".promptloop/weekly/fixed-test.jsonl"', text, count=1)
        text, split_done = re.subn(r'(?m)^(\[dataset\]\n(?:.*\n)*?)split = .*$',
                                   lambda m: m.group(1) + "split = { train = 0.0, dev = 0.0, test = 1.0 }", text,
                                   count=1)
        if not (paths_done and split_done):
            fail(f"cannot find [dataset] path and split in {pipeline_file} to point the fixed-set copy elsewhere")
        fixed_config = tomllib.loads(text)
        assert fixed_config["dataset"]["split"]["test"] == 1.0 and fixed_config["name"] == FIXED
        self.fixed_pipeline = self.work / "pipelines" / f"{FIXED}.toml"
        self.fixed_pipeline.write_text(text)

        log(f"scratch repository {self.work} (origin {self.origin}), main = {self.repo_head[:7]} of {REPO}")
        log(f"binary {source_bin} copied to {self.bin} ({self.bin_version})")
        log(f"fixed set: week 0's test split, {self.fixed_n} of {self.week0_examples} examples, "
            f"saved in {self.out / 'fixed-test.jsonl'}")

    # ------------------------------------------------------------ one week

    def fixed_score(self, label: str) -> dict:
        results = self.weeks_dir / f"{label}-fixed.jsonl"
        program = self.work / "artifacts" / PIPELINE / "program.json"
        cmd = [str(self.bin), "eval", str(self.fixed_pipeline.relative_to(self.work)), "--split", "test",
               "--results", str(results)]
        if program.exists():
            cmd += ["--artifact", str(program.relative_to(self.work))]
            which = f"artifacts/{PIPELINE}/program.json on main"
        else:
            cmd += ["--baseline"]
            which = "the declared program (no artifact on main)"
        log_path = self.weeks_dir / f"{label}-eval.log"
        code, wall, _ = timed(cmd, self.work, log_path)
        if code != 0:
            fail(f"`{' '.join(cmd)}` exited {code}; its output ({log_path}):\n{tail(log_path)}")
        scores = [json.loads(line)["score"] for line in results.read_text().splitlines() if line.strip()]
        usage = re.search(r"LM use: (.*)", log_path.read_text(errors="replace"))
        return {
            "n": len(scores),
            "score": sum(scores) / len(scores) if scores else None,
            "program": which,
            "program_sha256": hashlib.sha256(program.read_bytes()).hexdigest()[:12] if program.exists() else None,
            "wall_secs": round(wall, 1),
            "lm_use": usage.group(1).strip() if usage else None,
        }

    def week0(self) -> None:
        log("week 0: production on the fixed set, before any pull")
        fixed = self.fixed_score("week-00")
        row = {"week": 0, "iso_week": None, "examples": self.week0_examples, "decision": None,
               "production_test": None, "candidate_test": None, "test_n": None,
               "fixed_set_n": fixed["n"], "fixed_set_production": fixed["score"],
               "fixed_set_program": fixed["program_sha256"], "lm_calls": None, "run_wall_secs": None,
               "eval_lm_use": fixed["lm_use"], "eval_wall_secs": fixed["wall_secs"]}
        self.record(row)
        log(f"week 0: production {fixed['score']:.3f} on the fixed set (n = {fixed['n']}; {fixed['lm_use']})")

    def week(self, k: int, monday: dt.date) -> None:
        args, work = self.args, self.work
        name = iso_name(monday)
        label = f"week-{k:02d}"
        since, until = monday.isoformat(), (monday + dt.timedelta(days=7)).isoformat()

        # 1. That week's production logs, where the pipeline's [source] reads.
        gen = [sys.executable, str(REPO / "scripts" / "demo-logs.py"), "--seed", str(args.seed),
               "--first-week", name, "--weeks", "1", "--out-dir", str(self.logs_dir)]
        if args.banking77:
            gen += ["--banking77", str(args.banking77)]
        generated = subprocess.run(gen, capture_output=True, text=True)
        if generated.returncode != 0:
            fail(f"`{' '.join(gen)}` failed:\n{generated.stderr.strip()}")
        log(f"{label} {name}: {generated.stdout.strip()}")

        # 2. The weekly run, pulling exactly this week.
        cmd = [str(self.bin), "run", PIPELINE, "--since", since, "--until", until]
        if args.optimizer:
            cmd += ["--optimizer", args.optimizer]
        log(f"{label} {name}: {' '.join(cmd[1:])}")
        run_log = self.weeks_dir / f"{label}-run.log"
        # The simulated week has just ended: promptloop's clock says so (a pull refuses a future --until).
        code, wall, peak = timed(cmd, work, run_log, {"PROMPTLOOP_NOW": f"{until}T00:00:00Z"})
        if code != 0:
            fail(f"{label}: `promptloop {' '.join(cmd[1:])}` exited {code} after {wall:.0f} s; "
                 f"its output ({run_log}):\n{tail(run_log)}")
        run_json = work / ".promptloop" / "runs" / PIPELINE / "run.json"
        saved = json.loads(run_json.read_text())
        shutil.copy2(run_json, self.weeks_dir / f"{label}-run.json")
        report, files = saved["report"], saved["files"]
        headline = report["headline"]
        decision = headline["decision"]

        # 3. The reviewer merges: the whole run on promote, the data on hold; main goes to origin.
        git(work, "reset", "-q", "--hard", "HEAD")  # the run's files are in the work tree too:
        git(work, "clean", "-fdq", "--", "artifacts", self.dataset_dir)  # the branch has them
        bot_tip = git(work, "rev-parse", "--verify", f"refs/heads/{BOT_BRANCH}")
        if decision == "promote":
            merged = subprocess.run(["git", "merge", "--ff-only", "-q", BOT_BRANCH], cwd=work,
                                    capture_output=True, text=True)
            how = "fast-forward"
            if merged.returncode != 0:
                git(work, "merge", "-q", "--no-ff", "--no-edit", BOT_BRANCH)
                how = "merge commit"
            merged_files = files
        else:
            merged_files = [f for f in files if f.startswith(self.dataset_dir + "/")]
            how = "dataset files only"
            if merged_files:
                git(work, "checkout", BOT_BRANCH, "--", *merged_files)
                if git(work, "status", "--porcelain", "--", *merged_files):
                    git(work, "commit", "-q", "-m",
                        f"Merge {name}'s data from {BOT_BRANCH} ({bot_tip[:7]}); the prompts held", "--",
                        *merged_files)
        git(work, "push", "-q", "origin", BASE)
        for f in merged_files:  # main now carries exactly what the run wrote
            if git(work, "rev-parse", f"HEAD:{f}") != git(work, "rev-parse", f"{bot_tip}:{f}"):
                fail(f"{label}: {f} on main differs from the run's commit {bot_tip[:7]}")

        # 4. Production (main's program.json) on the fixed set.
        fixed = self.fixed_score(label)
        pulled = report.get("dataset") or {}
        cost = report["cost"]
        row = {
            "week": k,
            "iso_week": name,
            "window": [since, until],
            "examples": report["examples"]["examples"],
            "split": {s: report["examples"][s] for s in ("train", "dev", "test")},
            "added": sum((pulled.get("added") or {}).values()) if pulled else None,
            "inbox_added": pulled.get("inbox_added"),
            "records_in_window": pulled.get("records"),
            "pull": {
                "outside_window": pulled.get("outside_window"),
                "malformed": sum((pulled.get("malformed") or {}).values()),
                "duplicates": pulled.get("duplicates"),
                "sampled": pulled.get("sampled"),
                "added": pulled.get("added"),
            } if pulled else None,
            "decision": decision,
            "metric": headline["metric"],
            "reasons": headline.get("reasons", []),
            "production_test": headline["baseline"],
            "candidate_test": headline["candidate"],
            "test_n": headline["n"],
            "delta": headline["delta"],
            "interval": [headline["low"], headline["high"]],
            "mcnemar_p": headline.get("mcnemar_p"),
            "dev": report.get("dev"),
            "optimizer": report.get("optimizer"),
            "merged": how,
            "merged_files": merged_files,
            "fixed_set_n": fixed["n"],
            "fixed_set_production": fixed["score"],
            "fixed_set_program": fixed["program_sha256"],
            "lm_calls": cost["lm_calls"],
            "cache_hits": cost["cache_hits"],
            "tokens": cost["prompt_tokens"] + cost["completion_tokens"],
            "run_wall_secs": round(wall, 1),
            "run_peak_mib": round(peak) if peak else None,
            "eval_lm_use": fixed["lm_use"],
            "eval_wall_secs": fixed["wall_secs"],
        }
        self.record(row)
        log(f"{label} {name}: {decision} (test n = {headline['n']}: production {headline['baseline']:.3f}, "
            f"candidate {headline['candidate']:.3f}); merged {how}; fixed set {fixed['score']:.3f}; "
            f"{cost['lm_calls']} LM calls ({cost['cache_hits']} cached); run {wall / 60:.1f} min")

    # ------------------------------------------------------------ output

    def record(self, row: dict) -> None:
        self.rows.append(row)
        with open(self.out / "weekly.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        (self.out / "weekly.md").write_text(self.markdown(), encoding="utf-8")

    def markdown(self) -> str:
        rows, args = self.rows, self.args
        weeks = [r for r in rows if r["week"] > 0]
        promoted = sum(r["decision"] == "promote" for r in weeks)
        metric = next((r["metric"] for r in weeks if r.get("metric")), "score")
        f3 = lambda x: "–" if x is None else f"{x:.3f}"  # noqa: E731
        out = [f"# {PIPELINE}: week after week\n",
               f"{len(weeks)} simulated week{'s' if len(weeks) != 1 else ''} from {args.first_week} "
               f"(`{shlex.join(['bench/weekly/run.sh', *sys.argv[1:]])}`), optimizer `{self.optimizer}`, "
               f"logs seed {args.seed}{'; production starts as the declared program' if args.start == 'declared' else ''}; promptloop `{self.bin_version}`, repository at {self.repo_head[:7]}.",
               "",
               f"**{promoted} of {len(weeks)} weeks promoted.** Production is `artifacts/{PIPELINE}/program.json` on "
               f"main after each week's merge; the fixed set is week 0's test split ({self.fixed_n} examples, before "
               f"any pull), the same every week. *Run test* is the run's own test split, which grows with the "
               f"dataset.",
               "",
               "| week | logs | examples | added | decision | production (run test) | candidate (run test) | n | "
               "production (fixed set) | LM calls (cached) | run wall | run peak |",
               "|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            if r["week"] == 0:
                out.append(f"| 0 | (start) | {r['examples']} | – | – | – | – | – | "
                           f"{f3(r['fixed_set_production'])} | – | – | – |")
                continue
            wall = r["run_wall_secs"]
            out.append(
                f"| {r['week']} | {r['iso_week']} | {r['examples']} | {r['added']} | {r['decision']} | "
                f"{f3(r['production_test'])} | {f3(r['candidate_test'])} | {r['test_n']} | "
                f"{f3(r['fixed_set_production'])} | {r['lm_calls']:,} ({r['cache_hits']:,}) | "
                f"{int(wall // 60)} min {int(wall % 60):02d} s | "
                f"{'–' if r['run_peak_mib'] is None else str(r['run_peak_mib']) + ' MiB'} |")
        scores = [r["fixed_set_production"] for r in rows if r["fixed_set_production"] is not None]
        if scores:
            # As src/report/chart.rs: a tenth of a point of headroom either side, within 0..1.
            floor = math.floor(max(min(scores) - 0.05, 0.0) * 10) / 10
            ceiling = math.ceil(min(max(scores) + 0.05, 1.0) * 10) / 10
            labels = ", ".join('"start"' if r["week"] == 0 else f'"{r["iso_week"]}"' for r in rows)
            line = ", ".join(f"{s:.3f}" for s in scores)
            out += ["", "```mermaid", "xychart-beta",
                    f'    title "Production on the fixed set (n = {self.fixed_n}), by week"',
                    f"    x-axis [{labels}]",
                    f'    y-axis "{metric}" {floor:.1f} --> {ceiling:.1f}',
                    f"    line [{line}]", "```"]
        holds = [r for r in weeks if r["decision"] != "promote" and r.get("reasons")]
        if holds:
            out += ["", "Why each hold held:", ""]
            out += [f"- week {r['week']} ({r['iso_week']}): {'; '.join(r['reasons'])}" for r in holds]
        if weeks:
            total = sum(r["run_wall_secs"] for r in weeks)
            out += ["", f"Runs: {total / 60:.1f} min in all, {total / 60 / len(weeks):.1f} min a week on average; "
                        f"the whole bench (setup, logs, merges, fixed-set scoring included) "
                        f"{(time.monotonic() - self.started) / 60:.1f} min."]
        return "\n".join(out) + "\n"

    def finish(self) -> None:
        if self.args.cache and not self.args.cache.resolve().exists() and self.cache.exists():
            shutil.copy2(self.cache, self.args.cache.resolve())
            log(f"response cache copied to {self.args.cache.resolve()}")
        log(f"wrote {self.out / 'weekly.jsonl'} and {self.out / 'weekly.md'}")
        if self.args.clean:
            shutil.rmtree(self.scratch)
        else:
            log(f"the scratch repository stays in {self.work} (git log --all --graph there)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weeks", type=int, default=8, help="simulated weeks [default: 8]")
    parser.add_argument("--optimizer", help="passed to `promptloop run --optimizer` [default: the pipeline's]")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "weekly" / "results",
                        help="where weekly.jsonl, weekly.md and the per-week files go [default: bench/weekly/results]")
    parser.add_argument("--cache", type=Path, help="reuse this response cache (cache.sqlite); a missing one is "
                                                   "created and copied there at the end [default: the scratch's own]")
    parser.add_argument("--first-week", default="2026-W48", help="the first simulated week [default: 2026-W48]")
    parser.add_argument("--start", choices=["main", "declared"], default="main",
                        help="production at week 0: main's program.json as committed, or the program as declared "
                             "in the pipeline file (program.json removed from the scratch main) [default: main]")
    parser.add_argument("--seed", type=int, default=2026, help="scripts/demo-logs.py --seed [default: 2026]")
    parser.add_argument("--banking77", type=Path, help="scripts/demo-logs.py --banking77 [default: its own]")
    parser.add_argument("--scratch", help="make the scratch repository here (an empty or new folder) "
                                          "[default: a new temporary folder]")
    parser.add_argument("--clean", action="store_true", help="delete the scratch repository at the end")
    args = parser.parse_args()
    if args.weeks < 1:
        fail("--weeks must be at least 1")
    first = iso_monday(args.first_week)

    bench = Bench(args)
    bench.setup()
    bench.week0()
    for k in range(1, args.weeks + 1):
        bench.week(k, first + dt.timedelta(weeks=k - 1))
    bench.finish()
    print()
    print((args.out / "weekly.md").read_text())


if __name__ == "__main__":
    main()
