"""Evaluation: the model as a reward model, head-to-head win rate, and AlpacaEval export.

Three entry points, each writing its outputs atomically (a failed run leaves nothing behind):

- ``run_rm``: judge every reply of the EFT eval split with the rubric and compare the scores
  with the human ranks (pairwise accuracy, 5-best, exact match, Spearman, Kendall tau-b; the
  definitions are SRLM_SPEC.md's, see ``reward_model_metrics``). Writes ``metrics.json``,
  ``judgements.jsonl`` and ``report.md`` into a directory.
- ``run_winrate``: answers of model A and model B on the same prompts, judged by a third (fixed)
  judge model, either pairwise in both orders (paper-faithful; disagreement = tie) or by the
  additive rubric. Writes ``metrics.json``, ``answers.jsonl`` and ``report.md``.
- ``export_alpaca``: a model's answers in AlpacaEval's ``model_outputs.json`` format.

Fractions in ``metrics.json`` are in [0, 1] (``*_pct`` fields are percentages); the reports
show percentages. Models are loaded one at a time and freed before the next one loads.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import re
import statistics
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from srlm.backends import make_generator
from srlm.config import StageConfig, setting
from srlm.errors import SrlmError
from srlm.generation import GenerationOptions, Generator
from srlm.io import Record, atomic_path, check_output_free, read_jsonl, read_prompts, validate, write_json, write_jsonl
from srlm.judge import JudgeConfig, check_template, fill_slots, judge_config_of, judge_pairs, load_template
from srlm.metrics import RM_METRICS
from srlm.modeldir import read_lineage

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
PAPER_HEAD_TO_HEAD = {
    "M2 vs SFT baseline": (49.2, 36.3, 14.5),
    "M3 vs SFT baseline": (62.5, 27.7, 9.8),
    "M3 vs M2": (47.7, 39.8, 12.5),
}

# ----------------------------------------------------------------------------------------------
# (a) Reward-model metrics
# ----------------------------------------------------------------------------------------------


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

    PRESETS = {"tiny": {**JudgeConfig.PRESETS["tiny"], "max_items": 8}}

    def validate(self) -> None:
        super().validate()
        if self.max_items < 0:
            raise SrlmError(f"max_items must be >= 0 (0 = all), got {self.max_items}")
        if self.report_examples < 0:
            raise SrlmError(f"report_examples must be >= 0, got {self.report_examples}")


def run_rm(
    config: RMEvalConfig, model: str | Path, eft_eval: str | Path, out: str | Path, overwrite: bool = False
) -> dict[str, Any]:
    """Judge every reply of the EFT eval items with ``model`` and write metrics and a report to ``out/``."""
    check_output_free(out, overwrite)
    items = read_jsonl(eft_eval, "eft_eval")
    if config.max_items:
        items = items[: config.max_items]
    template = load_template(config.template)
    generator = make_generator(model, config)
    flat = [(item["prompt"], reply) for item in items for reply in item["replies"]]
    judged, stats = judge_pairs(generator, flat, config, template, desc="judging eval replies")
    _free(generator)
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
    metrics["judge"] = stats.as_dict()
    metrics["run"] = {
        "model": str(model),
        "model_lineage": _lineage_summary(model),
        "eft_eval": str(eft_eval),
        "settings": config.to_dict(),
    }
    if stats.replies and stats.unscored_replies == stats.replies:
        log.warning("the judge produced no valid score for any of %d replies: every metric is at its floor",
                    stats.replies)
    with atomic_path(check_output_free(out, overwrite), directory=True) as tmp:
        write_json(tmp / "metrics.json", metrics)
        write_jsonl(tmp / "judgements.jsonl", rows, "judgements")
        (tmp / "report.md").write_text(rm_report(metrics, rows, config.report_examples), encoding="utf-8")
    log.info(
        "reward-model eval of %s: pairwise accuracy %s, parse failures %d/%d",
        model, _pct(metrics["pairwise_accuracy"]), stats.parse_failures, stats.judgements,
    )
    return metrics


def rm_report(metrics: dict[str, Any], rows: list[Record], examples: int = 3) -> str:
    """The Markdown report of ``run_rm``: metrics beside the paper's numbers, then examples."""
    counts, judge, run = metrics["counts"], metrics["judge"], metrics.get("run", {})
    lines = [
        "# Reward-model evaluation",
        "",
        f"- Model: `{run.get('model', '?')}`{_lineage_text(run.get('model_lineage'))}",
        f"- Eval items: `{run.get('eft_eval', '?')}` — {counts['prompts']} prompts, {counts['replies']} replies "
        f"({counts['replies'] / max(counts['prompts'], 1):.2f} per prompt), {counts['pairs']} ranked pairs",
        f"- Judge: {run.get('settings', {}).get('samples', '?')} samples per reply; "
        f"{judge['parse_failures']} of {judge['judgements']} judgements had no valid score line "
        f"(parse-failure rate {_pct(judge['parse_failure_rate'])}%); {counts['unscored']} replies unscored",
        "",
    ]
    if counts["replies"] and counts["unscored"] == counts["replies"]:
        lines += ["> **Warning:** no reply got a valid score: every metric below is at its floor. "
                  "Train the judge on EFT data or raise `max_new_tokens`.", ""]
    header = "| metric | this model | " + " | ".join(f"paper {name}" for name in PAPER_RM) + " |"
    lines += [header, "|" + "---|" * (2 + len(PAPER_RM))]
    rows_spec = [
        ("pairwise accuracy %", "pairwise_accuracy", _pct),
        ("5-best %", "five_best", _pct),
        ("exact match %", "exact_match", _pct),
        ("Spearman", "spearman", _num),
        ("Kendall tau-b", "kendall_tau", _num),
    ]
    for label, key, fmt in rows_spec:
        paper = " | ".join(fmt(PAPER_RM[name][key]) for name in PAPER_RM)
        lines.append(f"| {label} | **{fmt(metrics[key])}** | {paper} |")
    lines.append(f"| pairwise tie share % | {_pct(metrics['pairwise_tie_share'])} |" + " |" * len(PAPER_RM))
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
        lines += ["## Example judgements", ""]
        for n, row in enumerate(rows[:examples], start=1):
            lines += [f"### Example {n}", "", "**Prompt**", "", _fence(_clip(row["prompt"], 600)), ""]
            for reply in sorted(row["replies"], key=lambda r: r["human_rank"]):
                scores = ", ".join("—" if s is None else f"{s:g}" for s in reply["scores"])
                lines += [
                    f"**Human rank {reply['human_rank']}** — model score {_num(reply['mean'], 2)} "
                    f"(samples: {scores})",
                    "",
                    _fence(_clip(reply["text"], 500)),
                    "",
                    "First judgement:",
                    "",
                    _fence(_clip(reply["judge_outputs"][0] if reply["judge_outputs"] else "", 600)),
                    "",
                ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# (b) Head-to-head win rate
# ----------------------------------------------------------------------------------------------

METHODS = ("pairwise", "rubric")
PAIRWISE_SLOTS = ("{instruction}", "{response_a}", "{response_b}")

DEFAULT_PAIRWISE_TEMPLATE = """\
Two AI assistants answered the same user instruction. Compare their responses and decide which
one serves the user better. Weigh how well each follows the instruction, and its helpfulness,
accuracy, relevance, depth and clarity. The order in which the responses appear, their length
and the assistants' names must not influence your decision.

[Instruction]
{instruction}

[Response A]
{response_a}

[Response B]
{response_b}

Compare the two responses in at most 100 words. Then end with a last line that is exactly
"Winner: A" if Response A is better, or "Winner: B" if Response B is better.
"""

# The last "Winner: A" / "Verdict: [[B]]" / "**Winner:** Response A" / "Winner: tie".
_VERDICT = re.compile(
    r"(?i:winner|verdict)\s*:[\s*\[(\"'`]*(?:(?i:response|assistant)\s*)?(A|B|(?i:tie))(?![A-Za-z0-9])"
)


def parse_verdict(text: str) -> str | None:
    """The last ``Winner: A|B`` verdict in ``text`` ("A", "B" or "tie"), else None (a parse failure)."""
    found = _VERDICT.findall(text)
    if not found:
        return None
    last = found[-1]
    return "tie" if last.lower() == "tie" else last


def check_pairwise_template(template: str, where: str = "pairwise judge template") -> str:
    return check_template(template, where, PAIRWISE_SLOTS, "pairwise judge template")


def load_pairwise_template(path: str | Path | None) -> str:
    """The pairwise judge template: the built-in one, or the user's file with all three slots."""
    return load_template(path, DEFAULT_PAIRWISE_TEMPLATE, PAIRWISE_SLOTS, "pairwise judge template")


def fill_pairwise(template: str, instruction: str, response_a: str, response_b: str) -> str:
    return fill_slots(template, instruction=instruction, response_a=response_a, response_b=response_b)


@dataclasses.dataclass
class WinRateConfig(GenerationOptions, StageConfig):
    """Head-to-head A vs B (and AlpacaEval export): answer generation plus the judging method."""

    max_new_tokens: int = setting(1024, "tokens per answer (not given in the paper)")
    temperature: float = setting(
        0.7, "answer sampling temperature; 0 = greedy (not given in the paper; ours: its sampling setting)"
    )
    top_p: float = setting(0.9, "answer nucleus sampling top-p")
    max_prompts: int = setting(256, "head-to-head: use only the first N prompts (paper: 256 test prompts); 0 = all")
    export_max_prompts: int = setting(0, "export-alpaca: use only the first N prompts; 0 = all (AlpacaEval 2.0: 805)")
    method: str = setting(
        "pairwise",
        "judging: pairwise (judge sees both answers, asked in both orders; disagreement or no verdict = tie; "
        "paper-faithful) | rubric (each answer scored with the additive rubric; higher mean wins, equal or "
        "unscored = tie; order-free)",
    )
    judge_samples: int = setting(
        3,
        "judgements sampled per judge prompt: rubric = mean of valid scores; "
        "pairwise = majority of valid verdicts per order",
    )
    judge_temperature: float = setting(0.7, "judge sampling temperature")
    judge_top_p: float = setting(0.9, "judge nucleus sampling top-p")
    judge_max_new_tokens: int = setting(256, "tokens per judgement (<= 100 words + the verdict/score line)")
    judge_template: str = setting(
        "",
        "judge prompt template file; pairwise needs {instruction}, {response_a}, {response_b}; rubric needs "
        "{instruction}, {response}; empty = built-in",
    )
    report_examples: int = setting(3, "example comparisons shown in report.md")

    PRESETS = {
        "tiny": {
            # The tiny model is trained on rubric judgements only, never on pairwise verdicts.
            "method": "rubric",
            "max_new_tokens": 32,
            "judge_max_new_tokens": JudgeConfig.PRESETS["tiny"]["max_new_tokens"],
            "max_prompts": 8,
            "export_max_prompts": 8,
        }
    }

    def validate(self) -> None:
        if self.method not in METHODS:
            raise SrlmError(f"unknown win-rate method {self.method!r}; choose from {', '.join(METHODS)}")
        for name in ("max_new_tokens", "judge_max_new_tokens", "judge_samples"):
            if getattr(self, name) < 1:
                raise SrlmError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_prompts", "export_max_prompts", "report_examples"):
            if getattr(self, name) < 0:
                raise SrlmError(f"{name} must be >= 0, got {getattr(self, name)}")

    def judge_config(self) -> JudgeConfig:
        """The rubric judge settings this config implies (for ``judge.judge_pairs``)."""
        return judge_config_of(self)


class _ModelSlot:
    """Holds at most one loaded model; asking for another frees the current one first."""

    def __init__(self, options: GenerationOptions):
        self.options = options
        self.path: Path | None = None
        self.generator: Generator | None = None

    def get(self, model: str | Path) -> Generator:
        path = Path(model).resolve()
        if self.generator is None or path != self.path:
            self.close()
            self.generator = make_generator(model, self.options)
            self.path = path
        return self.generator

    def close(self) -> None:
        if self.generator is not None:
            generator, self.generator, self.path = self.generator, None, None
            _free(generator)
            del generator
            _release_memory()


def _free(generator: Any) -> None:
    """Drop the model weights a generator holds (its object may outlive this call)."""
    for name in ("model",):
        if hasattr(generator, name):
            setattr(generator, name, None)
    _release_memory()


def _release_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def _majority(verdicts: list[str | None]) -> str | None:
    valid = Counter(v for v in verdicts if v is not None)
    if not valid:
        return None
    ranked = valid.most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        return None  # a split vote is no verdict
    return ranked[0][0]


def _swap(verdict: str | None) -> str | None:
    return {"A": "B", "B": "A"}.get(verdict, verdict) if verdict else None


def _answers(
    slot: _ModelSlot, model: str | Path, prompts: list[str], config: WinRateConfig, seed: int, desc: str
) -> list[str]:
    outputs = slot.get(model).generate(
        prompts, n=1, temperature=config.temperature, top_p=config.top_p,
        max_new_tokens=config.max_new_tokens, seed=seed, desc=desc,
    )
    return [texts[0] for texts in outputs]


def _judge_pairwise(
    generator: Generator,
    prompts: list[str],
    answers_a: list[str],
    answers_b: list[str],
    config: WinRateConfig,
    template: str,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    filled = [fill_pairwise(template, p, a, b) for p, a, b in zip(prompts, answers_a, answers_b)]
    filled += [fill_pairwise(template, p, b, a) for p, a, b in zip(prompts, answers_a, answers_b)]
    outputs = generator.generate(
        filled, n=config.judge_samples, temperature=config.judge_temperature, top_p=config.judge_top_p,
        max_new_tokens=config.judge_max_new_tokens, seed=config.seed, desc="pairwise judging",
    )
    n = len(prompts)
    counts = {"judge_outputs": 0, "verdict_parse_failures": 0, "order_disagreements": 0, "orders_without_verdict": 0}
    results = []
    for i in range(n):
        per_order = {}
        for order, texts, swapped in (("ab", outputs[i], False), ("ba", outputs[n + i], True)):
            parsed = [parse_verdict(t) for t in texts]
            counts["judge_outputs"] += len(parsed)
            counts["verdict_parse_failures"] += sum(v is None for v in parsed)
            verdict = _majority(parsed)
            verdict = _swap(verdict) if swapped else verdict  # in A/B labels of the original order
            counts["orders_without_verdict"] += verdict is None
            per_order[order] = {"judge_outputs": texts, "parsed": parsed, "verdict": verdict}
        v1, v2 = per_order["ab"]["verdict"], per_order["ba"]["verdict"]
        if v1 in ("A", "B") and v1 == v2:
            winner = v1
        else:
            winner = "tie"
            counts["order_disagreements"] += v1 in ("A", "B") and v2 in ("A", "B") and v1 != v2
        results.append({"winner": winner, "verdicts": per_order})
    return results, counts


def _judge_rubric(
    generator: Generator,
    prompts: list[str],
    answers_a: list[str],
    answers_b: list[str],
    config: WinRateConfig,
    template: str,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    items = list(zip(prompts, answers_a)) + list(zip(prompts, answers_b))
    judged, stats = judge_pairs(generator, items, config.judge_config(), template, desc="rubric judging")
    n = len(prompts)
    results = []
    for i in range(n):
        a, b = judged[i], judged[n + i]
        if a["mean"] is not None and b["mean"] is not None and a["mean"] != b["mean"]:
            winner = "A" if a["mean"] > b["mean"] else "B"
        else:
            winner = "tie"
        strip = lambda r: {k: r[k] for k in ("judge_outputs", "scores", "mean")}  # noqa: E731
        results.append({"winner": winner, "verdicts": {"a": strip(a), "b": strip(b)}})
    counts = {
        "judge_outputs": stats.judgements,
        "verdict_parse_failures": stats.parse_failures,
        "unscored_answers": stats.unscored_replies,
    }
    return results, counts


def _limit(records: list[Record], n: int) -> list[Record]:
    return records[:n] if n else records


def run_winrate(
    config: WinRateConfig,
    model_a: str | Path,
    model_b: str | Path,
    judge_model: str | Path,
    prompts: str | Path,
    out: str | Path,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Head-to-head: A's and B's answers on the same prompts, judged by ``judge_model``.

    Loads one model at a time (A, then B, then the judge; a path used twice is loaded once).
    A's answers are sampled with ``seed``, B's with ``seed + 1``, so a model against itself
    compares two independent samples. Outcomes are from A's side: win = A judged better.
    """
    check_output_free(out, overwrite)
    if config.method == "pairwise":
        template = load_pairwise_template(config.judge_template)
    else:
        template = load_template(config.judge_template)
    records = _limit(read_prompts(prompts), config.max_prompts)
    texts = [r["prompt"] for r in records]

    slot = _ModelSlot(config)
    try:
        answers_a = _answers(slot, model_a, texts, config, config.seed, "answers A")
        answers_b = _answers(slot, model_b, texts, config, config.seed + 1, "answers B")
        judge = slot.get(judge_model)
        if config.method == "pairwise":
            results, judge_counts = _judge_pairwise(judge, texts, answers_a, answers_b, config, template)
        else:
            results, judge_counts = _judge_rubric(judge, texts, answers_a, answers_b, config, template)
    finally:
        slot.close()

    n = len(records)
    tally = Counter(r["winner"] for r in results)
    wins, ties, losses = tally["A"], tally["tie"], tally["B"]
    metrics: dict[str, Any] = {
        "method": config.method,
        "prompts": n,
        "wins": wins,
        "ties": ties,
        "losses": losses,
        "win_pct": 100.0 * wins / n,
        "tie_pct": 100.0 * ties / n,
        "loss_pct": 100.0 * losses / n,
        "mean_length_a": statistics.fmean(len(a) for a in answers_a),
        "mean_length_b": statistics.fmean(len(b) for b in answers_b),
        "empty_answers_a": sum(1 for a in answers_a if not a.strip()),
        "empty_answers_b": sum(1 for b in answers_b if not b.strip()),
        **judge_counts,
    }
    metrics["verdict_parse_failure_rate"] = (
        metrics["verdict_parse_failures"] / metrics["judge_outputs"] if metrics["judge_outputs"] else 0.0
    )
    metrics["run"] = {
        "model_a": str(model_a),
        "model_b": str(model_b),
        "judge_model": str(judge_model),
        "lineage": {k: _lineage_summary(p) for k, p in (("a", model_a), ("b", model_b), ("judge", judge_model))},
        "prompts_file": str(prompts),
        "settings": config.to_dict(),
    }
    rows = [
        {"id": r["id"], "prompt": r["prompt"], "answer_a": a, "answer_b": b, **res}
        for r, a, b, res in zip(records, answers_a, answers_b, results)
    ]
    with atomic_path(check_output_free(out, overwrite), directory=True) as tmp:
        write_json(tmp / "metrics.json", metrics)
        write_jsonl(tmp / "answers.jsonl", rows)
        (tmp / "report.md").write_text(winrate_report(metrics, rows, config.report_examples), encoding="utf-8")
    log.info("win rate A vs B (%s): %d / %d / %d (win/tie/loss) of %d prompts", config.method, wins, ties, losses, n)
    return metrics


def winrate_report(metrics: dict[str, Any], rows: list[Record], examples: int = 3) -> str:
    """The Markdown report of ``run_winrate``."""
    run = metrics.get("run", {})
    lineage = run.get("lineage", {})
    method = metrics["method"]
    how = (
        "pairwise: the judge saw both answers, in both orders; a win needs the same verdict in both, "
        "anything else (disagreement, no parsable verdict) is a tie"
        if method == "pairwise"
        else "rubric: each answer scored with the additive 5-point rubric (mean of valid samples); the higher mean "
        "wins, equal or unscored is a tie (answer order plays no part)"
    )
    lines = [
        "# Head-to-head win rate",
        "",
        f"- Model A: `{run.get('model_a', '?')}`{_lineage_text(lineage.get('a'))}",
        f"- Model B: `{run.get('model_b', '?')}`{_lineage_text(lineage.get('b'))}",
        f"- Judge: `{run.get('judge_model', '?')}`{_lineage_text(lineage.get('judge'))}",
        f"- Prompts: {metrics['prompts']} from `{run.get('prompts_file', '?')}`",
        f"- Method: {how}",
        "",
        "| | A wins | tie | B wins (A loses) |",
        "|---|---|---|---|",
        f"| count | {metrics['wins']} | {metrics['ties']} | {metrics['losses']} |",
        f"| % | **{metrics['win_pct']:.1f}** | {metrics['tie_pct']:.1f} | {metrics['loss_pct']:.1f} |",
        "",
        "| | A | B |",
        "|---|---|---|",
        f"| mean answer length (chars) | {metrics['mean_length_a']:.0f} | {metrics['mean_length_b']:.0f} |",
        f"| empty answers | {metrics['empty_answers_a']} | {metrics['empty_answers_b']} |",
        "",
        f"Judge outputs: {metrics['judge_outputs']}, of which {metrics['verdict_parse_failures']} had no parsable "
        f"{'verdict' if method == 'pairwise' else 'score line'} ({_pct(metrics['verdict_parse_failure_rate'])}%).",
    ]
    if method == "pairwise":
        lines.append(
            f"Orders that disagreed: {metrics['order_disagreements']} prompts; "
            f"orders without a verdict: {metrics['orders_without_verdict']}."
        )
    lines += [
        "",
        "Paper, for context (GPT-4 judge, 256 prompts, both orders; win / tie / loss %): "
        + "; ".join(f"{name} {w} / {t} / {lo}" for name, (w, t, lo) in PAPER_HEAD_TO_HEAD.items())
        + ". Not comparable with a different judge, model or prompt set.",
        "",
    ]
    if examples and rows:
        lines += ["## Examples", ""]
        for n, row in enumerate(rows[:examples], start=1):
            lines += [
                f"### Example {n}: winner {row['winner']}", "",
                "**Prompt**", "", _fence(_clip(row["prompt"], 600)), "",
                "**Answer A**", "", _fence(_clip(row["answer_a"], 600)), "",
                "**Answer B**", "", _fence(_clip(row["answer_b"], 600)), "",
            ]
            verdicts = row["verdicts"]
            if method == "pairwise":
                for order, label in (("ab", "A shown first"), ("ba", "B shown first")):
                    v = verdicts[order]
                    lines += [
                        f"Judge, {label}: verdict {v['verdict'] or 'none'} (samples: "
                        + ", ".join(p or "—" for p in v["parsed"]) + ")", "",
                        _fence(_clip(v["judge_outputs"][0] if v["judge_outputs"] else "", 500)), "",
                    ]
            else:
                for side in ("a", "b"):
                    v = verdicts[side]
                    lines += [f"Rubric score of {side.upper()}: {_num(v['mean'], 2)}", "",
                              _fence(_clip(v["judge_outputs"][0] if v["judge_outputs"] else "", 500)), ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# (c) AlpacaEval export
# ----------------------------------------------------------------------------------------------


def export_alpaca(
    config: WinRateConfig,
    model: str | Path,
    prompts: str | Path,
    out: str | Path,
    generator_name: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write ``model``'s answers as AlpacaEval ``model_outputs.json``.

    A JSON list of ``{"instruction", "output", "generator"}`` plus ``"dataset"`` when the input
    row had one, in input order. Uses the answer settings of ``config`` (max_new_tokens,
    temperature, top_p, seed) and ``export_max_prompts``. ``generator`` defaults to the model
    directory's name. Score the file with ``alpaca_eval`` and report the length-controlled win
    rate beside the raw one.
    """
    check_output_free(out, overwrite)
    records = _limit(read_prompts(prompts), config.export_max_prompts)
    name = generator_name or Path(model).resolve().name
    generator = make_generator(model, config)
    outputs = generator.generate(
        [r["prompt"] for r in records], n=1, temperature=config.temperature, top_p=config.top_p,
        max_new_tokens=config.max_new_tokens, seed=config.seed, desc="alpaca answers",
    )
    _free(generator)
    del generator
    rows = []
    for record, texts in zip(records, outputs):
        row = {"instruction": record.get("instruction", record["prompt"]), "output": texts[0], "generator": name}
        if "dataset" in record:
            row["dataset"] = record["dataset"]
        rows.append(row)
    check_output_free(out, overwrite)
    write_json(out, rows)
    lengths = [len(r["output"]) for r in rows]
    stats = {
        "prompts": len(rows),
        "generator": name,
        "mean_length": statistics.fmean(lengths) if lengths else 0.0,
        "empty_outputs": sum(1 for n in lengths if n == 0),
        "out": str(out),
    }
    log.info("AlpacaEval outputs written to %s: %s", out, stats)
    return stats


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def _lineage_summary(model: str | Path) -> dict[str, Any]:
    try:
        lineage = read_lineage(model)
    except (OSError, ValueError):
        return {}
    return {k: lineage[k] for k in ("stage", "iteration", "parent") if k in lineage}


def _lineage_text(lineage: dict[str, Any] | None) -> str:
    if not lineage:
        return ""
    parts = [f"{k} {lineage[k]}" for k in ("stage", "iteration") if lineage.get(k) is not None]
    return f" ({', '.join(parts)})" if parts else ""


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100.0 * value:.1f}"


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit].rstrip() + " […]"


def _fence(text: str) -> str:
    """A fenced code block that survives backticks inside ``text``."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


__all__ = [
    "RMEvalConfig",
    "WinRateConfig",
    "reward_model_metrics",
    "run_rm",
    "run_winrate",
    "export_alpaca",
    "parse_verdict",
    "load_pairwise_template",
    "check_pairwise_template",
    "fill_pairwise",
]
