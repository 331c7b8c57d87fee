"""Candidate sampling: N replies per prompt from the current model M(t) (paper: N=4, T 0.7, top-p 0.9)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from srlm import resume
from srlm.backends import make_generator
from srlm.config import StageConfig, setting
from srlm.errors import SrlmError
from srlm.generation import GenerationOptions, check_shard, truncation_stats
from srlm.io import Record, read_prompts, validate, write_jsonl
from srlm.shards import gather, is_sharded, write_shard

log = logging.getLogger(__name__)


@dataclasses.dataclass
class SamplingConfig(GenerationOptions, StageConfig):
    n: int = setting(4, "replies sampled per prompt")
    temperature: float = setting(0.7, "sampling temperature")
    top_p: float = setting(0.9, "nucleus sampling top-p")
    max_new_tokens: int = setting(
        2048, "tokens per reply (not given in the paper; its answers grow to ~2,500 characters by M3, so 512 would "
        "cut them: the stage reports truncated_share)")
    max_prompts: int = setting(0, "use only the first N prompts; 0 = all")
    resume_chunk: int = setting(512, "prompts per saved chunk: a retried or re-run stage continues after the last "
                                     "complete chunk (srlm.resume); 0 = no chunks")

    def validate(self) -> None:
        if self.resume_chunk < 0:
            raise SrlmError(f"resume_chunk must be >= 0 (0 = no chunks), got {self.resume_chunk}")
        if self.n < 2:
            raise SrlmError(f"n must be >= 2 to form preference pairs, got {self.n}")


def run(
    config: SamplingConfig, model: str | Path, prompts: str | Path, out: str | Path,
    shard: tuple[int, int] | None = None, progress_volume: str = "",
) -> dict[str, Any]:
    """Write one candidates record per prompt: ``{id, prompt, replies: [n texts]}``.

    With ``shard=(k, K)``, K > 1, only shard k's prompts are sampled (the generator picks them and
    seeds them by their global position) and ``out`` is a shard file (``srlm.shards``);
    ``merge_shards`` of the K shard files is byte for byte the unsharded output. With
    ``config.resume_chunk`` the work is saved in chunks (``srlm.resume``, on ``progress_volume`` when
    given) and a re-run continues after the last complete one, to the same bytes.
    """
    records = read_prompts(prompts)
    if config.max_prompts:
        records = records[: config.max_prompts]
    sharded = is_sharded(shard)
    chunks = resume.plan(out, len(records), config, model, prompts, shard, progress_volume)
    if chunks is None:
        return _sample(config, make_generator(model, config), records, out, shard if sharded else None)
    todo = chunks.todo()
    generator = make_generator(model, config) if todo else None
    sampled_now = sum(_sample(config, generator, records, path, part)["prompts"] for part, path in todo)
    if sharded:
        rows, counts = resume.join_shard(chunks, "candidates", out, shard)
        k, total = check_shard(shard)
        stats = {**candidate_stats(rows), **truncation_stats(counts.get("sequences", 0), counts.get("truncated", 0)),
                 "shard": k, "shards": total}
    else:
        stats = merge_shards(chunks.files(), out)
        stats.pop("shards")
    chunks.clear()
    return {**stats, **chunks.stats(), "prompts_sampled_now": sampled_now}


def _sample(config: SamplingConfig, generator: Any, records: list[Record], out: str | Path,
            shard: tuple[int, int] | None) -> dict[str, Any]:
    """Sample ``records`` (shard ``shard`` of them: a shard file) into ``out``; this call's statistics."""
    sharded = is_sharded(shard)
    before = dataclasses.replace(generator.stats)
    replies = generator.generate(
        [r["prompt"] for r in records], n=config.n, temperature=config.temperature, top_p=config.top_p,
        max_new_tokens=config.max_new_tokens, seed=config.seed, desc="sampling",
        **({"shard": check_shard(shard)} if sharded else {}),
    )
    made = generator.stats.since(before)
    rows = [(i, {"id": r["id"], "prompt": r["prompt"], "replies": texts})
            for i, (r, texts) in enumerate(zip(records, replies)) if texts is not None]
    if sharded:
        for i, row in rows:
            validate("candidates", row, f"{out} (prompt {i + 1}, before writing)")
        write_shard(out, "candidates", shard, len(records), rows,
                    {"sequences": made.sequences, "truncated": made.truncated})
        k, total = check_shard(shard)
        stats = {**candidate_stats([row for _, row in rows]), **made.truncation(), "shard": k, "shards": total}
    else:
        write_jsonl(out, [row for _, row in rows], "candidates")
        stats = {**candidate_stats([row for _, row in rows]), **made.truncation()}
    log.info("sampled %s", stats)
    return stats


def candidate_stats(rows: list[Record]) -> dict[str, Any]:
    lengths = [len(t) for row in rows for t in row["replies"]]
    return {
        "prompts": len(rows),
        "replies": len(lengths),
        "empty_replies": sum(1 for n in lengths if n == 0),
        "mean_reply_chars": sum(lengths) / len(lengths) if lengths else 0.0,
    }


def merge_shards(shard_files: list[str | Path], out: str | Path) -> dict[str, Any]:
    """The K candidates shard files of one sampling run (any order) as one candidates file, in prompt order."""
    rows, total, counts = gather(shard_files, "candidates")
    write_jsonl(out, rows, "candidates")
    truncation = truncation_stats(counts.get("sequences", 0), counts.get("truncated", 0))
    stats = {**candidate_stats(rows), **truncation, "shards": total}
    log.info("merged %d candidates shards: %s", total, stats)
    return stats
