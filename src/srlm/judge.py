"""The model as its own judge: the additive 5-point rubric, the score parser and the judging stage.

A reply is judged ``samples`` times (paper: 3, T 0.7, top-p 0.9); its score is the mean of the
valid parses, unrounded. A judgement without a valid ``Score: N`` line is a parse failure: it
is counted and reported, never scored as 0. A reply with no valid parse at all is unscored.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import re
import statistics
from pathlib import Path
from typing import Any, Literal

from srlm import resume
from srlm.backends import make_generator
from srlm.config import StageConfig, setting
from srlm.errors import SrlmError
from srlm.generation import GenerationOptions, Generator, check_shard
from srlm.io import Record, read_jsonl, write_jsonl
from srlm.shards import gather, is_sharded, write_shard

log = logging.getLogger(__name__)

SLOTS = ("{instruction}", "{response}")

DEFAULT_TEMPLATE = """\
Look at the user's question and the response below, and grade the response with an additive
5-point scale. Points build on each other; award each one only when its condition holds:
- Add 1 point if the response is relevant to the question and offers some related information,
  even when it is incomplete or carries some unrelated content.
- Add a 2nd point if the response covers a substantial part of the question, without fully
  resolving it or giving a direct answer.
- Add a 3rd point if the response answers the basic elements of the question in a useful way,
  whether or not it reads like an AI assistant's answer or resembles text found elsewhere.
- Add a 4th point if the response is clearly written from an AI assistant's point of view,
  addresses the question directly and comprehensively, and is well organised and helpful, even
  if it could be slightly clearer, shorter or more focused.
- Add a 5th point if the response is impeccably tailored to the question by an AI assistant,
  with no extraneous content, showing expert knowledge in a high-quality, engaging and
  insightful answer.

User: {instruction}

<response>{response}</response>

After reviewing the question and the response:
- Explain your total score briefly, in at most 100 words.
- Finish with a last line of the form "Score: <total points>".
"""

# A compact rubric for very small models and CPU budgets (the testbed uses it): the same additive
# idea and score line in ~40 tokens instead of ~300, the response last so the verdict follows it.
SHORT_TEMPLATE = """\
Grade the response from 0 to 5, adding points for being on topic, for answering the task and for \
following every instruction of the task. Give a one-line reason, then "Score: <points>".

Task: {instruction}
Response: {response}"""
# Built-in templates a ``template`` setting can name instead of giving a file.
NAMED_TEMPLATES = {"rubric": DEFAULT_TEMPLATE, "short": SHORT_TEMPLATE}


_SCORE = re.compile(r"score\s*:\s*\**\s*(\d+(?:\.\d+)?)(?![\d.])", re.IGNORECASE)


def parse_score(text: str) -> float | None:
    """The last valid ``Score: N`` in ``text`` (0 <= N <= 5, decimals allowed), else None."""
    valid = [float(m) for m in _SCORE.findall(text) if 0.0 <= float(m) <= 5.0]
    return valid[-1] if valid else None


def load_template(
    path: str | Path | None, default: str = DEFAULT_TEMPLATE, slots: tuple[str, ...] = SLOTS, what: str = "judge template"
) -> str:
    """A judge prompt template: ``default``, a built-in by name (``NAMED_TEMPLATES``), or the user's
    file holding each of ``slots`` once."""
    if not path:
        return default
    if slots == SLOTS and str(path) in NAMED_TEMPLATES:
        return NAMED_TEMPLATES[str(path)]
    path = Path(path)
    if not path.is_file():
        raise SrlmError(f"{path}: {what} file not found")
    return check_template(path.read_text(encoding="utf-8"), str(path), slots, what)


def check_template(
    template: str, where: str = "judge template", slots: tuple[str, ...] = SLOTS, what: str = "judge template"
) -> str:
    for slot in slots:
        count = template.count(slot)
        if count != 1:
            raise SrlmError(
                f"{where}: the {what} must contain the slot {slot} exactly once (found {count}); "
                f"it needs {', '.join(slots)}"
            )
    return template


def fill_slots(template: str, **values: str) -> str:
    """Fill ``{name}`` slots in one pass: not str.format (texts hold braces), not chained
    replaces (an inserted text that contains a slot name must stay as it is)."""
    pattern = re.compile(r"\{(" + "|".join(map(re.escape, values)) + r")\}")
    return pattern.sub(lambda m: values[m.group(1)], template)


def fill_template(template: str, instruction: str, response: str) -> str:
    return fill_slots(template, instruction=instruction, response=response)


@dataclasses.dataclass
class JudgeConfig(GenerationOptions, StageConfig):
    samples: int = setting(3, "judgements sampled per reply; the score is the mean of the valid ones")
    temperature: float = setting(0.7, "judge sampling temperature")
    top_p: float = setting(0.9, "judge nucleus sampling top-p")
    max_new_tokens: int = setting(256, "tokens per judgement (the rubric asks for <= 100 words + score line)")
    template: str = setting("", "judge prompt template: a file with {instruction} and {response}, or a built-in "
                            "name (rubric, short); empty = the rubric")
    scorer: Literal["model", "random"] = setting("model", "model: the model judges with the rubric; random: scores drawn at random "
                          "(seeded, 1-5; the ablation control, no model is loaded)")
    resume_chunk: int = setting(512, "self-judging: replies per saved chunk: a retried or re-run stage continues after "
                                   "the last complete chunk (srlm.resume); 0 = no chunks")

    def validate(self) -> None:
        if self.samples < 1:
            raise SrlmError(f"judge samples must be >= 1, got {self.samples}")
        if self.resume_chunk < 0:
            raise SrlmError(f"resume_chunk must be >= 0 (0 = no chunks), got {self.resume_chunk}")


def judge_config_of(config: Any) -> JudgeConfig:
    """The rubric judge a config with ``judge_*`` settings implies (win rate, verifier evaluation):
    its own engine settings (every ``GenerationOptions`` field) plus the judge's sampling and template."""
    engine = {f.name: getattr(config, f.name) for f in dataclasses.fields(GenerationOptions)}
    return JudgeConfig(
        **engine, samples=config.judge_samples, temperature=config.judge_temperature, top_p=config.judge_top_p,
        max_new_tokens=config.judge_max_new_tokens, template=config.judge_template,
    )


@dataclasses.dataclass
class JudgeStats:
    replies: int = 0
    judgements: int = 0
    parse_failures: int = 0
    unscored_replies: int = 0
    truncated_judgements: int = 0  # judgements cut at max_new_tokens (often before their score line)

    @property
    def parse_failure_rate(self) -> float:
        return self.parse_failures / self.judgements if self.judgements else 0.0

    @property
    def truncated_share(self) -> float:
        return self.truncated_judgements / self.judgements if self.judgements else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "parse_failure_rate": self.parse_failure_rate,
                "truncated_share": self.truncated_share}


def random_judgements(count: int, samples: int, seed: int) -> list[list[str]]:
    """The ``random`` scorer: each of ``count`` requests gets ``samples`` judgements with a random score.

    Request i draws from its own seeded stream, so its scores do not depend on the others.
    """
    return [
        [f"Random judge (ablation control).\nScore: {rng.randint(1, 5)}" for _ in range(samples)]
        for rng in (random.Random(f"{seed}:{i}") for i in range(count))
    ]


def judge_pairs(
    generator: Generator | None,
    items: list[tuple[str, str]],
    config: JudgeConfig,
    template: str | None = None,
    desc: str = "judging",
    shard: tuple[int, int] | None = None,
) -> tuple[list[dict[str, Any] | None], JudgeStats]:
    """Judge (instruction, response) pairs; return per pair its raw outputs, scores and mean.

    With ``shard=(k, K)``, K > 1, only shard k's pairs are judged (the others' entries are None,
    and ``stats`` counts shard k's): the generator picks them from the full list and seeds them
    by their global position (the random scorer takes pair i when i % K == k, seeded per pair),
    so the K shards together equal the unsharded result.
    """
    template = template if template is not None else load_template(config.template)
    prompts = [fill_template(template, instruction, response) for instruction, response in items]
    sharded = is_sharded(shard)
    outputs: list[list[str] | None]
    if config.scorer == "random":
        outputs = list(random_judgements(len(prompts), config.samples, config.seed))
        if sharded:
            k, total = check_shard(shard)
            outputs = [texts if i % total == k else None for i, texts in enumerate(outputs)]
    else:
        truncated_before = generator.stats.truncated
        outputs = generator.generate(
            prompts,
            n=config.samples,
            temperature=config.temperature,
            top_p=config.top_p,
            max_new_tokens=config.max_new_tokens,
            seed=config.seed,
            desc=desc,
            **({"shard": check_shard(shard)} if sharded else {}),
        )
    stats = JudgeStats()
    if config.scorer != "random":
        stats.truncated_judgements = generator.stats.truncated - truncated_before
    results: list[dict[str, Any] | None] = []
    for (_, response), texts in zip(items, outputs):
        if texts is None:  # another shard's pair
            results.append(None)
            continue
        stats.replies += 1
        scores = [parse_score(t) for t in texts]
        valid = [s for s in scores if s is not None]
        stats.judgements += len(scores)
        stats.parse_failures += len(scores) - len(valid)
        stats.unscored_replies += not valid
        results.append(
            {"text": response, "judge_outputs": texts, "scores": scores, "mean": statistics.fmean(valid) if valid else None}
        )
    return results, stats


def require_some_scores(stats: JudgeStats, what: str) -> None:
    if stats.replies and stats.unscored_replies == stats.replies:
        raise SrlmError(
            f"{what}: the judge produced no valid score in {stats.judgements} judgements of {stats.replies} replies "
            f"(no 'Score: N' line with 0 <= N <= 5). Train the judge on EFT data, raise max_new_tokens, or check the template"
        )


def run(
    config: JudgeConfig, model: str | Path, candidates: str | Path, out: str | Path,
    shard: tuple[int, int] | None = None, progress_volume: str = "",
) -> dict[str, Any]:
    """Self-judging: score every candidate reply with the model's own rubric judgements.

    With ``shard=(k, K)``, K > 1, the unit is the judge request (one reply of one record): the
    generator judges shard k's requests of the full list, and ``out`` is a shard file
    (``srlm.shards``) with one line per judged reply (its record's position, id and prompt).
    ``merge_shards`` regroups the replies per record: byte for byte the unsharded output. The
    "no valid score at all" check needs every reply, so it runs at the merge, not per shard. With
    ``config.resume_chunk`` the work is saved in chunks (``srlm.resume``) and a re-run continues
    after the last complete one, to the same bytes.
    """
    records = read_jsonl(candidates, "candidates")
    items = [(r["prompt"], reply) for r in records for reply in r["replies"]]
    sharded = is_sharded(shard)
    chunks = resume.plan(out, len(items), config, model, candidates, shard, progress_volume)

    def judge_model():
        return make_generator(model, config) if config.scorer == "model" else None

    if chunks is None:
        return _judge(config, judge_model(), records, items, out, shard if sharded else None, candidates)
    todo = chunks.todo()
    generator = judge_model() if todo else None
    judged_now = sum(_judge(config, generator, records, items, path, part, candidates)["replies"] for part, path in todo)
    if sharded:
        rows, counts = resume.join_shard(chunks, "judgements", out, shard)
        stats = judgement_stats([{"replies": [row["reply"] for row in rows]}])
        stats.truncated_judgements = counts.get("truncated_judgements", 0)
        k, total = check_shard(shard)
        result = {**stats.as_dict(), "shard": k, "shards": total}
    else:
        result = merge_shards(chunks.files(), out)
        result.pop("shards")
    chunks.clear()
    return {**result, **chunks.stats(), "replies_judged_now": judged_now}


def _judge(config: JudgeConfig, generator: Generator | None, records: list[Record], items: list[tuple[str, str]],
           out: str | Path, shard: tuple[int, int] | None, candidates: str | Path) -> dict[str, Any]:
    """Judge ``items`` (shard ``shard`` of them: a shard file) into ``out``; this call's statistics."""
    judged, stats = judge_pairs(generator, items, config, shard=shard)
    if is_sharded(shard):
        owners = [(i, r) for i, r in enumerate(records) for _ in r["replies"]]
        lines = ((j, {"record": owners[j][0], "id": owners[j][1]["id"], "prompt": owners[j][1]["prompt"], "reply": reply})
                 for j, reply in enumerate(judged) if reply is not None)
        write_shard(out, "judgements", shard, len(items), lines, {"truncated_judgements": stats.truncated_judgements})
        k, total = check_shard(shard)
        log.info("judged shard %d of %d: %d replies, %d parse failures", k, total, stats.replies, stats.parse_failures)
        return {**stats.as_dict(), "shard": k, "shards": total}
    require_some_scores(stats, str(candidates))
    rows, cursor = [], 0
    for r in records:
        k = len(r["replies"])
        rows.append({"id": r["id"], "prompt": r["prompt"], "replies": judged[cursor : cursor + k]})
        cursor += k
    write_jsonl(out, rows, "judgements")
    log.info("judged %d replies: %d parse failures, %d unscored", stats.replies, stats.parse_failures, stats.unscored_replies)
    return stats.as_dict()


def judgement_stats(records: list[dict[str, Any]]) -> JudgeStats:
    """The counts ``judge_pairs`` reports, from judgements records."""
    replies = [reply for record in records for reply in record["replies"]]
    return JudgeStats(
        replies=len(replies),
        judgements=sum(len(r["scores"]) for r in replies),
        parse_failures=sum(1 for r in replies for s in r["scores"] if s is None),
        unscored_replies=sum(1 for r in replies if r["mean"] is None),
    )


def merge_shards(shard_files: list[str | Path], out: str | Path) -> dict[str, Any]:
    """The K judgements shard files of one judging run (any order) as one judgements file.

    Judged replies come back in request order (record by record, reply by reply) and are regrouped
    per record; the "no valid score at all" check of the unsharded stage runs here, on every reply.
    """
    items, total, counts = gather(shard_files, "judgements")
    rows: list[dict[str, Any]] = []
    for j, item in enumerate(items):
        if not isinstance(item, dict) or not {"record", "id", "prompt", "reply"} <= set(item):
            raise SrlmError(f"judgement item {j} of the shards {', '.join(map(str, shard_files))}: needs record, id, "
                            "prompt and reply")
        if item["record"] == len(rows):
            rows.append({"id": item["id"], "prompt": item["prompt"], "replies": []})
        elif item["record"] != len(rows) - 1 or (rows[-1]["id"], rows[-1]["prompt"]) != (item["id"], item["prompt"]):
            raise SrlmError(f"judgement item {j}: record {item['record']!r} (id {item['id']!r}) out of sequence; the "
                            f"shard files {', '.join(map(str, shard_files))} come from different candidates")
        rows[-1]["replies"].append(item["reply"])
    stats = judgement_stats(rows)
    stats.truncated_judgements = counts.get("truncated_judgements", 0)
    require_some_scores(stats, f"{total} judgement shards")
    write_jsonl(out, rows, "judgements")
    log.info("merged %d judgement shards: %d replies, %d parse failures", total, stats.replies, stats.parse_failures)
    return {**stats.as_dict(), "shards": total}
