"""Shared loading for the peer baselines: the pipeline TOML, the dataset and its splits.

The splits match promptloop's exactly: an example's bucket is the first 8 bytes of
sha256(id) read big-endian, modulo 10000; train below 7000, dev below 8500, test the rest
(support-triage's 0.70 / 0.15 / 0.15; another pipeline's [dataset] split fractions give its
own bounds, rounded as promptloop rounds them).

Another pipeline can be loaded with load_task(path) (the scripts' --pipeline PATH): its
dataset path resolves as promptloop resolves it, against the parent of the pipeline's
pipelines/ folder (or the pipeline file's own folder), and its results are written to
bench/results/<pipeline name>-peers-<method>.json (outside table.py's peers-*.json, which
is support-triage's table). The default pipeline keeps the file names peers-<method>.json.

The support-triage data is built from Banking77 (PolyAI, CC-BY-4.0): Casanueva et al.,
"Efficient Intent Detection with Dual Sentence Encoders", NLP4ConvAI @ ACL 2020,
arXiv:2003.04807.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import tomllib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PIPELINE = REPO / "pipelines" / "support-triage.toml"
RESULTS = REPO / "bench" / "results"

SERVER_BASE = os.environ.get("PEERS_BASE_URL", "http://127.0.0.1:8081/v1")
SERVER_MODEL = os.environ.get("PEERS_MODEL", "smollm2")
# The server's flags as started (see README.md); recorded with each result.
SERVER_FLAGS = os.environ.get("PEERS_SERVER_FLAGS", "--n_ctx 4096 --n_threads 2 --model_alias smollm2")
SERVER_SOFTWARE = os.environ.get(
    "PEERS_SERVER_SOFTWARE", "llama-cpp-python[server]==0.3.36, SmolLM2-135M-Instruct.Q4_1.gguf"
)
# Appended to result file names, so runs against another server keep their own files.
RESULT_SUFFIX = os.environ.get("PEERS_RESULT_SUFFIX", "")


@dataclass(frozen=True)
class Example:
    id: str
    message: str
    queue: str


@dataclass(frozen=True)
class Task:
    name: str
    instructions: str
    input_field: str
    input_description: str
    output_field: str
    output_description: str
    queues: tuple[str, ...]
    train: tuple[Example, ...]
    dev: tuple[Example, ...]
    test: tuple[Example, ...]
    config: dict
    # The pipeline file it was loaded from, and its [dataset] split fractions.
    pipeline: Path = PIPELINE
    split_fractions: tuple[float, float, float] = (0.70, 0.15, 0.15)


def bucket(example_id: str) -> int:
    digest = hashlib.sha256(example_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 10000


def _round(x: float) -> int:
    # Rust's f64::round (promptloop's): halves away from zero.
    return int(math.floor(x + 0.5))


def split_of(example_id: str, fractions: tuple[float, float, float] | None = None) -> str:
    """promptloop's split_of (src/dataset/mod.rs); the default is support-triage's 0.70/0.15/0.15."""
    b = bucket(example_id)
    if fractions is None:
        train_end, dev_end = 7000, 8500
    else:
        train_end = _round(fractions[0] * 10000.0)
        dev_end = _round((fractions[0] + fractions[1]) * 10000.0)
    if b < train_end:
        return "train"
    if b < dev_end:
        return "dev"
    return "test"


def resolve_pipeline(path: str | Path) -> Path:
    """A pipeline path as given on the command line: as is if it exists, else relative to the repository."""
    p = Path(path)
    if not p.is_absolute() and not p.exists():
        p = REPO / p
    return p.resolve()


def project_root(pipeline: Path) -> Path:
    """promptloop's project root for a pipeline file: the parent of its pipelines/ folder, else its folder."""
    folder = Path(pipeline).resolve().parent
    return folder.parent if folder.name == "pipelines" else folder


def is_default(pipeline: Path) -> bool:
    return Path(pipeline).resolve() == PIPELINE.resolve()


def load_task(pipeline: Path = PIPELINE) -> Task:
    pipeline = Path(pipeline)
    with open(pipeline, "rb") as f:
        cfg = tomllib.load(f)
    split_cfg = cfg["dataset"].get("split", {})
    fractions = (float(split_cfg.get("train", 0.70)), float(split_cfg.get("dev", 0.15)),
                 float(split_cfg.get("test", 0.15)))
    predictor = cfg["program"]["predictors"][0]
    sig = cfg["signatures"][predictor["signature"]]
    (in_name, in_spec), = sig["inputs"].items()
    (out_name, out_spec), = sig["outputs"].items()
    queues = tuple(out_spec["values"])

    path = project_root(pipeline) / cfg["dataset"]["path"]
    splits: dict[str, list[Example]] = {"train": [], "dev": [], "test": []}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            ex = Example(row["id"], row["inputs"][in_name], row["outputs"][out_name])
            splits[split_of(ex.id, fractions)].append(ex)
    for part in splits.values():
        part.sort(key=lambda e: e.id)

    return Task(
        name=cfg["name"],
        instructions=sig["instructions"].strip(),
        input_field=in_name,
        input_description=in_spec.get("description", ""),
        output_field=out_name,
        output_description=out_spec.get("description", ""),
        queues=queues,
        train=tuple(splits["train"]),
        dev=tuple(splits["dev"]),
        test=tuple(splits["test"]),
        config=cfg,
        pipeline=pipeline,
        split_fractions=fractions,
    )


def machine() -> dict:
    return {
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        # Other processes share the 2 cores; wall times are only comparable at a similar load.
        "loadavg_1_5_15_at_write": [round(x, 2) for x in os.getloadavg()],
    }


@dataclass(frozen=True)
class Program:
    """A pipeline of any shape, as promptloop loads it: its TOML, signatures and raw examples per split.

    Each row is the dataset's JSON object (`id`, `inputs`, `outputs`, and `meta` where the
    dataset has it), split by split_of with the pipeline's [dataset] split fractions, each
    split in id order: the same ids in the same splits as promptloop.
    """
    name: str
    config: dict
    signatures: dict
    train: tuple[dict, ...]
    dev: tuple[dict, ...]
    test: tuple[dict, ...]
    pipeline: Path
    split_fractions: tuple[float, float, float]

    def split(self, name: str) -> tuple[dict, ...]:
        return {"train": self.train, "dev": self.dev, "test": self.test}[name]

    def instructions(self, signature: str) -> str:
        return self.signatures[signature]["instructions"].strip()


def load_program(pipeline: Path) -> Program:
    pipeline = Path(pipeline)
    with open(pipeline, "rb") as f:
        cfg = tomllib.load(f)
    split_cfg = cfg["dataset"].get("split", {})
    fractions = (float(split_cfg.get("train", 0.70)), float(split_cfg.get("dev", 0.15)),
                 float(split_cfg.get("test", 0.15)))
    path = project_root(pipeline) / cfg["dataset"]["path"]
    splits: dict[str, list[dict]] = {"train": [], "dev": [], "test": []}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                splits[split_of(row["id"], fractions)].append(row)
    for part in splits.values():
        part.sort(key=lambda r: r["id"])
    return Program(
        name=cfg["name"], config=cfg, signatures=cfg.get("signatures", {}),
        train=tuple(splits["train"]), dev=tuple(splits["dev"]), test=tuple(splits["test"]),
        pipeline=pipeline, split_fractions=fractions,
    )


def write_result(name: str, payload: dict, pipeline: Path = PIPELINE, pipeline_name: str | None = None,
                 dataset_license: str = "Banking77 (PolyAI), CC-BY-4.0") -> Path:
    """Writes bench/results/peers-<name>.json, or <pipeline name>-peers-<name>.json for another pipeline."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    pipeline = Path(pipeline).resolve()
    name = f"{name}{RESULT_SUFFIX}"
    if is_default(pipeline):
        out = RESULTS / f"peers-{name}.json"
    else:
        if pipeline_name is None:
            with open(pipeline, "rb") as f:
                pipeline_name = tomllib.load(f)["name"]
        out = RESULTS / f"{pipeline_name}-peers-{name}.json"
        name = f"{pipeline_name}-{name}"
    try:
        shown = str(pipeline.relative_to(REPO))
    except ValueError:
        shown = str(pipeline)
    doc = {
        "name": name,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "pipeline": shown,
        "dataset_license": dataset_license,
        "server": {"base_url": SERVER_BASE, "model": SERVER_MODEL, "flags": SERVER_FLAGS,
                   "software": SERVER_SOFTWARE},
        "machine": machine(),
        **payload,
    }
    out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return out


if __name__ == "__main__":
    import sys

    t = load_task(resolve_pipeline(sys.argv[1]) if len(sys.argv) > 1 else PIPELINE)
    print(t.name, len(t.train), len(t.dev), len(t.test), t.queues)
