"""AlpacaEval-style win rate: the model's answers against reference outputs, judged pairwise.

The model answers every instruction of a reference file (AlpacaEval 2.0: 805 instructions with GPT-4
Turbo's outputs; any JSONL of ``{instruction, output}`` rows, optionally ``id`` and ``dataset``). A judge
compares each answer with the reference for the same instruction, seeing them as outputs ``m`` and ``M``
in an order drawn per instruction as alpaca_eval draws it, and says which is better:

- ``logprob`` (AlpacaEval 2.0's default annotator, for a judge behind an OpenAI-compatible server that
  returns logprobs): the judge writes one token; the preference is the probability mass on the model's
  identifier among ``m`` and ``M`` in the first token's ``top_logprobs`` (neither there: no preference);
- ``pairwise`` (any judge, e.g. a local model): the judge writes its verdict for both orders; the
  preference is the mean of the valid verdicts (1 = the model's output, 0 = the reference), so orders
  that disagree make a tie, and the share of instructions whose two verdicts agree is the judge's
  position consistency.

The rates (win rate, discrete, length-controlled, bootstrap intervals) come from
``srlm.length_control``. Writes ``answers.jsonl``, ``model_outputs.json`` (AlpacaEval's format, for the
official scorer), ``judgements.jsonl``, ``metrics.json`` and ``report.md``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import re
from pathlib import Path
from typing import Any, Literal

from srlm.backends import answer_each
from srlm.config import StageConfig, setting
from srlm.errors import SrlmError
from srlm.generation import GenerationOptions
from srlm.io import Record, data_file, read_jsonl, read_records, write_json, write_jsonl
from srlm.judge import fill_slots, load_template
from srlm.judge_server import JudgeServerOptions, open_judge
from srlm.length_control import preference_metrics
from srlm.reports import clip, fence, heading, num, pct

log = logging.getLogger(__name__)

SLOTS = ("{instruction}", "{output_1}", "{output_2}")
IDENTIFIERS = ("m", "M")  # output_1, output_2

# Our own wording in the shape of alpaca_eval's weighted_alpaca_eval_gpt4_turbo prompt: the instruction,
# two outputs named m and M, and a request for the identifier alone.
DEFAULT_TEMPLATE = """\
You judge assistants for a leaderboard of how well they serve people. Below is an instruction someone \
gave, and the outputs of two assistants, each under an identifier.

## Instruction

{instruction}

## Outputs

Output of assistant "m":
<<<
{output_1}
>>>

Output of assistant "M":
<<<
{output_2}
>>>

## Task

Decide which output a careful person who gave this instruction would prefer: follows it, is correct, \
helpful and clear. Length and order must not sway you. Reply with the identifier of the better output \
and nothing else: m or M.

## Better output
"""


@dataclasses.dataclass
class AlpacaEvalConfig(JudgeServerOptions, GenerationOptions, StageConfig):
    """AlpacaEval-style win rate of a model's answers against reference outputs (the answer settings are the
    model's generation options; the judge's are the ``judge_*`` settings)."""

    references: str = setting("", "JSONL (or JSON list) of {instruction, output[, id, dataset]}: the reference "
                                  "outputs, e.g. AlpacaEval 2.0's GPT-4 Turbo outputs for its 805 instructions")
    max_instructions: int = setting(0, "use only the first N instructions; 0 = all")
    max_new_tokens: int = setting(2048, "tokens per answer (AlpacaEval answers are long: the paper's M3 averages "
                                        "2,552 characters)")
    temperature: float = setting(0.0, "answer sampling temperature; 0 = greedy")
    top_p: float = setting(1.0, "answer nucleus sampling top-p")
    method: Literal["auto", "logprob", "pairwise"] = setting(
        "auto", "judging: logprob (one token, preference = probability on the model's identifier; needs a judge "
                "server that returns logprobs) | pairwise (a verdict in both orders) | auto (logprob with a judge "
                "server, pairwise with a local judge)")
    judge_top_logprobs: int = setting(5, "logprob: first-token alternatives asked for (AlpacaEval: 5)")
    judge_max_new_tokens: int = setting(8, "pairwise: tokens of the verdict (the identifier alone)")
    judge_template: str = setting("", "judge prompt file with {instruction}, {output_1}, {output_2}; empty = built-in")
    bootstrap: int = setting(1000, "bootstrap resamples of the instructions for the 95 percent intervals; 0 = none")
    report_examples: int = setting(3, "example comparisons shown in report.md")

    def validate(self) -> None:
        for name in ("max_new_tokens", "judge_max_new_tokens", "judge_top_logprobs"):
            if getattr(self, name) < 1:
                raise SrlmError(f"alpaca_eval.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_instructions", "bootstrap", "report_examples"):
            if getattr(self, name) < 0:
                raise SrlmError(f"alpaca_eval.{name} must be >= 0, got {getattr(self, name)}")
        if self.method == "logprob" and not self.judge_base_url:
            raise SrlmError("alpaca_eval.method logprob needs judge_base_url: a judge server that returns logprobs")
        self.check_judge_server("alpaca_eval")

    def judging_method(self) -> str:
        return self.method if self.method != "auto" else ("logprob" if self.judge_base_url else "pairwise")


def check_inputs(config: AlpacaEvalConfig) -> None:
    """Read the reference file as the run will (validation, before any GPU work)."""
    load_references(config.references, config.max_instructions)


def load_references(path: str | Path, limit: int = 0) -> list[Record]:
    """The reference rows ``{id, instruction, output[, dataset]}``; SrlmError naming the file and row otherwise."""
    if not path:
        raise SrlmError("alpaca_eval.references is empty: give the reference outputs (JSONL of {instruction, output})")
    source, path = str(path), data_file(path)
    if not path.is_file():
        try:  # a dataset: a hub id (tatsu-lab/alpaca_eval#eval) or a local dataset directory
            rows = read_records(source, "a JSONL or JSON file of {instruction, output} rows")
        except SrlmError as e:
            raise SrlmError(f"{path}: reference file not found ({e})") from None
    elif path.suffix == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as e:
            raise SrlmError(f"{path}: not JSON ({e})") from None
        if not isinstance(rows, list):
            raise SrlmError(f"{path}: expected a JSON list of {{instruction, output}} rows")
    else:
        rows = read_jsonl(path)
    out = []
    for i, row in enumerate(rows, start=1):
        for key in ("instruction", "output"):
            if not isinstance(row, dict) or not isinstance(row.get(key), str) or not row[key].strip():
                raise SrlmError(f"{path}: row {i} has no {key!r} text (each row needs instruction and output)")
        out.append({"id": str(row.get("id", i - 1)), "instruction": row["instruction"], "output": row["output"],
                    **({"dataset": row["dataset"]} if "dataset" in row else {})})
    return out[:limit] if limit else out


def is_switched(instruction: str, seed: int = 123) -> bool:
    """Whether the model's output is shown first (as ``m``): alpaca_eval's seeded draw per instruction
    (``RandomSwitchTwoColumnsProcessor``), so the same instruction is always shown the same way."""
    return random.Random(f"is_switched_outputs{instruction}{seed}").choices([False, True], k=1)[0]


def judge_prompt(template: str, instruction: str, first: str, second: str) -> str:
    return fill_slots(template, instruction=instruction, output_1=first, output_2=second)


_IDENTIFIER = re.compile(r"(?<![A-Za-z0-9])([mM])(?![A-Za-z0-9])")


def parse_identifier(text: str) -> str | None:
    """The verdict of a pairwise judgement: the first standalone ``m`` or ``M`` in it, else None."""
    found = _IDENTIFIER.search(text or "")
    return found.group(1) if found else None


def preference_from_logprobs(top: dict[str, float] | None, switched: bool) -> float:
    """P(the model's output is better) from the first token's top logprobs: the mass on its identifier among
    ``m`` and ``M`` (tokens compared without surrounding spaces); NaN when neither is among them."""
    if not top:
        return math.nan
    mass = {name: 0.0 for name in IDENTIFIERS}
    for token, logprob in top.items():
        if token.strip() in mass:
            mass[token.strip()] += math.exp(logprob)
    total = mass["m"] + mass["M"]
    if total == 0.0:
        return math.nan
    model_slot = "m" if switched else "M"
    return mass[model_slot] / total


def verdict_preference(verdict: str | None, model_first: bool) -> float:
    """1.0 when a pairwise verdict names the model's output, 0.0 the reference's, NaN when there is none."""
    if verdict is None:
        return math.nan
    return 1.0 if (verdict == "m") == model_first else 0.0


def judge_against_references(config: AlpacaEvalConfig, judge_model: str | None, rows: list[Record], answers: list[str]
           ) -> tuple[list[float], list[Record], dict[str, Any]]:
    """Per instruction, the preference and what the judge said; the judging statistics."""
    method = config.judging_method()
    template = load_template(config.judge_template or None, DEFAULT_TEMPLATE, SLOTS, "AlpacaEval judge template")
    judge, identity = open_judge(config, judge_model, "alpaca_eval")
    switched = [is_switched(row["instruction"]) for row in rows]
    shown = [(answer, row["output"]) if s else (row["output"], answer) for row, answer, s in zip(rows, answers, switched)]
    prompts = [judge_prompt(template, row["instruction"], a, b) for row, (a, b) in zip(rows, shown)]
    records: list[Record] = []
    try:
        if method == "logprob":
            tops = judge.first_token_logprobs(prompts, config.judge_top_logprobs, seed=config.seed)
            preferences = [preference_from_logprobs(top, s) for top, s in zip(tops, switched)]
            records = [{"top_logprobs": top} for top in tops]
            consistency = None
        else:
            swapped = [judge_prompt(template, row["instruction"], b, a) for row, (a, b) in zip(rows, shown)]
            texts = judge.generate(prompts + swapped, n=1, temperature=0.0, max_new_tokens=config.judge_max_new_tokens,
                                   seed=config.seed, desc="alpaca_eval judging")
            preferences, agree, both = [], 0, 0
            for i, s in enumerate(switched):
                first, second = texts[i][0], texts[len(rows) + i][0]
                votes = [verdict_preference(parse_identifier(first), s), verdict_preference(parse_identifier(second), not s)]
                valid = [v for v in votes if not math.isnan(v)]
                preferences.append(sum(valid) / len(valid) if valid else math.nan)
                if len(valid) == 2:
                    both += 1
                    agree += valid[0] == valid[1]
                records.append({"judgement": first, "judgement_swapped": second})
            consistency = agree / both if both else None
    finally:
        judge.close()
    for record, s, p in zip(records, switched, preferences):
        record.update(model_shown_first=s, preference=None if math.isnan(p) else p)
    return preferences, records, {"method": method, "judge": identity, "position_consistency": consistency}


def run_alpaca_eval(config: AlpacaEvalConfig, model: str | Path, out: str | Path, judge_model: str | Path | None = None,
                    generator_name: str | None = None) -> dict[str, Any]:
    """Answer the reference file's instructions with ``model``, judge against the references, write ``out/``."""
    rows = load_references(config.references, config.max_instructions)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    answers, truncation = answer_each(model, config, [row["instruction"] for row in rows], temperature=config.temperature,
                                      top_p=config.top_p, max_new_tokens=config.max_new_tokens, seed=config.seed,
                                      desc="alpaca_eval answers")
    name = generator_name or Path(model).resolve().name
    write_json(out / "model_outputs.json", [{"instruction": r["instruction"], "output": a, "generator": name,
                                              **({"dataset": r["dataset"]} if "dataset" in r else {})}
                                             for r, a in zip(rows, answers)])
    preferences, judged, judging = judge_against_references(config, str(judge_model) if judge_model else None, rows, answers)
    metrics = {**preference_metrics(preferences, [len(a) for a in answers], [len(r["output"]) for r in rows],
                                    bootstrap=config.bootstrap, seed=config.seed),
               **judging, **truncation, "references": str(config.references)}
    write_jsonl(out / "judgements.jsonl", [{"id": r["id"], "instruction": r["instruction"], "output": a,
                                            "reference": r["output"], **j} for r, a, j in zip(rows, answers, judged)])
    write_json(out / "metrics.json", metrics)
    (out / "report.md").write_text(report(metrics, read_jsonl(out / "judgements.jsonl"), config.report_examples),
                                   encoding="utf-8")
    return metrics


def interval(metrics: dict[str, Any], name: str) -> str:
    ci = metrics.get(f"{name}_ci")
    return f"{pct(metrics.get(name))} [{pct(ci[0])}, {pct(ci[1])}]" if ci else pct(metrics.get(name))


def report(metrics: dict[str, Any], rows: list[Record], examples: int = 3, level: int = 1) -> str:
    """The Markdown section: the rates with their 95% intervals, lengths, the judge, a few comparisons."""
    lines = [
        heading(level, "AlpacaEval-style win rate against the reference outputs"), "",
        f"{metrics['judged']} of {metrics['instructions']} instructions judged by {metrics['judge']} "
        f"({metrics['method']}; {metrics['judge_failures']} without a verdict).", "",
        "| | % (95% interval) |", "|---|---|",
        f"| length-controlled win rate | {interval(metrics, 'lc_win_rate')} |",
        f"| win rate (mean preference) | {interval(metrics, 'win_rate')} |",
        f"| discrete win rate (ties half) | {interval(metrics, 'discrete_win_rate')} |", "",
        f"Mean length: {metrics['mean_length']:.0f} characters (references {metrics['mean_length_reference']:.0f}); "
        f"fitted length coefficient {num(metrics.get('length_coefficient'))} (negative: longer answers win more).",
    ]
    if metrics.get("position_consistency") is not None:
        lines.append(f"Position consistency (both orders give the same verdict): {pct(metrics['position_consistency'])}%.")
    for row in rows[:examples]:
        lines += ["", heading(level + 1, f"{row['id']}: preference {num(row.get('preference'), 2)}"), "",
                  fence(clip(row["instruction"], 500)), "", "Model:", "", fence(clip(row["output"], 800))]
    return "\n".join(lines) + "\n"
