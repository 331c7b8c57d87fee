"""Seed data: the project's own bundled seed set, or OpenAssistant data built into IFT + EFT pool.

The bundled set is original text written for this project (``srlm/data/``): IFT conversations,
EFT training examples (rubric judgements ending in the score line) and EFT eval items with
human ranks. It is small on purpose: enough to exercise every stage and train the tiny model.
"""

from __future__ import annotations

import dataclasses
import logging
from importlib import resources
from pathlib import Path
from typing import Any

from srlm.config import StageConfig, setting
from srlm.errors import SrlmError
from srlm.io import Record, atomic_path, iter_jsonl, read_jsonl, write_jsonl

log = logging.getLogger(__name__)

BUNDLED = {"ift": "seed_ift.jsonl", "eft_train": "seed_eft_train.jsonl", "eft_eval": "seed_eft_eval.jsonl"}
KINDS = {"ift": "ift", "eft_train": "eft", "eft_eval": "eft_eval"}


def bundled_path(name: str) -> Path:
    return Path(str(resources.files("srlm") / "data" / BUNDLED[name]))


def bundled(name: str) -> list[Record]:
    """One part of the bundled seed set: ``ift``, ``eft_train`` or ``eft_eval``."""
    return list(iter_jsonl(bundled_path(name), KINDS[name]))


def ift_prompts(records: list[Record]) -> list[str]:
    """The first user turn of each IFT conversation (the seed prompts of prompt generation)."""
    return [next(m["content"] for m in r["messages"] if m["role"] == "user") for r in records]


@dataclasses.dataclass
class SeedConfig(StageConfig):
    source: str = setting(
        "bundled",
        "bundled (the project's own seed set), testbed (checkable constraints, srlm.testbed), or OpenAssistant "
        "data: a local JSONL/parquet path (flat messages or nested trees) or a hub id such as OpenAssistant/oasst1",
    )
    split: str = setting("train", "hub split to read when source is a hub id")
    ift_count: int = setting(3200, "IFT examples to keep (paper: 3,200); 0 = all")
    min_replies: int = setting(2, "ranked assistant replies a prompt needs to enter the EFT pool")
    lang: str = setting("en", "language code kept")
    skip_synthetic: bool = setting(True, "drop synthetic (model-written) prompts and replies")
    seed: int = setting(0, "seed for sampling IFT examples")



def run(config: SeedConfig, out: str | Path, testbed: Any = None) -> dict[str, Any]:
    """Write ``ift.jsonl`` and, depending on the source, ``eft_train``/``eft_eval`` or ``eft_pool``.

    The bundled source ships judged EFT data; OpenAssistant yields an EFT *pool* of ranked
    replies that the EFT builder turns into judge data with the SFT baseline; the testbed
    (``testbed``: its TestbedConfig) also writes ``prompts.jsonl`` and ``verify.jsonl``.
    """
    if config.source == "testbed":
        from srlm import testbed as tb

        return tb.run(testbed or tb.TestbedConfig(), out)
    if config.source == "bundled":
        parts = {name: bundled(name) for name in BUNDLED}
        if config.ift_count:
            parts["ift"] = parts["ift"][: config.ift_count]
    else:
        from srlm import oasst

        ift, pool = oasst.build(config)
        parts = {"ift": ift, "eft_pool": pool}
    counts = {}
    with atomic_path(out, directory=True) as tmp:
        for name, records in parts.items():
            counts[name] = write_jsonl(tmp / f"{name}.jsonl", records, KINDS.get(name, "eft_eval"))
    log.info("seed data written to %s: %s", out, counts)
    return counts


def read_seed_prompts(path: str | Path | None) -> list[str]:
    """Seed prompts for prompt generation: an IFT file's first user turns (default: bundled)."""
    records = read_jsonl(path, "ift") if path else bundled("ift")
    prompts = ift_prompts(records)
    if not prompts:
        raise SrlmError(f"{path}: no seed prompts")
    return prompts
