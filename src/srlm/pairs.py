"""Preference pairs from self-judged candidates: chosen = highest mean score, rejected = lowest.

Replies without a valid judge score are left out; a prompt whose best and worst scores are
equal (or with fewer than two scored replies) gives no pair: ties are dropped, never kept. Nor is
a pair whose best and worst reply are the same text (sampled twice, judged apart): DPO learns
nothing from it (``same_text_dropped`` counts them).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from srlm.config import StageConfig, setting
from srlm.errors import SrlmError
from srlm.io import Record, read_jsonl, write_jsonl
from srlm.reliability import round_judge_stats

log = logging.getLogger(__name__)


@dataclasses.dataclass
class PairsConfig(StageConfig):
    min_margin: float = setting(0.0, "keep a pair only if chosen - rejected score exceeds this (paper: any difference)")
    verifier: str = setting("", "programmatic verifier (testbed) that grades the pairs: shares ordered as the judge "
                            "did, inverted, tied; empty = none")

    def validate(self) -> None:
        if self.verifier:
            from srlm.verifiers import get_verifier

            get_verifier(self.verifier)


def best_and_worst(record: Record, min_margin: float = 0.0) -> tuple[Record, Record] | None:
    """The (chosen, rejected) replies of one judged prompt, or None for a tie or too few scores."""
    scored = [r for r in record["replies"] if r["mean"] is not None]
    if len(scored) < 2:
        return None
    # max/min keep the first of equal scores, so the choice is deterministic.
    chosen = max(scored, key=lambda r: r["mean"])
    rejected = min(scored, key=lambda r: r["mean"])
    if chosen["mean"] - rejected["mean"] <= min_margin:
        return None
    return chosen, rejected


def build_pairs(records: list[Record], config: PairsConfig) -> tuple[list[Record], dict[str, Any]]:
    pairs = []
    ties = same_text = 0
    for record in records:
        picked = best_and_worst(record, config.min_margin)
        if picked is None:
            ties += 1
            continue
        chosen, rejected = picked
        if chosen["text"] == rejected["text"]:  # one reply sampled twice and judged apart: no preference to learn
            same_text += 1
            continue
        pairs.append({
            "id": record["id"], "prompt": record["prompt"],
            "chosen": chosen["text"], "rejected": rejected["text"],
            "chosen_score": chosen["mean"], "rejected_score": rejected["mean"],
        })
    replies = [r for record in records for r in record["replies"]]
    stats = {
        "prompts": len(records),
        "replies": len(replies),
        "unscored_replies": sum(1 for r in replies if r["mean"] is None),
        "ties_or_unpaired": ties,
        "same_text_dropped": same_text,
        "pairs": len(pairs),
        "pair_yield": len(pairs) / len(records) if records else 0.0,
        "chosen_mean_chars": _mean(len(p["chosen"]) for p in pairs),
        "rejected_mean_chars": _mean(len(p["rejected"]) for p in pairs),
        "chosen_mean_score": _mean(p["chosen_score"] for p in pairs),
        "rejected_mean_score": _mean(p["rejected_score"] for p in pairs),
        **round_judge_stats(records),  # how far this round's self-judge can be trusted (srlm.reliability)
    }
    return pairs, stats


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def run(config: PairsConfig, judgements: str | Path, out: str | Path) -> dict[str, Any]:
    """Write preference pairs; a round that yields none stops here, with the counts that explain why."""
    records = read_jsonl(judgements, "judgements")
    pairs, stats = build_pairs(records, config)
    if not pairs:
        raise SrlmError(
            f"{judgements}: 0 preference pairs from {stats['prompts']} prompts "
            f"({stats['unscored_replies']} of {stats['replies']} replies had no valid score, "
            f"{stats['ties_or_unpaired']} prompts tied or had < 2 scored replies, {stats['same_text_dropped']} had the "
            "same text as best and worst); nothing to train DPO on"
        )
    if config.verifier:
        from srlm.verifiers import pair_quality

        stats.update({f"verifier_{k}": v for k, v in pair_quality(pairs, config.verifier).items() if k != "pairs"})
    write_jsonl(out, pairs, "pair")
    log.info("pairs: %s", stats)
    return stats
