"""Candidate sampling: N replies per prompt from the current model M(t) (paper: N=4, T 0.7, top-p 0.9)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from srlm.config import StageConfig, setting
from srlm.errors import SrlmError
from srlm.generation import GenerationOptions, make_generator
from srlm.io import check_output_free, read_prompts, write_jsonl

log = logging.getLogger(__name__)


@dataclasses.dataclass
class SamplingConfig(GenerationOptions, StageConfig):
    n: int = setting(4, "replies sampled per prompt")
    temperature: float = setting(0.7, "sampling temperature")
    top_p: float = setting(0.9, "nucleus sampling top-p")
    max_new_tokens: int = setting(512, "tokens per reply")
    max_prompts: int = setting(0, "use only the first N prompts; 0 = all")

    PRESETS = {"tiny": {"max_new_tokens": 48}}

    def validate(self) -> None:
        if self.n < 2:
            raise SrlmError(f"n must be >= 2 to form preference pairs, got {self.n}")


def run(config: SamplingConfig, model: str | Path, prompts: str | Path, out: str | Path, overwrite: bool = False) -> dict[str, Any]:
    """Write one candidates record per prompt: ``{id, prompt, replies: [n texts]}``."""
    check_output_free(out, overwrite)
    records = read_prompts(prompts)
    if config.max_prompts:
        records = records[: config.max_prompts]
    generator = make_generator(model, config)
    replies = generator.generate(
        [r["prompt"] for r in records], n=config.n, temperature=config.temperature, top_p=config.top_p,
        max_new_tokens=config.max_new_tokens, seed=config.seed, desc="sampling",
    )
    rows = [{"id": r["id"], "prompt": r["prompt"], "replies": texts} for r, texts in zip(records, replies)]
    write_jsonl(out, rows, "candidates")
    lengths = [len(t) for texts in replies for t in texts]
    stats = {
        "prompts": len(rows),
        "replies": len(lengths),
        "empty_replies": sum(1 for n in lengths if n == 0),
        "mean_reply_chars": sum(lengths) / len(lengths) if lengths else 0.0,
    }
    log.info("sampled %s", stats)
    return stats
