"""EFT builder: the SFT baseline judges the OpenAssistant pool; judgements that agree with people become judge data.

Input: the EFT pool (kind ``eft_eval``: a prompt, its human-ranked replies, ranks 0 = best),
as ``srlm seed`` writes it from OpenAssistant data. Output directory:

- ``eft_train.jsonl`` (kind ``eft``): ``{id, prompt, response, judgement, score, rank}``; the
  judgement is the judge's own output, cut after its score line, and ``score`` is what that
  text parses to. SFT trains on (rubric filled with prompt + response) -> judgement.
- ``eft_eval.jsonl`` (kind ``eft_eval``): held-out prompts with all their replies and human
  ranks, for the reward-modelling metrics.

Steps (pure logic in small functions below, model calls only in ``run``):

1. Optionally sample ``max_prompts`` pool prompts (seeded).
2. Split by prompt, seeded (``split_prompts``): ``eval_fraction`` of the prompts are held out.
   With ``eval_from = pool`` (default) the split is made on the whole pool *before* judging and
   the eval prompts are neither judged nor filtered: filtering them by the SFT baseline's
   agreement would leave an eval set that baseline already ranks perfectly, and the paper
   reports that baseline at 65.1% pairwise accuracy on its EFT eval split. ``eval_from =
   agreed`` judges the whole pool and splits only the prompts that agreed (the literal order
   "filter, then split"; its eval set is biased towards the judge that built it).
3. Judge every reply of the prompts to judge, ``samples`` times (``judge.judge_pairs``).
   One judgement text per reply (``choose_judgement``): among the samples with a valid score,
   the one whose score is closest to the mean of the valid scores (the first such sample on a
   tie). Its score is the reply's score from here on, so the training text and the score that
   passed the agreement check are the same.
4. Keep a prompt only when its scores order its replies as the people did (``agreement``):
   every pair of replies with different human ranks must have the better-ranked reply scored
   strictly higher. A tie or an unscored reply is a disagreement.
5. Down-sample the most frequent score among the training examples (``downsample``): mode
   ``second`` caps its count at ``downsample_factor`` x the count of the second most frequent
   score (a seeded random subset is kept, in the original order); ``none`` keeps everything.

Nothing is written unless the whole build succeeds; if no prompt agrees, the stage fails with
the counts (replies judged, parse failures, ties, wrong orders).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import random
import typing
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from srlm.backends import make_generator
from srlm.config import setting
from srlm.errors import SrlmError
from srlm.io import Record, atomic_path, read_jsonl, write_jsonl
from srlm.judge import JudgeConfig, judge_pairs, load_template, parse_score

log = logging.getLogger(__name__)

DownsampleMode = Literal["second", "none"]
DOWNSAMPLE_MODES: tuple[str, ...] = typing.get_args(DownsampleMode)
TRAIN_FILE, EVAL_FILE = "eft_train.jsonl", "eft_eval.jsonl"


@dataclasses.dataclass
class EFTConfig(JudgeConfig):
    seed: int = setting(0, "seed for judge sampling, the max_prompts sample, the train/eval split and down-sampling")
    eval_fraction: float = setting(
        0.25, "share of prompts held out for the EFT eval split (paper: 1,630 train / 541 eval, about 0.25)"
    )
    eval_from: Literal["pool", "agreed"] = setting(
        "pool",
        "pool: hold out eval prompts from the whole pool before judging (unbiased); "
        "agreed: split only the prompts whose judgements agreed with the human ranks",
    )
    downsample: DownsampleMode = setting(
        "second",
        "second: cap the most frequent score's training examples at downsample_factor x the count of the "
        "second most frequent score; none: keep all",
    )
    downsample_factor: float = setting(1.0, "multiplier of the second most frequent score's count (downsample=second)")
    max_prompts: int = setting(0, "pool prompts to use (seeded sample); 0 = all")

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.eval_fraction < 1.0:
            raise SrlmError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.downsample_factor <= 0:
            raise SrlmError(f"downsample_factor must be > 0, got {self.downsample_factor}")
        if self.max_prompts < 0:
            raise SrlmError(f"max_prompts must be >= 0 (0 = all), got {self.max_prompts}")


# ---------------------------------------------------------------- pure logic


def agreement(scores: Sequence[float | None], ranks: Sequence[int]) -> str:
    """``"agree"``, or why not: ``"unscored"``, ``"tie"`` or ``"order"`` (checked in that order).

    Agreement: for every pair of replies with different human ranks (0 = best), the better-ranked
    reply has the strictly higher score. Fewer than two replies cannot agree (``"unscored"``).
    """
    if len(scores) != len(ranks):
        raise ValueError(f"{len(scores)} scores for {len(ranks)} ranks")
    if len(scores) < 2 or any(s is None for s in scores):
        return "unscored"
    verdict = "agree"
    for (s1, r1), (s2, r2) in itertools.combinations(zip(scores, ranks, strict=True), 2):
        if r1 == r2:
            continue
        if s1 == s2:
            return "tie"
        if (r1 < r2) != (s1 > s2):  # type: ignore[operator]
            verdict = "order"
    return verdict


def agrees(scores: Sequence[float | None], ranks: Sequence[int]) -> bool:
    return agreement(scores, ranks) == "agree"


def choose_judgement(scores: Sequence[float | None]) -> int | None:
    """Index of the sample to keep: valid score closest to the mean of the valid ones (first on a tie)."""
    valid = [(i, s) for i, s in enumerate(scores) if s is not None]
    if not valid:
        return None
    mean = sum(s for _, s in valid) / len(valid)
    return min(valid, key=lambda item: (abs(item[1] - mean), item[0]))[0]


def trim_judgement(text: str, score: float) -> str:
    """The judgement up to the end of its last line that parses to ``score`` (the score line).

    Later text (the model rambling on after the score) is dropped so the training target ends
    with the score line; if no single line carries the score, the text is kept whole.
    """
    lines = text.strip().splitlines()
    for end in range(len(lines), 0, -1):
        if parse_score(lines[end - 1]) == score:
            trimmed = "\n".join(lines[:end]).strip()
            if parse_score(trimmed) == score:
                return trimmed
            break
    return text.strip()


def score_key(score: float) -> str:
    return f"{score:g}"


def score_histogram(examples: Sequence[Record]) -> dict[str, int]:
    counts = Counter(float(e["score"]) for e in examples)
    return {score_key(s): counts[s] for s in sorted(counts)}


def downsample(examples: list[Record], mode: str = "second", factor: float = 1.0, seed: int | str = 0) -> list[Record]:
    """Cap the most frequent score's examples (see the module doc); the order of the rest is kept.

    Nothing changes with mode ``none``, with fewer than two distinct scores, or when the most
    frequent score is already within the cap (e.g. shares first place with another score).
    """
    if mode not in DOWNSAMPLE_MODES:
        raise SrlmError(f"downsample must be one of {', '.join(DOWNSAMPLE_MODES)}, got {mode!r}")
    counts = Counter(float(e["score"]) for e in examples)
    if mode == "none" or len(counts) < 2:
        return list(examples)
    (top, top_count), (_, second_count) = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:2]
    cap = max(1, round(second_count * factor))
    if top_count <= cap:
        return list(examples)
    top_positions = [i for i, e in enumerate(examples) if float(e["score"]) == top]
    keep = set(random.Random(seed).sample(top_positions, cap))
    return [e for i, e in enumerate(examples) if float(e["score"]) != top or i in keep]


def split_prompts(ids: Sequence[str], eval_fraction: float, seed: int | str = 0) -> tuple[list[str], list[str]]:
    """Seeded prompt-level split -> (train ids, eval ids), each in input order; no id in both.

    ``round(eval_fraction x n)`` prompts go to eval, at least one when the fraction is above 0
    and there are two prompts or more, and never all of them.
    """
    unique = list(dict.fromkeys(ids))
    n = len(unique)
    n_eval = round(eval_fraction * n)
    if eval_fraction > 0 and n >= 2:
        n_eval = min(max(n_eval, 1), n - 1)
    else:
        n_eval = 0
    shuffled = sorted(unique)
    random.Random(seed).shuffle(shuffled)
    held_out = set(shuffled[:n_eval])
    return [i for i in unique if i not in held_out], [i for i in unique if i in held_out]


def sample_prompts(records: list[Record], max_prompts: int, seed: int | str = 0) -> list[Record]:
    """A seeded sample of ``max_prompts`` records (all when 0 or more than there are), in input order."""
    if not max_prompts or max_prompts >= len(records):
        return list(records)
    keep = set(random.Random(seed).sample(range(len(records)), max_prompts))
    return [r for i, r in enumerate(records) if i in keep]


def _with_ids(records: list[Record], where: str) -> list[Record]:
    """Pool records with a unique string id each (``p<line>`` when a record has none)."""
    out, seen = [], set()
    for i, r in enumerate(records, start=1):
        rid = str(r.get("id") or f"p{i}")
        if rid in seen:
            raise SrlmError(f"{where}: record {i}: id {rid!r} appears twice; pool ids must be unique")
        seen.add(rid)
        out.append({**r, "id": rid})
    return out


# ---------------------------------------------------------------- the stage


def judge_records(
    generator: Any, records: list[Record], config: EFTConfig, template: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Judge every reply; per prompt: its record, the chosen judgement and score per reply, the verdict."""
    items = [(r["prompt"], reply) for r in records for reply in r["replies"]]
    judged, stats = judge_pairs(generator, items, config, template=template, desc="EFT judging")
    results, cursor = [], 0
    for r in records:
        replies = judged[cursor : cursor + len(r["replies"])]
        cursor += len(r["replies"])
        picks = [choose_judgement(j["scores"]) for j in replies]
        scores = [None if k is None else j["scores"][k] for j, k in zip(replies, picks, strict=True)]
        texts = [None if k is None else j["judge_outputs"][k] for j, k in zip(replies, picks, strict=True)]
        results.append({"record": r, "scores": scores, "texts": texts, "verdict": agreement(scores, r["ranks"])})
    return results, stats.as_dict()


def examples_of(result: dict[str, Any]) -> list[Record]:
    r = result["record"]
    return [
        {
            "id": r["id"],
            "prompt": r["prompt"],
            "response": reply,
            "judgement": trim_judgement(text, score),
            "score": score,
            "rank": rank,
        }
        for reply, rank, text, score in zip(r["replies"], r["ranks"], result["texts"], result["scores"], strict=True)
    ]


def run(
    config: EFTConfig, model: str | Path, pool: str | Path, out: str | Path
) -> dict[str, Any]:
    """Build ``eft_train.jsonl`` and ``eft_eval.jsonl`` in ``out`` by judging ``pool`` with ``model``."""
    records = _with_ids(read_jsonl(pool, "eft_eval"), str(pool))
    template = load_template(config.template)
    used = sample_prompts(records, config.max_prompts, f"{config.seed}:max_prompts")
    ids = [r["id"] for r in used]
    by_id = {r["id"]: r for r in used}

    if config.eval_from == "pool":
        train_ids, eval_ids = split_prompts(ids, config.eval_fraction, f"{config.seed}:split")
        to_judge = [by_id[i] for i in train_ids]
        if not to_judge:
            raise SrlmError(f"{pool}: no prompts left to judge after holding out {len(eval_ids)} for eval")
    else:
        to_judge = used

    generator = make_generator(model, config)
    results, judge_stats = judge_records(generator, to_judge, config, template)
    verdicts = Counter(res["verdict"] for res in results)
    agreed = [res for res in results if res["verdict"] == "agree"]
    stats: dict[str, Any] = {
        "prompts_in": len(records),
        "prompts_used": len(used),
        "prompts_judged": len(to_judge),
        "replies_judged": judge_stats["replies"],
        "judgements": judge_stats["judgements"],
        "parse_failures": judge_stats["parse_failures"],
        "parse_failure_rate": judge_stats["parse_failure_rate"],
        "unscored_replies": judge_stats["unscored_replies"],
        "prompts_agreeing": len(agreed),
        "prompts_disagreeing": {"unscored": verdicts["unscored"], "tie": verdicts["tie"], "order": verdicts["order"]},
    }
    if not agreed:
        hint = (
            "The judge produced no valid 'Score: N' line at all: is the model the SFT baseline (trained on IFT), "
            "is max_new_tokens long enough, is the template right?"
            if judge_stats["unscored_replies"] == judge_stats["replies"]
            else "Use a stronger SFT baseline as the judge, more judge samples, or more pool prompts"
        )
        raise SrlmError(
            f"{pool}: 0 of {len(to_judge)} prompts agreed with the human ranks "
            f"({judge_stats['replies']} replies judged, {judge_stats['parse_failures']} of {judge_stats['judgements']} "
            f"judgements without a valid score, {judge_stats['unscored_replies']} replies unscored; prompts with an "
            f"unscored reply {verdicts['unscored']}, with tied scores {verdicts['tie']}, in the wrong order "
            f"{verdicts['order']}); nothing written to {out}. {hint}"
        )

    if config.eval_from == "agreed":
        agreed_ids = [res["record"]["id"] for res in agreed]
        train_ids, eval_ids = split_prompts(agreed_ids, config.eval_fraction, f"{config.seed}:split")
    train_set = set(train_ids)
    examples = [e for res in agreed if res["record"]["id"] in train_set for e in examples_of(res)]
    before = len(examples)
    hist_before = score_histogram(examples)
    examples = downsample(examples, config.downsample, config.downsample_factor, f"{config.seed}:downsample")
    eval_records = [by_id[i] for i in eval_ids]
    if not examples:
        raise SrlmError(
            f"{pool}: {len(agreed)} prompts agreed, but all of them went to the eval split; "
            "lower eval_fraction or use more prompts"
        )

    with atomic_path(out, directory=True) as tmp:
        write_jsonl(tmp / TRAIN_FILE, examples, "eft")
        write_jsonl(tmp / EVAL_FILE, eval_records, "eft_eval")
    stats.update(
        {
            "examples_before_downsampling": before,
            "examples_after_downsampling": len(examples),
            "score_histogram_before_downsampling": hist_before,
            "score_histogram": score_histogram(examples),
            "train_prompts": len({e["id"] for e in examples}),
            "train_examples": len(examples),
            "eval_prompts": len(eval_records),
            "eval_replies": sum(len(r["replies"]) for r in eval_records),
        }
    )
    log.info("EFT data written to %s: %s", out, stats)
    return stats
