"""Shared loading for the peer baselines: the pipeline TOML, the dataset and its splits.

The splits match promptloop's exactly: an example's bucket is the first 8 bytes of
sha256(id) read big-endian, modulo 10000; train below 7000, dev below 8500, test the rest.

The support-triage data is built from Banking77 (PolyAI, CC-BY-4.0): Casanueva et al.,
"Efficient Intent Detection with Dual Sentence Encoders", NLP4ConvAI @ ACL 2020,
arXiv:2003.04807.
"""

from __future__ import annotations

import hashlib
import json
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


def bucket(example_id: str) -> int:
    digest = hashlib.sha256(example_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 10000


def split_of(example_id: str) -> str:
    b = bucket(example_id)
    if b < 7000:
        return "train"
    if b < 8500:
        return "dev"
    return "test"


def load_task(pipeline: Path = PIPELINE) -> Task:
    with open(pipeline, "rb") as f:
        cfg = tomllib.load(f)
    predictor = cfg["program"]["predictors"][0]
    sig = cfg["signatures"][predictor["signature"]]
    (in_name, in_spec), = sig["inputs"].items()
    (out_name, out_spec), = sig["outputs"].items()
    queues = tuple(out_spec["values"])

    path = REPO / cfg["dataset"]["path"]
    splits: dict[str, list[Example]] = {"train": [], "dev": [], "test": []}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            ex = Example(row["id"], row["inputs"][in_name], row["outputs"][out_name])
            splits[split_of(ex.id)].append(ex)
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
    )


def machine() -> dict:
    return {
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        # Other processes share the 2 cores; wall times are only comparable at a similar load.
        "loadavg_1_5_15_at_write": [round(x, 2) for x in os.getloadavg()],
    }


def write_result(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"{name}{RESULT_SUFFIX}"
    out = RESULTS / f"peers-{name}.json"
    doc = {
        "name": name,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "pipeline": str(PIPELINE.relative_to(REPO)),
        "dataset_license": "Banking77 (PolyAI), CC-BY-4.0",
        "server": {"base_url": SERVER_BASE, "model": SERVER_MODEL, "flags": SERVER_FLAGS,
                   "software": SERVER_SOFTWARE},
        "machine": machine(),
        **payload,
    }
    out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return out


if __name__ == "__main__":
    t = load_task()
    print(t.name, len(t.train), len(t.dev), len(t.test), t.queues)
