"""Head-to-head win rate of model A against model B, and AlpacaEval export.

- ``run_winrate``: answers of model A and model B on the same prompts, judged by a third (fixed)
  judge model, either pairwise in both orders (paper-faithful; disagreement = tie) or by the
  additive rubric. Writes ``metrics.json``, ``answers.jsonl`` and ``report.md``.
- ``export_alpaca``: a model's answers in AlpacaEval's ``model_outputs.json`` format.

Outputs are written atomically. Models are loaded one at a time and freed before the next one loads.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import statistics
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from srlm.backends import answer_each, make_generator
from srlm.config import StageConfig, setting
from srlm.errors import SrlmError
from srlm.generation import GenerationOptions, GenerationStats, Generator
from srlm.io import Record, atomic_path, read_prompts, write_json, write_jsonl
from srlm.judge import JudgeConfig, check_template, fill_slots, judge_config_of, judge_pairs, load_template
from srlm.reports import clip, fence, heading, lineage_summary, lineage_text, num, pct

log = logging.getLogger(__name__)

PAPER_HEAD_TO_HEAD = {
    "M2 vs SFT baseline": (49.2, 36.3, 14.5),
    "M3 vs SFT baseline": (62.5, 27.7, 9.8),
    "M3 vs M2": (47.7, 39.8, 12.5),
}


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

    max_new_tokens: int = setting(
        2048, "tokens per answer, head to head and AlpacaEval export (not given in the paper; long enough for its "
        "M3 answers; the stage reports the share cut at it)")
    temperature: float = setting(
        0.7, "answer sampling temperature; 0 = greedy (not given in the paper; ours: its sampling setting)"
    )
    top_p: float = setting(0.9, "answer nucleus sampling top-p")
    max_prompts: int = setting(256, "head-to-head: use only the first N prompts (paper: 256 test prompts); 0 = all")
    export_max_prompts: int = setting(0, "export-alpaca: use only the first N prompts; 0 = all (AlpacaEval 2.0: 805)")
    method: Literal["pairwise", "rubric"] = setting(
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

    def validate(self) -> None:
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

    def get(self, model: str | Path, chat_template: str = "") -> Generator:
        path = Path(model).resolve()
        if self.generator is None or path != self.path:
            self.close()
            self.generator = make_generator(model, self.options, chat_template)
            self.path = path
        return self.generator

    def close(self) -> None:
        if self.generator is not None:
            generator, self.generator, self.path = self.generator, None, None
            generator.close()


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
    slot: _ModelSlot, model: str | Path, prompts: list[str], config: WinRateConfig, seed: int, desc: str,
    chat_template: str = "",
) -> tuple[list[str], GenerationStats]:
    """One answer per prompt, and the counts of this call (its replies cut at max_new_tokens among them)."""
    generator = slot.get(model, chat_template)
    before = dataclasses.replace(generator.stats)
    outputs = generator.generate(
        prompts, n=1, temperature=config.temperature, top_p=config.top_p,
        max_new_tokens=config.max_new_tokens, seed=seed, desc=desc,
    )
    return [texts[0] for texts in outputs], generator.stats.since(before)


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
    chat_template_b: str = "",
) -> dict[str, Any]:
    """Head-to-head: A's and B's answers on the same prompts, judged by ``judge_model``.

    Loads one model at a time (A, then B, then the judge; a path used twice is loaded once).
    A's answers are sampled with ``seed``, B's with ``seed + 1``, so a model against itself
    compares two independent samples. Outcomes are from A's side: win = A judged better.
    ``chat_template_b`` is B's template when B has none (M0, a base checkpoint, against M1).
    """
    if config.method == "pairwise":
        template = load_pairwise_template(config.judge_template)
    else:
        template = load_template(config.judge_template)
    records = _limit(read_prompts(prompts), config.max_prompts)
    texts = [r["prompt"] for r in records]

    slot = _ModelSlot(config)
    try:
        answers_a, counts_a = _answers(slot, model_a, texts, config, config.seed, "answers A")
        answers_b, counts_b = _answers(slot, model_b, texts, config, config.seed + 1, "answers B", chat_template_b)
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
        "mean_tokens_a": counts_a.mean_new_tokens,
        "mean_tokens_b": counts_b.mean_new_tokens,
        "empty_answers_a": sum(1 for a in answers_a if not a.strip()),
        "empty_answers_b": sum(1 for b in answers_b if not b.strip()),
        **counts_a.truncation("answers_a_"),
        **counts_b.truncation("answers_b_"),
        **judge_counts,
    }
    metrics["verdict_parse_failure_rate"] = (
        metrics["verdict_parse_failures"] / metrics["judge_outputs"] if metrics["judge_outputs"] else 0.0
    )
    metrics["run"] = {
        "model_a": str(model_a),
        "model_b": str(model_b),
        "judge_model": str(judge_model),
        "lineage": {k: lineage_summary(p) for k, p in (("a", model_a), ("b", model_b), ("judge", judge_model))},
        "prompts_file": str(prompts),
        "settings": config.to_dict(),
    }
    rows = [
        {"id": r["id"], "prompt": r["prompt"], "answer_a": a, "answer_b": b, **res}
        for r, a, b, res in zip(records, answers_a, answers_b, results)
    ]
    with atomic_path(out, directory=True) as tmp:
        write_json(tmp / "metrics.json", metrics)
        write_jsonl(tmp / "answers.jsonl", rows)
        (tmp / "report.md").write_text(winrate_report(metrics, rows, config.report_examples), encoding="utf-8")
    log.info("win rate A vs B (%s): %d / %d / %d (win/tie/loss) of %d prompts", config.method, wins, ties, losses, n)
    return metrics


def winrate_report(metrics: dict[str, Any], rows: list[Record], examples: int = 3, level: int = 1) -> str:
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
        heading(level, "Head-to-head win rate"),
        "",
        f"- Model A: `{run.get('model_a', '?')}`{lineage_text(lineage.get('a'))}",
        f"- Model B: `{run.get('model_b', '?')}`{lineage_text(lineage.get('b'))}",
        f"- Judge: `{run.get('judge_model', '?')}`{lineage_text(lineage.get('judge'))}",
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
        f"| answers cut at max_new_tokens | {pct(metrics.get('answers_a_truncated_share'))}% | "
        f"{pct(metrics.get('answers_b_truncated_share'))}% |",
        f"| empty answers | {metrics['empty_answers_a']} | {metrics['empty_answers_b']} |",
        "",
        f"Judge outputs: {metrics['judge_outputs']}, of which {metrics['verdict_parse_failures']} had no parsable "
        f"{'verdict' if method == 'pairwise' else 'score line'} ({pct(metrics['verdict_parse_failure_rate'])}%).",
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
        lines += [heading(level + 1, "Examples"), ""]
        for n, row in enumerate(rows[:examples], start=1):
            lines += [
                heading(level + 2, f"Example {n}: winner {row['winner']}"), "",
                "**Prompt**", "", fence(clip(row["prompt"], 600)), "",
                "**Answer A**", "", fence(clip(row["answer_a"], 600)), "",
                "**Answer B**", "", fence(clip(row["answer_b"], 600)), "",
            ]
            verdicts = row["verdicts"]
            if method == "pairwise":
                for order, label in (("ab", "A shown first"), ("ba", "B shown first")):
                    v = verdicts[order]
                    lines += [
                        f"Judge, {label}: verdict {v['verdict'] or 'none'} (samples: "
                        + ", ".join(p or "—" for p in v["parsed"]) + ")", "",
                        fence(clip(v["judge_outputs"][0] if v["judge_outputs"] else "", 500)), "",
                    ]
            else:
                for side in ("a", "b"):
                    v = verdicts[side]
                    lines += [f"Rubric score of {side.upper()}: {num(v['mean'], 2)}", "",
                              fence(clip(v["judge_outputs"][0] if v["judge_outputs"] else "", 500)), ""]
    return "\n".join(lines)


def export_alpaca(
    config: WinRateConfig,
    model: str | Path,
    prompts: str | Path,
    out: str | Path,
    generator_name: str | None = None,
) -> dict[str, Any]:
    """Write ``model``'s answers as AlpacaEval ``model_outputs.json``.

    A JSON list of ``{"instruction", "output", "generator"}`` plus ``"dataset"`` when the input
    row had one, in input order. Uses the answer settings of ``config`` (max_new_tokens,
    temperature, top_p, seed) and ``export_max_prompts``. ``generator`` defaults to the model
    directory's name. Score the file with ``alpaca_eval`` and report the length-controlled win
    rate beside the raw one.
    """
    records = _limit(read_prompts(prompts), config.export_max_prompts)
    name = generator_name or Path(model).resolve().name
    answers, truncation = answer_each(model, config, [r["prompt"] for r in records], temperature=config.temperature,
                                      top_p=config.top_p, max_new_tokens=config.max_new_tokens, seed=config.seed,
                                      desc="alpaca answers")
    rows = []
    for record, answer in zip(records, answers):
        row = {"instruction": record.get("instruction", record["prompt"]), "output": answer, "generator": name}
        if "dataset" in record:
            row["dataset"] = record["dataset"]
        rows.append(row)
    write_json(out, rows)
    lengths = [len(r["output"]) for r in rows]
    stats = {
        "prompts": len(rows),
        "generator": name,
        "mean_length": statistics.fmean(lengths) if lengths else 0.0,
        "empty_outputs": sum(1 for n in lengths if n == 0),
        **truncation,
        "out": str(out),
    }
    log.info("AlpacaEval outputs written to %s: %s", out, stats)
    return stats
