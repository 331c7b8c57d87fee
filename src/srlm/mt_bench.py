"""MT-Bench single-answer grading (Zheng et al. 2023, FastChat's llm_judge), on the user's files.

The model answers each question's two turns; the second turn sees the model's own first answer. The
answer temperature is per category (FastChat's: 0.7 writing and roleplay, 0.1 stem and humanities, 0
extraction, math, coding and reasoning: greedy). A judge grades each turn 1-10 with the judge prompts
file's ``single-v1`` (turn 1) and ``single-v1-multi-turn`` (turn 2, the whole conversation), or their
``single-math-v1`` forms with the reference answers for the categories that need one (math, reasoning,
coding). The rating is the first ``[[N]]`` in the judgement, else the first ``[N]`` (FastChat's two
patterns); a judgement without one, or with a rating outside 1-10, is a parse failure: counted, never
scored. Scores: the mean per turn, per category (both turns) and overall (every valid turn score, as
FastChat's ``show_result``).

Files (``../shared/data/mt_bench_*.jsonl`` for hand runs): questions ``{question_id, category,
turns: [q1, q2]}``; judge prompts ``{name, system_prompt, prompt_template}``; reference answers
``{question_id, choices: [{turns: [r1, r2]}]}``. Writes ``answers.jsonl``, ``judgements.jsonl``,
``metrics.json`` and ``report.md``.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from srlm.backends import make_generator
from srlm.config import StageConfig, setting
from srlm.errors import SrlmError
from srlm.generation import GenerationOptions
from srlm.io import Record, read_records, write_json, write_jsonl
from srlm.judge import fill_slots
from srlm.judge_server import JudgeServerOptions, open_judge
from srlm.reports import clip, fence, heading, num

REFERENCE_CATEGORIES = ("math", "reasoning", "coding", "arena-hard-200")  # FastChat's NEED_REF_CATS
TEMPERATURES = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0, "reasoning": 0.0,
                "stem": 0.1, "humanities": 0.1, "arena-hard-200": 0.0}  # FastChat's temperature_config
DEFAULT_TEMPERATURE = 0.7  # a category FastChat does not list
JUDGE_PROMPTS = {(False, 1): "single-v1", (True, 1): "single-math-v1", (False, 2): "single-v1-multi-turn",
                 (True, 2): "single-math-v1-multi-turn"}  # (needs a reference, turn) -> prompt name
_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")

FILES_HINT = "the JSONL files of FastChat's llm_judge (questions, judge prompts, reference answers)"


@dataclasses.dataclass
class MTBenchConfig(JudgeServerOptions, GenerationOptions, StageConfig):
    """MT-Bench: two-turn answers graded 1-10 by a judge (the answer settings are the model's generation
    options; the judge's are the ``judge_*`` settings)."""

    questions: str = setting("", "MT-Bench questions JSONL {question_id, category, turns: [q1, q2]}")
    judge_prompts: str = setting("", "judge prompts JSONL {name, system_prompt, prompt_template} with single-v1, "
                                     "single-math-v1 and their -multi-turn forms (FastChat's judge_prompts.jsonl)")
    references: str = setting("", "reference answers JSONL {question_id, choices: [{turns}]} for math, reasoning and "
                                  "coding; empty = those questions are graded without one (said in the report)")
    max_questions: int = setting(0, "use only the first N questions; 0 = all (MT-Bench: 80)")
    max_new_tokens: int = setting(1024, "tokens per answer turn (FastChat: 1024)")
    judge_max_new_tokens: int = setting(2048, "tokens per judgement (FastChat: 2048)")

    def validate(self) -> None:
        for name in ("max_new_tokens", "judge_max_new_tokens"):
            if getattr(self, name) < 1:
                raise SrlmError(f"mt_bench.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_questions < 0:
            raise SrlmError(f"mt_bench.max_questions must be >= 0, got {self.max_questions}")
        self.check_judge_server("mt_bench")


def parse_rating(text: str) -> float | None:
    """The first ``[[N]]`` (else the first ``[N]``) as a number in 1-10, else None."""
    found = _RATING.search(text or "") or _RATING_BACKUP.search(text or "")
    if not found:
        return None
    value = float(found.group(1))
    return value if 1.0 <= value <= 10.0 else None


def check_inputs(config: MTBenchConfig) -> None:
    """Read the questions, judge prompts and references as the run will (validation, before any GPU work)."""
    load_questions(config.questions, config.max_questions)
    load_judge_prompts(config.judge_prompts)
    load_references(config.references)


def load_questions(path: str | Path, limit: int = 0) -> list[Record]:
    if not path:
        raise SrlmError("mt_bench.questions is empty: give the questions file (JSONL of {question_id, category, turns})")
    rows = []
    for i, row in enumerate(read_records(path, FILES_HINT), start=1):
        turns = row.get("turns") if isinstance(row, dict) else None
        if not (isinstance(turns, list) and len(turns) == 2 and all(isinstance(t, str) and t.strip() for t in turns)):
            raise SrlmError(f"{path}: question {i} needs 'turns': two non-empty texts")
        if not isinstance(row.get("category"), str) or "question_id" not in row:
            raise SrlmError(f"{path}: question {i} needs 'question_id' and 'category'")
        rows.append({"question_id": row["question_id"], "category": row["category"], "turns": turns})
    return rows[:limit] if limit else rows


def load_judge_prompts(path: str | Path) -> dict[str, Record]:
    if not path:
        raise SrlmError("mt_bench.judge_prompts is empty: give the judge prompts file (FastChat's judge_prompts.jsonl)")
    prompts = {row.get("name"): row for row in read_records(path, FILES_HINT) if isinstance(row, dict)}
    missing = sorted(set(JUDGE_PROMPTS.values()) - set(prompts))
    if missing:
        raise SrlmError(f"{path}: no judge prompt named {', '.join(missing)}")
    for name in JUDGE_PROMPTS.values():
        if not isinstance(prompts[name].get("prompt_template"), str):
            raise SrlmError(f"{path}: judge prompt {name} has no prompt_template")
    return prompts


def load_references(path: str | Path) -> dict[Any, list[str]]:
    """question_id -> the reference answer's two turns."""
    if not path:
        return {}
    refs = {}
    for i, row in enumerate(read_records(path, FILES_HINT), start=1):
        try:
            refs[row["question_id"]] = list(row["choices"][0]["turns"])
        except (KeyError, IndexError, TypeError):
            raise SrlmError(f"{path}: reference {i} needs question_id and choices[0].turns") from None
    return refs


def judge_messages(prompt: Record, question: Record, answers: list[str], turn: int,
                   reference: list[str] | None) -> list[dict[str, str]]:
    """The judge's conversation for one turn: the prompt's system text and its template filled."""
    q, a = question["turns"], answers
    values = {"question": q[0], "answer": a[0], "question_1": q[0], "answer_1": a[0], "question_2": q[1],
              "answer_2": a[1]}
    if reference:
        values.update(ref_answer_1=reference[0], ref_answer_2=reference[1] if len(reference) > 1 else "")
    user = fill_slots(prompt["prompt_template"], **values)
    system = prompt.get("system_prompt") or ""
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]


def _answer(generator: Any, config: MTBenchConfig, questions: list[Record]) -> list[list[str]]:
    """Both turns of every question, each category at its temperature; turn 2 sees the model's turn 1."""
    answers: list[list[str]] = [["", ""] for _ in questions]
    by_temperature: dict[float, list[int]] = defaultdict(list)
    for i, q in enumerate(questions):
        by_temperature[TEMPERATURES.get(q["category"], DEFAULT_TEMPERATURE)].append(i)
    for turn in (0, 1):
        for temperature, indices in sorted(by_temperature.items()):
            prompts = []
            for i in indices:
                q = questions[i]
                history = [] if turn == 0 else [{"role": "user", "content": q["turns"][0]},
                                                {"role": "assistant", "content": answers[i][0]}]
                prompts.append(history + [{"role": "user", "content": q["turns"][turn]}])
            texts = generator.generate(prompts, n=1, temperature=temperature, top_p=1.0,
                                       max_new_tokens=config.max_new_tokens, seed=config.seed,
                                       desc=f"mt_bench answers, turn {turn + 1}")
            for i, text in zip(indices, texts):
                answers[i][turn] = text[0]
    return answers


def run_mt_bench(config: MTBenchConfig, model: str | Path, out: str | Path, judge_model: str | Path | None = None
                 ) -> dict[str, Any]:
    """Answer, grade and score MT-Bench into ``out/``; the metrics."""
    questions = load_questions(config.questions, config.max_questions)
    prompts = load_judge_prompts(config.judge_prompts)
    references = load_references(config.references)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    generator = make_generator(model, config)
    try:
        answers = _answer(generator, config, questions)
        truncation = generator.stats.truncation()
    finally:
        generator.close()
    write_jsonl(out / "answers.jsonl", [{"question_id": q["question_id"], "category": q["category"], "turns": a}
                                        for q, a in zip(questions, answers)])
    jobs = []
    for q, a in zip(questions, answers):
        needs_reference = q["category"] in REFERENCE_CATEGORIES
        reference = references.get(q["question_id"]) if needs_reference else None
        for turn in (1, 2):
            prompt = prompts[JUDGE_PROMPTS[(needs_reference and reference is not None, turn)]]
            jobs.append((q, turn, prompt["name"], judge_messages(prompt, q, a, turn, reference)))
    judge, identity = open_judge(config, str(judge_model) if judge_model else None, "mt_bench")
    try:
        texts = judge.generate([job[3] for job in jobs], n=1, temperature=0.0, max_new_tokens=config.judge_max_new_tokens,
                               seed=config.seed, desc="mt_bench judging")
    finally:
        judge.close()
    rows = [{"question_id": q["question_id"], "category": q["category"], "turn": turn, "judge_prompt": name,
             "judgement": text[0], "score": parse_rating(text[0])} for (q, turn, name, _), text in zip(jobs, texts)]
    write_jsonl(out / "judgements.jsonl", rows)
    metrics = {**scores(rows), "judge": identity, **truncation,
               "questions_without_reference": sum(q["category"] in REFERENCE_CATEGORIES and
                                                  q["question_id"] not in references for q in questions)}
    write_json(out / "metrics.json", metrics)
    (out / "report.md").write_text(report(metrics, rows), encoding="utf-8")
    return metrics


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def scores(rows: list[Record]) -> dict[str, Any]:
    """Mean score per turn, per category (both turns) and overall, over valid ratings; the failures."""
    valid = [r for r in rows if r["score"] is not None]
    categories = sorted({r["category"] for r in rows})
    return {
        "score": _mean([r["score"] for r in valid]),
        "score_turn_1": _mean([r["score"] for r in valid if r["turn"] == 1]),
        "score_turn_2": _mean([r["score"] for r in valid if r["turn"] == 2]),
        "by_category": {c: _mean([r["score"] for r in valid if r["category"] == c]) for c in categories},
        "judgements": len(rows), "parse_failures": len(rows) - len(valid),
        "parse_failure_rate": (len(rows) - len(valid)) / len(rows) if rows else 0.0,
    }


def report(metrics: dict[str, Any], rows: list[Record], examples: int = 2, level: int = 1) -> str:
    lines = [heading(level, "MT-Bench (single-answer grading, 1-10)"), "",
             f"Judge: {metrics['judge']}. {metrics['judgements']} judgements, {metrics['parse_failures']} without a "
             "valid [[rating]] (counted, never scored).", "",
             f"Overall {num(metrics['score'], 2)}; turn 1 {num(metrics['score_turn_1'], 2)}; turn 2 "
             f"{num(metrics['score_turn_2'], 2)}.", "", "| category | score |", "|---|---|"]
    lines += [f"| {c} | {num(s, 2)} |" for c, s in metrics["by_category"].items()]
    if metrics["questions_without_reference"]:
        lines += ["", f"{metrics['questions_without_reference']} math/reasoning/coding questions had no reference "
                      "answer and were graded with the general prompt."]
    for row in rows[:examples]:
        lines += ["", heading(level + 1, f"Question {row['question_id']}, turn {row['turn']}: {num(row['score'], 1)}"),
                  "", fence(clip(row["judgement"], 600))]
    return "\n".join(lines) + "\n"
