"""Does the rubric judge drift between iterations, and does it agree with an outside judge?

Two measurements in the evaluate step, both with the rubric judge settings of ``evaluation.rm``:

- **drift** (M(t), t >= 2): M(t) judges again the candidates of the first ``max_prompts`` prompts
  of round t, which M(t-1) judged to build M(t)'s training pairs. Per prompt, Kendall's tau-b
  between the two judges' mean scores of its replies, averaged over prompts where both judges
  told the replies apart (``judge_tau_vs_previous``); and the share of prompts where both pick the
  same best and worst reply (``judge_same_pair_vs_previous``: the DPO pair would not change).
- **external agreement** (``judge_base_url`` set): a judge server (e.g. a large model on vLLM)
  scores the EFT eval replies M(t) scored for its RM metrics, with the same rubric. Per prompt
  Kendall tau, averaged (``judge_tau_vs_external``); Krippendorff's ordinal alpha between the
  two judges' mean scores over all replies (``judge_alpha_vs_external``); the external judge's
  own pairwise accuracy against the human ranks (``external_pairwise_accuracy``).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from pathlib import Path
from typing import Any

from srlm.backends import make_generator
from srlm.config import StageConfig, setting
from srlm.errors import SrlmError
from srlm.io import Record, read_jsonl, write_json, write_jsonl
from srlm.judge import judge_pairs, load_template
from srlm.judge_server import JudgeServerOptions, server_identity
from srlm.pairs import best_and_worst
from srlm.reliability import krippendorff_alpha, rank_agreement


@dataclasses.dataclass
class JudgeAgreementConfig(JudgeServerOptions, StageConfig):
    """The judge's drift between iterations and its agreement with a judge server (rubric: evaluation.rm)."""

    max_prompts: int = setting(64, "prompts of round t's self-judged candidates that M(t) judges again (all their "
                                   "replies); 0 = no drift measurement")

    def validate(self) -> None:
        if self.max_prompts < 0:
            raise SrlmError(f"max_prompts must be >= 0, not {self.max_prompts}")
        self.check_judge_server("judge_agreement")


def _mean_tau(a: list[list[float | None]], b: list[list[float | None]]) -> tuple[float | None, int]:
    """Kendall tau per prompt, averaged over the prompts where it is defined; how many those were."""
    taus = [tau for x, y in zip(a, b) if (tau := rank_agreement(x, y)) is not None]
    return (statistics.fmean(taus) if taus else None), len(taus)


def _pair_of(scores: list[float | None]) -> tuple[int, int] | None:
    """The (chosen, rejected) reply positions srlm.pairs would take from these mean scores; None for no pair."""
    picked = best_and_worst({"replies": [{"mean": s, "position": i} for i, s in enumerate(scores)]})
    return None if picked is None else (picked[0]["position"], picked[1]["position"])


def _rejudge(config: Any, model: str | Path, records: list[Record]) -> list[list[float | None]]:
    """Every reply of ``records`` judged by ``model`` with the rubric judge ``config``; mean scores per record."""
    generator = make_generator(model, config)
    try:
        items = [(r["prompt"], reply["text"]) for r in records for reply in r["replies"]]
        judged, _ = judge_pairs(generator, items, config, load_template(config.template), desc="judging again")
    finally:
        generator.close()
    out, cursor = [], 0
    for r in records:
        out.append([j["mean"] for j in judged[cursor: cursor + len(r["replies"])]])
        cursor += len(r["replies"])
    return out


def drift(config: JudgeAgreementConfig, rm: Any, model: str | Path, judgements: str | Path, out: Path
          ) -> dict[str, Any]:
    """M(t)'s rubric scores of round t's candidates against M(t-1)'s (the judgements file)."""
    records = read_jsonl(judgements, "judgements")[: config.max_prompts]
    before = [[reply["mean"] for reply in r["replies"]] for r in records]
    after = _rejudge(rm, model, records)
    tau, prompts_with_tau = _mean_tau(before, after)
    picks = [(_pair_of(b), _pair_of(a)) for b, a in zip(before, after)]
    paired = [(b, a) for b, a in picks if b is not None]
    write_jsonl(out / "rejudged.jsonl", [{"id": r["id"], "previous": b, "current": a}
                                         for r, b, a in zip(records, before, after)])
    return {"judge_tau_vs_previous": tau, "judge_tau_vs_previous_prompts": prompts_with_tau,
            "judge_same_pair_vs_previous": sum(b == a for b, a in paired) / len(paired) if paired else None,
            "rejudged_prompts": len(records), "rejudged_replies": sum(len(r["replies"]) for r in records)}


def external(config: JudgeAgreementConfig, rm: Any, rm_judgements: str | Path, out: Path) -> dict[str, Any]:
    """The judge server's rubric scores of the EFT eval replies against M(t)'s (``rm/judgements.jsonl``)."""
    from srlm.rm_eval import reward_model_metrics

    rows = read_jsonl(rm_judgements)
    server = dataclasses.replace(rm, backend="openai", base_url=config.judge_base_url, served_model=config.judge_model,
                                 api_key_env=config.judge_api_key_env)
    theirs = _rejudge(server, config.judge_model, rows)
    mine = [[reply["mean"] for reply in row["replies"]] for row in rows]
    tau, prompts_with_tau = _mean_tau(mine, theirs)
    pooled = [[m if m is not None else math.nan, t if t is not None else math.nan]
              for ms, ts in zip(mine, theirs) for m, t in zip(ms, ts)]
    items = [{"prompt": row["prompt"], "replies": [reply["text"] for reply in row["replies"]],
              "ranks": [reply["human_rank"] for reply in row["replies"]]} for row in rows]
    write_jsonl(out / "external.jsonl", [{"id": row["id"], "self": m, "external": t}
                                         for row, m, t in zip(rows, mine, theirs)])
    return {"judge_tau_vs_external": tau, "judge_tau_vs_external_prompts": prompts_with_tau,
            "judge_alpha_vs_external": krippendorff_alpha(pooled, "ordinal"),
            "external_pairwise_accuracy": reward_model_metrics(items, theirs).get("pairwise_accuracy"),
            "external_judge": server_identity(config)}


SUMMARY = ("judge_tau_vs_previous", "judge_same_pair_vs_previous", "judge_tau_vs_external", "judge_alpha_vs_external",
           "external_pairwise_accuracy")  # the headline numbers (summary.json, model-version tags)


def report(metrics: dict[str, Any], level: int = 2) -> str:
    from srlm.reports import heading, num

    found = []
    if "judge_tau_vs_previous" in metrics:
        found.append(f"M(t) judged again the {metrics['rejudged_replies']} replies of {metrics['rejudged_prompts']} "
                     f"prompts that M(t-1) judged this round: Kendall tau {num(metrics['judge_tau_vs_previous'])} per "
                     f"prompt (over {metrics['judge_tau_vs_previous_prompts']}), the same best and worst reply in a "
                     f"share {num(metrics['judge_same_pair_vs_previous'])} of them.")
    if "judge_tau_vs_external" in metrics:
        found.append(f"Against {metrics['external_judge']} on the EFT eval replies: Kendall tau "
                     f"{num(metrics['judge_tau_vs_external'])} per prompt, ordinal alpha "
                     f"{num(metrics['judge_alpha_vs_external'])}; the external judge's own pairwise accuracy "
                     f"{num(metrics['external_pairwise_accuracy'])}.")
    found = found or ["Not measured: no earlier round to compare with, and no judge server set."]
    return "\n\n".join([heading(level, "Judge drift and agreement"), *found]) + "\n"


def run(config: JudgeAgreementConfig, rm: Any, model: str | Path, out: str | Path, *, judgements: str | Path | None,
        rm_judgements: str | Path) -> dict[str, Any]:
    """Drift (with round t's ``judgements``) and external agreement (with a judge server) into ``out/``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = {}
    if judgements and config.max_prompts:
        metrics.update(drift(config, rm, model, judgements, out))
    if config.judge_base_url:
        metrics.update(external(config, rm, rm_judgements, out))
    write_json(out / "metrics.json", metrics)
    return metrics
