"""Prompt generation, Self-Instruct style: few-shot the prompt model, then filter what it writes.

Each request shows 8 tasks (6 seed prompts, 2 prompts generated so far) and asks for a new one.
A candidate survives when it is within the length bounds, has none of the filtered keywords,
is not an exact duplicate, and its ROUGE-L F1 against every existing prompt (seed and accepted)
stays below the threshold (Self-Instruct: 0.7). The paper used a fixed prompt model; here it is
a setting (default: the current model).
"""

from __future__ import annotations

import dataclasses
import logging
import random
import re
from pathlib import Path
from typing import Any, Literal

from srlm import resume
from srlm.backends import make_generator
from srlm.config import StageConfig, setting
from srlm.errors import SrlmError
from srlm.generation import GenerationOptions
from srlm.io import read_prompts, write_jsonl
from srlm.seed_data import read_seed_prompts

log = logging.getLogger(__name__)

INSTRUCTION = (
    "Below are example tasks that a user might ask an AI assistant. "
    "Write one new task that is different from all of them. Reply with the task only.\n\n"
)


@dataclasses.dataclass
class PromptGenConfig(GenerationOptions, StageConfig):
    num_prompts: int = setting(1000, "prompts to produce (the paper does not give a number)")
    seed_shots: int = setting(6, "few-shot examples taken from the seed prompts")
    generated_shots: int = setting(2, "few-shot examples taken from the prompts generated so far")
    temperature: float = setting(0.6, "sampling temperature")
    top_p: float = setting(0.9, "nucleus sampling top-p")
    max_new_tokens: int = setting(128, "tokens per generated prompt")
    rouge_threshold: float = setting(0.7, "drop a prompt whose ROUGE-L F1 to an existing one is >= this")
    keywords: list[str] = setting(
        ["image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
         "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram"],
        "prompts containing any of these words are dropped (the model cannot see or make them)",
    )
    min_words: int = setting(3, "shortest prompt kept, in words")
    max_words: int = setting(150, "longest prompt kept, in words")
    max_rounds: int = setting(50, "generation rounds before giving up on reaching num_prompts")
    requests_per_round: int = setting(0, "few-shot requests per round; 0 = the prompts still missing")
    prompt_model: str = setting("", "model directory that writes the prompts; empty = the current model M(t) "
                                "(the paper used a fixed, stronger model)")
    source: Literal["generate", "file"] = setting("generate", "generate: the model writes new prompts (Self-Instruct); file: take them from "
                          "a prompts file instead, num_prompts per iteration, a fresh slice each round")
    file: str = setting("", "prompts file (JSONL {id, prompt}) for source=file; empty = prompts.jsonl in the seed directory")

    def validate(self) -> None:
        if self.seed_shots < 1:
            raise SrlmError("seed_shots must be >= 1")
        if not 0 < self.rouge_threshold <= 1:
            raise SrlmError(f"rouge_threshold must be in (0, 1], got {self.rouge_threshold}")




def from_file(config: PromptGenConfig, prompts: str | Path, iteration: int, out: str | Path) -> dict[str, Any]:
    """Iteration t's prompts from a file: rows (t-2)*num_prompts .. (t-1)*num_prompts, so rounds never share one.

    Iteration 2 is the first DPO round (M1 -> M2).
    """
    rows = read_prompts(prompts)
    start = (iteration - 2) * config.num_prompts
    chosen = rows[max(start, 0) : start + config.num_prompts]
    if iteration < 2 or not chosen:
        raise SrlmError(f"{prompts}: {len(rows)} prompts, none left for iteration {iteration} "
                        f"({config.num_prompts} per round from row {start + 1}); give more prompts or lower num_prompts")
    write_jsonl(out, [{**r, "source": r.get("source") or "file"} for r in chosen], "prompt")
    stats = {"proposed": len(chosen), "accepted": len(chosen), "from_file": 1}
    log.info("prompts for iteration %d: rows %d-%d of %s", iteration, start + 1, start + len(chosen), prompts)
    return stats


def few_shot_request(examples: list[str]) -> str:
    tasks = "".join(f"Task {i}: {text}\n" for i, text in enumerate(examples, start=1))
    return f"{INSTRUCTION}{tasks}Task {len(examples) + 1}:"


def clean(text: str) -> str:
    """The first task in a completion, without a leading 'Task N:' label."""
    text = re.sub(r"^\s*task\s*\d*\s*:\s*", "", text.strip(), flags=re.IGNORECASE)
    text = re.split(r"\n\s*task\s*\d+\s*:", text, flags=re.IGNORECASE)[0]
    return " ".join(text.split())


class PromptFilter:
    """Length, keyword, exact-duplicate and ROUGE-L filters over a growing pool of prompts."""

    def __init__(self, config: PromptGenConfig, existing: list[str]):
        from rouge_score import rouge_scorer

        self.config = config
        # Tokenise each pool prompt once and reuse it (as Alpaca's generator does); scoring a
        # candidate against thousands of prompts with RougeScorer.score re-tokenises both sides.
        self._tokenize = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)._tokenizer.tokenize
        self._lcs = rouge_scorer._score_lcs
        self.keywords = re.compile(r"\b(" + "|".join(map(re.escape, config.keywords)) + r")\b", re.I) if config.keywords else None
        self.pool: list[list[str]] = []
        self.seen: set[str] = set()
        self.rejected = {"length": 0, "keyword": 0, "duplicate": 0, "similar": 0}
        for text in existing:
            self.add(text)

    def add(self, text: str) -> None:
        self.pool.append(self._tokenize(text))
        self.seen.add(text.lower())

    def reason_to_drop(self, text: str) -> str | None:
        words = len(text.split())
        if not self.config.min_words <= words <= self.config.max_words:
            return "length"
        if self.keywords and self.keywords.search(text):
            return "keyword"
        if text.lower() in self.seen:
            return "duplicate"
        tokens = self._tokenize(text)
        if any(self._lcs(old, tokens).fmeasure >= self.config.rouge_threshold for old in self.pool):
            return "similar"
        return None

    def offer(self, text: str) -> bool:
        reason = self.reason_to_drop(text)
        if reason:
            self.rejected[reason] += 1
            return False
        self.add(text)
        return True


def run(
    config: PromptGenConfig,
    model: str | Path,
    out: str | Path,
    seed_prompts: str | Path | None = None,
    progress_volume: str = "",
) -> dict[str, Any]:
    """Write ``config.num_prompts`` new prompts (fewer if the rounds run out, never zero).

    Each round's generated texts are saved (``srlm.resume``: beside ``out``, or on ``progress_volume``); a re-run
    replays the saved rounds (the same few-shot draws, the same filter decisions) and generates only the rest, so
    its output is the uninterrupted run's."""
    seeds = read_seed_prompts(seed_prompts)
    if len(seeds) < config.seed_shots:
        raise SrlmError(f"{seed_prompts or 'bundled seed'}: {len(seeds)} seed prompts, fewer than seed_shots={config.seed_shots}")
    rounds = resume.Rounds(resume.progress_dir(out, progress_volume, ".rounds"),
                           resume.fingerprint(config=config.to_dict(), model=str(config.prompt_model or model),
                                              seeds=seeds))
    rng = random.Random(config.seed)
    generator = None
    kept = PromptFilter(config, seeds)
    accepted: list[str] = []
    proposed = 0
    for round_no in range(config.max_rounds):
        missing = config.num_prompts - len(accepted)
        if missing <= 0:
            break
        requests = []
        for _ in range(config.requests_per_round or missing):
            shots = rng.sample(seeds, config.seed_shots)
            shots += rng.sample(accepted, min(config.generated_shots, len(accepted)))
            rng.shuffle(shots)
            requests.append(few_shot_request(shots))
        outputs = rounds.load(round_no)
        if outputs is None:
            generator = generator or make_generator(config.prompt_model or model, config)
            outputs = [texts[0] for texts in generator.generate(
                requests, n=1, temperature=config.temperature, top_p=config.top_p, max_new_tokens=config.max_new_tokens,
                seed=config.seed + 1000 * round_no, desc=f"prompts round {round_no + 1}")]
            rounds.save(round_no, outputs)
        for text in outputs:
            proposed += 1
            candidate = clean(text)
            if len(accepted) < config.num_prompts and kept.offer(candidate):
                accepted.append(candidate)
    stats = {"proposed": proposed, "accepted": len(accepted), **{f"dropped_{k}": v for k, v in kept.rejected.items()},
             "rounds_resumed": rounds.replayed}
    if not accepted:
        raise SrlmError(f"prompt generation kept 0 of {proposed} proposed prompts (dropped: {kept.rejected}); "
                        "check the prompt model or loosen the filters")
    write_jsonl(out, [{"id": f"gen-{i:05d}", "prompt": p, "source": "generated"} for i, p in enumerate(accepted)], "prompt")
    rounds.clear()
    log.info("prompt generation: %s", stats)
    return stats
