"""Reward-model evaluation: the model judges the EFT eval split's replies; its scores against the human ranks.

``run_rm`` judges every reply of the EFT eval items with the rubric and compares the scores with
the human ranks (pairwise accuracy, 5-best, exact match, Spearman, Kendall tau-b; the definitions
are SRLM_SPEC.md's, see ``reward_model_metrics``). Writes ``metrics.json``, ``judgements.jsonl``
and ``report.md`` into a directory, atomically. Fractions are in [0, 1]; the report shows percentages.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from srlm.backends import make_generator
from srlm.config import setting
from srlm.errors import SrlmError
from srlm.io import Record, atomic_path, read_jsonl, validate, write_json, write_jsonl
from srlm.judge import JudgeConfig, judge_pairs, load_template
from srlm.metrics import RM_METRICS
from srlm.reliability import ranked_calibration
from srlm.reports import clip, fence, heading, lineage_summary, lineage_text, num, pct

log = logging.getLogger(__name__)

FIVE_BEST_THRESHOLD = 4.5

# SRLM_SPEC.md, "Evaluation (paper)": Llama 2 70B on the paper's EFT eval split. Context only:
# a different model or eval set gives numbers that are not comparable.
PAPER_RM = {
    name: dict(zip(RM_METRICS, values))
    for name, values in {
        "SFT baseline": (0.651, 0.396, 0.101, 0.253, 0.233),
        "M1": (0.787, 0.415, 0.131, 0.279, 0.253),
        "M2": (0.804, 0.443, 0.143, 0.331, 0.315),
        "M3": (0.817, 0.432, 0.143, 0.349, 0.324),
    }.items()
}
# Head-to-head (GPT-4 judge, 256 prompts, both orders): win / tie / loss %.

def _score(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def reward_model_metrics(items: Sequence[Record], scores: Sequence[Sequence[float | None]]) -> dict[str, Any]:
    """Reward-model metrics of model ``scores`` against human ranks (SRLM_SPEC.md, "(ours)").

    ``items`` are ``eft_eval`` records (``prompt``, ``replies``, ``ranks``; rank 0 = best) and
    ``scores[i][j]`` the model's score of reply j of item i: the mean of its valid judge scores,
    or None when the reply is unscored. Returned fractions are in [0, 1]:

    - ``pairwise_accuracy``: over all pairs of replies of one prompt with different human ranks,
      the share the model orders the same way (higher score = better). A tie in model scores or
      an unscored reply counts as wrong; ``pairwise_tie_share`` is the share of pairs tied.
    - ``five_best``: among replies with score >= 4.5, the share that are the prompt's human top
      reply (its lowest rank). None when no reply reaches 4.5 (``counts.five_best_candidates`` 0).
    - ``exact_match``: share of prompts whose replies, all scored and sorted by model score with
      no ties, are in exactly the human order.
    - ``spearman`` / ``kendall_tau`` (tau-b, scipy): per prompt, between the scored replies' model
      scores and their negated human ranks, averaged over prompts with >= 2 scored replies; a
      prompt whose scores are all equal contributes 0. None when no prompt qualifies.
    """
    from scipy import stats as st

    if len(items) != len(scores):
        raise SrlmError(f"reward-model metrics: {len(items)} eval items but {len(scores)} score lists")
    if not items:
        raise SrlmError("reward-model metrics: no eval items")
    pairs = correct = ties = unscored_pairs = 0
    candidates = top_hits = exact = 0
    replies = unscored = 0
    spearman: list[float] = []
    kendall: list[float] = []
    constant_prompts = 0
    for i, (item, raw) in enumerate(zip(items, scores)):
        validate("eft_eval", item, f"eval item {i}")
        ranks = item["ranks"]
        if len(raw) != len(ranks):
            raise SrlmError(f"eval item {i}: {len(ranks)} replies but {len(raw)} scores")
        s = [_score(v) for v in raw]
        replies += len(s)
        unscored += sum(v is None for v in s)
        top = min(ranks)
        item_pairs = item_correct = 0
        for j in range(len(s)):
            for k in range(j + 1, len(s)):
                if ranks[j] == ranks[k]:
                    continue
                item_pairs += 1
                if s[j] is None or s[k] is None:
                    unscored_pairs += 1
                    continue
                if s[j] == s[k]:
                    ties += 1
                    continue
                better, worse = (j, k) if ranks[j] < ranks[k] else (k, j)
                item_correct += s[better] > s[worse]  # type: ignore[operator]
        pairs += item_pairs
        correct += item_correct
        # Every pair ordered correctly <=> all scored, no ties, sorted order = human order.
        exact += item_pairs > 0 and item_correct == item_pairs
        for v, r in zip(s, ranks):
            if v is not None and v >= FIVE_BEST_THRESHOLD:
                candidates += 1
                top_hits += r == top
        scored = [(v, -r) for v, r in zip(s, ranks) if v is not None]
        if len(scored) >= 2:
            x, y = [v for v, _ in scored], [r for _, r in scored]
            if len(set(x)) == 1:
                constant_prompts += 1
                spearman.append(0.0)
                kendall.append(0.0)
            else:
                spearman.append(float(st.spearmanr(x, y).statistic))
                kendall.append(float(st.kendalltau(x, y, variant="b").statistic))
    return {
        "pairwise_accuracy": correct / pairs if pairs else None,
        "pairwise_tie_share": ties / pairs if pairs else None,
        "five_best": top_hits / candidates if candidates else None,
        "exact_match": exact / len(items),
        "spearman": statistics.fmean(spearman) if spearman else None,
        "kendall_tau": statistics.fmean(kendall) if kendall else None,
        "counts": {
            "prompts": len(items),
            "replies": replies,
            "unscored": unscored,
            "pairs": pairs,
            "pairs_correct": correct,
            "pairs_tied": ties,
            "pairs_with_unscored": unscored_pairs,
            "five_best_candidates": candidates,
            "exact_matches": exact,
            "correlation_prompts": len(spearman),
            "constant_score_prompts": constant_prompts,
        },
    }


@dataclasses.dataclass
class RMEvalConfig(JudgeConfig):
    """Reward-model evaluation: the judge settings (paper: 3 samples, T 0.7, top-p 0.9) plus scope."""

    max_items: int = setting(0, "evaluate only the first N eval prompts; 0 = all")
    report_examples: int = setting(3, "example judgements shown in report.md")

    def validate(self) -> None:
        super().validate()
        if self.max_items < 0:
            raise SrlmError(f"max_items must be >= 0 (0 = all), got {self.max_items}")
        if self.report_examples < 0:
            raise SrlmError(f"report_examples must be >= 0, got {self.report_examples}")


def run_rm(
    config: RMEvalConfig, model: str | Path, eft_eval: str | Path, out: str | Path
) -> dict[str, Any]:
    """Judge every reply of the EFT eval items with ``model`` and write metrics and a report to ``out/``."""
    items = read_jsonl(eft_eval, "eft_eval")
    if config.max_items:
        items = items[: config.max_items]
    template = load_template(config.template)
    generator = make_generator(model, config)
    flat = [(item["prompt"], reply) for item in items for reply in item["replies"]]
    judged, stats = judge_pairs(generator, flat, config, template, desc="judging eval replies")
    generator.close()
    del generator

    rows, scores, cursor = [], [], 0
    for i, item in enumerate(items):
        k = len(item["replies"])
        replies = [{**r, "human_rank": rank} for r, rank in zip(judged[cursor : cursor + k], item["ranks"])]
        cursor += k
        scores.append([r["mean"] for r in replies])
        rows.append({"id": str(item.get("id", f"e{i + 1}")), "prompt": item["prompt"], "replies": replies})

    metrics = reward_model_metrics(items, scores)
    metrics["judge_parse_failure_rate"] = stats.parse_failure_rate
    metrics.update(ranked_calibration(rows))  # how far the judge's scores can be trusted (srlm.reliability)
    metrics["judge"] = stats.as_dict()
    metrics["run"] = {
        "model": str(model),
        "model_lineage": lineage_summary(model),
        "eft_eval": str(eft_eval),
        "settings": config.to_dict(),
    }
    if stats.replies and stats.unscored_replies == stats.replies:
        log.warning("the judge produced no valid score for any of %d replies: every metric is at its floor",
                    stats.replies)
    with atomic_path(out, directory=True) as tmp:
        write_json(tmp / "metrics.json", metrics)
        write_jsonl(tmp / "judgements.jsonl", rows, "judgements")
        (tmp / "report.md").write_text(rm_report(metrics, rows, config.report_examples), encoding="utf-8")
    log.info(
        "reward-model eval of %s: pairwise accuracy %s, parse failures %d/%d",
        model, pct(metrics["pairwise_accuracy"]), stats.parse_failures, stats.judgements,
    )
    return metrics


def rm_report(metrics: dict[str, Any], rows: list[Record], examples: int = 3, level: int = 1) -> str:
    """The Markdown report of ``run_rm``: metrics beside the paper's numbers, then examples."""
    counts, judge, run = metrics["counts"], metrics["judge"], metrics.get("run", {})
    lines = [
        heading(level, "Reward-model evaluation"),
        "",
        f"- Model: `{run.get('model', '?')}`{lineage_text(run.get('model_lineage'))}",
        f"- Eval items: `{run.get('eft_eval', '?')}` — {counts['prompts']} prompts, {counts['replies']} replies "
        f"({counts['replies'] / max(counts['prompts'], 1):.2f} per prompt), {counts['pairs']} ranked pairs",
        f"- Judge: {run.get('settings', {}).get('samples', '?')} samples per reply; "
        f"{judge['parse_failures']} of {judge['judgements']} judgements had no valid score line "
        f"(parse-failure rate {pct(judge['parse_failure_rate'])}%); {counts['unscored']} replies unscored",
        "",
    ]
    if counts["replies"] and counts["unscored"] == counts["replies"]:
        lines += ["> **Warning:** no reply got a valid score: every metric below is at its floor. "
                  "Train the judge on EFT data or raise `max_new_tokens`.", ""]
    header = "| metric | this model | " + " | ".join(f"paper {name}" for name in PAPER_RM) + " |"
    lines += [header, "|" + "---|" * (2 + len(PAPER_RM))]
    rows_spec = [
        ("pairwise accuracy %", "pairwise_accuracy", pct),
        ("5-best %", "five_best", pct),
        ("exact match %", "exact_match", pct),
        ("Spearman", "spearman", num),
        ("Kendall tau-b", "kendall_tau", num),
    ]
    for label, key, fmt in rows_spec:
        paper = " | ".join(fmt(PAPER_RM[name][key]) for name in PAPER_RM)
        lines.append(f"| {label} | **{fmt(metrics[key])}** | {paper} |")
    lines.append(f"| pairwise tie share % | {pct(metrics['pairwise_tie_share'])} |" + " |" * len(PAPER_RM))
    lines += [
        "",
        "Paper numbers: Llama 2 70B on the paper's EFT eval split (SRLM_SPEC.md), shown for context only; "
        "they are not comparable with a different model or eval set.",
        "",
        "Definitions: pairwise accuracy counts tied or unscored pairs as wrong; 5-best is the share of replies "
        f"scored >= {FIVE_BEST_THRESHOLD} that are the human top reply ({counts['five_best_candidates']} such replies"
        + ("; n/a when none" if not counts["five_best_candidates"] else "")
        + "); exact match needs all replies scored, untied and in human order "
        f"({counts['exact_matches']} of {counts['prompts']} prompts); correlations are averaged over "
        f"{counts['correlation_prompts']} prompts with >= 2 scored replies "
        f"({counts['constant_score_prompts']} with all-equal scores count as 0).",
        "",
    ]
    if examples and rows:
        lines += [heading(level + 1, "Example judgements"), ""]
        for n, row in enumerate(rows[:examples], start=1):
            lines += [heading(level + 2, f"Example {n}"), "", "**Prompt**", "", fence(clip(row["prompt"], 600)), ""]
            for reply in sorted(row["replies"], key=lambda r: r["human_rank"]):
                scores = ", ".join("—" if s is None else f"{s:g}" for s in reply["scores"])
                lines += [
                    f"**Human rank {reply['human_rank']}** — model score {num(reply['mean'], 2)} "
                    f"(samples: {scores})",
                    "",
                    fence(clip(reply["text"], 500)),
                    "",
                    "First judgement:",
                    "",
                    fence(clip(reply["judge_outputs"][0] if reply["judge_outputs"] else "", 600)),
                    "",
                ]
    return "\n".join(lines)
