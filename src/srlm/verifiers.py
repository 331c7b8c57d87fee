"""Programmatic verifiers: ground truth for answers a program can check.

A verifier maps (prompt, answer) to True/False, or None when the prompt states nothing it can
check. ``testbed`` checks the testbed's constraints (``srlm.testbed``); IFEval-style checks
plug in the same way (add a name to ``VERIFIERS``).

Two uses:

- ``run_verify`` (the evaluation stage's verifier kind): the model answers held-out prompts
  ``n`` times; the verifier scores every answer (satisfaction overall, with its standard error
  over prompts, and per constraint kind); the model then judges its own answers with the rubric
  and the verifier measures that judge (accuracy, balanced accuracy, unscored share).
- ``pair_quality``: of a round's preference pairs, the share the verifier orders like the judge
  (chosen passes, rejected fails), inverted, or tied (both pass or both fail).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import statistics
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from srlm.backends import make_generator
from srlm.config import StageConfig, setting
from srlm.errors import SrlmError
from srlm.generation import GenerationOptions
from srlm.io import Record, atomic_path, read_prompts, write_json, write_jsonl
from srlm.judge import JudgeConfig, judge_config_of, judge_pairs, load_template
from srlm.reports import heading

log = logging.getLogger(__name__)

Verifier = Callable[[str, str], "bool | None"]


def _testbed() -> tuple[Verifier, Callable[[str], str | None]]:
    from srlm import testbed

    return testbed.check, lambda prompt: (testbed.parse_constraint(prompt) or (None,))[0]


# name -> () -> (check(prompt, answer), kind(prompt)); imported lazily
VERIFIERS: dict[str, Callable[[], tuple[Verifier, Callable[[str], str | None]]]] = {"testbed": _testbed}


def get_verifier(name: str) -> tuple[Verifier, Callable[[str], str | None]]:
    if name not in VERIFIERS:
        raise SrlmError(f"unknown verifier {name!r}; known: {', '.join(VERIFIERS)}")
    return VERIFIERS[name]()


@dataclasses.dataclass
class VerifyConfig(GenerationOptions, StageConfig):
    verifier: str = setting("", "programmatic verifier of the answers (testbed); empty = no verifier evaluation")
    prompts: str = setting("", "held-out prompts (JSONL); empty = verify.jsonl in the seed directory")
    n: int = setting(4, "answers sampled per prompt")
    temperature: float = setting(0.7, "answer sampling temperature (as in candidate sampling)")
    top_p: float = setting(0.9, "answer nucleus sampling top-p")
    max_new_tokens: int = setting(64, "tokens per answer")
    max_prompts: int = setting(0, "use only the first N prompts; 0 = all")
    judge: bool = setting(True, "also let the model judge its answers and measure that judge against the verifier")
    judge_samples: int = setting(3, "judgements per answer (the score is their mean)")
    judge_temperature: float = setting(0.7, "judge sampling temperature")
    judge_top_p: float = setting(0.9, "judge nucleus sampling top-p")
    judge_max_new_tokens: int = setting(64, "tokens per judgement")
    judge_template: str = setting("", "judge prompt template file; empty = built-in rubric")
    pass_threshold: float = setting(3.5, "a mean judge score >= this counts as the judge saying 'satisfied'")

    def validate(self) -> None:
        if self.verifier and self.verifier not in VERIFIERS:
            raise SrlmError(f"unknown verifier {self.verifier!r}; known: {', '.join(VERIFIERS)}")
        if self.n < 1 or self.judge_samples < 1:
            raise SrlmError("verify: n and judge_samples must be >= 1")

    def judge_config(self) -> JudgeConfig:
        return judge_config_of(self)


def satisfaction(rows: list[Record]) -> dict[str, Any]:
    """Share of answers the verifier passes, with the standard error over prompts, overall and per kind.

    ``rows``: one per prompt, ``{"kind", "passed": [bool per answer]}``. Answers to one prompt are
    correlated, so the standard error is that of the per-prompt means (sd / sqrt(prompts)).
    """

    def summarise(group: list[Record]) -> dict[str, float]:
        means = [statistics.fmean(r["passed"]) for r in group]
        se = statistics.stdev(means) / math.sqrt(len(means)) if len(means) > 1 else 0.0
        return {"satisfied": statistics.fmean(means), "stderr": se, "prompts": len(means)}

    kinds: dict[str, list[Record]] = defaultdict(list)
    for row in rows:
        kinds[row["kind"]].append(row)
    return {**summarise(rows), "by_kind": {kind: summarise(group) for kind, group in sorted(kinds.items())}}


def judge_agreement(passed: list[bool], means: list[float | None], threshold: float) -> dict[str, float]:
    """The judge measured against the verifier: accuracy, balanced accuracy and unscored share.

    An unscored answer (no valid score in any judgement) counts as a wrong call.
    """
    said = [m is not None and m >= threshold for m in means]
    right = [s == p and m is not None for s, p, m in zip(said, passed, means)]
    pos = [r for r, p in zip(right, passed) if p]
    neg = [r for r, p in zip(right, passed) if not p]
    rates = [statistics.fmean(g) for g in (pos, neg) if g]
    return {
        "accuracy": statistics.fmean(right) if right else 0.0,
        "balanced_accuracy": statistics.fmean(rates) if rates else 0.0,
        "true_positive_rate": statistics.fmean(pos) if pos else 0.0,
        "true_negative_rate": statistics.fmean(neg) if neg else 0.0,
        "unscored": sum(m is None for m in means) / len(means) if means else 0.0,
        "answers": len(means),
    }


def pair_quality(pairs: list[Record], verifier: str) -> dict[str, float]:
    """Of preference pairs, the shares the verifier orders as the judge did, inverted, or tied."""
    check, _ = get_verifier(verifier)
    counts = {"correct": 0, "inverted": 0, "tied": 0, "unchecked": 0}
    for pair in pairs:
        chosen, rejected = check(pair["prompt"], pair["chosen"]), check(pair["prompt"], pair["rejected"])
        if chosen is None or rejected is None:
            counts["unchecked"] += 1
        elif chosen == rejected:
            counts["tied"] += 1
        else:
            counts["correct" if chosen else "inverted"] += 1
    total = len(pairs)
    return {"pairs": total, **{f"{k}_share": (v / total if total else 0.0) for k, v in counts.items()}}


def run_verify(config: VerifyConfig, model: str | Path, prompts: str | Path, out: str | Path) -> dict[str, Any]:
    """Sample answers to held-out prompts, check them, let the model judge them; write ``out/``."""
    if not config.verifier:
        raise SrlmError("verify: no verifier set (e.g. verifier=testbed)")
    check, kind_of = get_verifier(config.verifier)
    records = read_prompts(prompts)
    if config.max_prompts:
        records = records[: config.max_prompts]
    unchecked = [r["id"] for r in records if kind_of(r["prompt"]) is None]
    if unchecked:
        raise SrlmError(f"{prompts}: {len(unchecked)} prompt(s) the {config.verifier!r} verifier cannot check, "
                        f"e.g. id {unchecked[0]!r}")
    generator = make_generator(model, config)
    answers = generator.generate([r["prompt"] for r in records], n=config.n, temperature=config.temperature,
                                 top_p=config.top_p, max_new_tokens=config.max_new_tokens, seed=config.seed,
                                 desc="verifier answers")
    rows = [{"id": r["id"], "prompt": r["prompt"], "kind": kind_of(r["prompt"]), "answers": texts,
             "passed": [bool(check(r["prompt"], a)) for a in texts]} for r, texts in zip(records, answers)]
    metrics: dict[str, Any] = satisfaction(rows)
    lengths = [len(a.split()) for row in rows for a in row["answers"]]
    metrics["mean_length_words"] = statistics.fmean(lengths) if lengths else 0.0
    if config.judge:
        items = [(row["prompt"], a) for row in rows for a in row["answers"]]
        judged, stats = judge_pairs(generator, items, config.judge_config(), load_template(config.judge_template),
                                    desc="judging verified answers")
        means = [j["mean"] for j in judged]
        cursor = 0
        for row in rows:
            row["judge_means"] = means[cursor : cursor + len(row["answers"])]
            cursor += len(row["answers"])
        metrics["judge"] = judge_agreement([p for row in rows for p in row["passed"]], means, config.pass_threshold)
        metrics["judge"]["parse_failure_rate"] = stats.parse_failure_rate
    generator.close()
    metrics["run"] = {"model": str(model), "prompts": str(prompts), "settings": config.to_dict()}
    with atomic_path(out, directory=True) as tmp:
        write_json(tmp / "metrics.json", metrics)
        write_jsonl(tmp / "answers.jsonl", rows)
        (tmp / "report.md").write_text(verify_report(metrics), encoding="utf-8")
    log.info("verifier evaluation of %s: %.1f%% satisfied (se %.1f)", model, 100 * metrics["satisfied"],
             100 * metrics["stderr"])
    return metrics


def verify_report(metrics: dict[str, Any], level: int = 1) -> str:
    lines = [
        heading(level, "Verifier evaluation"),
        "",
        f"Answers the verifier passes: **{100 * metrics['satisfied']:.1f}%** "
        f"(standard error {100 * metrics['stderr']:.1f} over {metrics['prompts']} prompts; "
        f"mean length {metrics['mean_length_words']:.1f} words).",
        "",
        "| constraint | satisfied | stderr | prompts |",
        "|---|---|---|---|",
    ]
    for kind, m in metrics["by_kind"].items():
        lines.append(f"| {kind} | {100 * m['satisfied']:.1f}% | {100 * m['stderr']:.1f} | {m['prompts']} |")
    judge = metrics.get("judge")
    if judge:
        lines += [
            "",
            f"The model judging its own answers, against the verifier: accuracy **{100 * judge['accuracy']:.1f}%**, "
            f"balanced accuracy {100 * judge['balanced_accuracy']:.1f}% (satisfied answers recognised "
            f"{100 * judge['true_positive_rate']:.1f}%, missed ones {100 * judge['true_negative_rate']:.1f}%), "
            f"unscored {100 * judge['unscored']:.1f}%.",
        ]
    return "\n".join(lines) + "\n"


def verify_prompts_path(config: VerifyConfig, seed_dir: str | Path | None) -> Path:
    """The held-out prompts: the setting, else ``verify.jsonl`` in the seed directory."""
    if config.prompts:
        return Path(config.prompts)
    if seed_dir is None or not (Path(seed_dir) / "verify.jsonl").is_file():
        raise SrlmError(f"verify: no prompts given and no verify.jsonl in the seed directory {seed_dir}")
    return Path(seed_dir) / "verify.jsonl"

