"""A testbed whose answers a program can check: proof that the self-rewarding loop learns.

Every prompt asks for one short sentence about a topic under one checkable constraint (all
capitals; ends with "!"; contains a given word; exactly N words; starts with "Yes"). Answers
come from a small grammar and either satisfy the constraint or narrowly miss it, so a
verifier (``check``) gives the ground truth the model's own judge is measured against.

The seed directory this module writes is a normal one (``ift.jsonl``, ``eft_train.jsonl``,
``eft_eval.jsonl``) plus ``prompts.jsonl`` (fresh prompts for the DPO rounds, read by the
prompt stage's ``source: file``) and ``verify.jsonl`` (held-out prompts for the verifier
evaluation). The IFT answers satisfy their constraint only ``satisfy_fraction`` of the time; the
EFT judgements are labelled by the verifier (``Score: 5`` when it passes, 1 or 2 when not). All
text is original to this project and generated from a seed.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from srlm.config import StageConfig, setting
from srlm.errors import SrlmError
from srlm.io import Record, atomic_path, write_jsonl

TOPICS = (
    "the ocean", "a river", "the mountains", "a library", "coffee", "the rain", "the moon", "a garden",
    "bicycles", "winter", "a market", "fresh bread", "trains", "the forest", "a lighthouse", "music",
    "a kitten", "the desert", "snow", "an old bridge", "honey", "the wind", "a castle", "apples",
    "a museum", "the sun", "a farm", "small boats", "the city park", "green tea", "clouds", "a piano",
    "the stars", "a quiet village", "sand", "a candle", "the harbor", "cheese", "a clock", "owls",
)
INTROS = (
    "Write a short sentence about {topic}.",
    "Say something about {topic} in one sentence.",
    "Describe {topic} in a single sentence.",
)
VERBS = ("is", "can be", "seems", "looks", "often feels", "is always")
ADJECTIVES = ("calm", "bright", "quiet", "lovely", "busy", "cold", "warm", "old", "gentle", "strange", "soft", "wild")
TAILS = (
    "today", "at night", "in the morning", "to many people", "after the rain", "on a long day",
    "in the early summer", "when the town is asleep", "for a child", "", "on a cold and windy evening",
    "during the last few days of autumn",
)
WORDS = ("really", "truly", "very", "quite", "rather", "simply", "still", "never", "surely", "almost", "mostly", "fairly")
COUNTS = tuple(range(5, 11))
OPENERS_NOT_YES = ("No", "Well", "Sure", "Maybe", "Indeed")


@dataclasses.dataclass(frozen=True)
class Constraint:
    """One constraint kind: how a prompt states it, how to check it, what the judge says about it."""

    kind: str
    phrasings: tuple[str, ...]  # "{arg}" marks the argument, when the kind has one
    passes: Callable[[str, str], bool]  # (answer, arg) -> satisfied?
    said_pass: str
    said_fail: str


def _words(text: str) -> list[str]:
    return text.split()


CONSTRAINTS = {
    c.kind: c
    for c in (
        Constraint("caps", ("Use only capital letters.", "Write it in capital letters only.",
                            "Write every letter in upper case.", "Reply in all caps."),
                   lambda a, _: any(ch.isalpha() for ch in a) and a == a.upper(),
                   "is written in capital letters only", "is not written in capital letters only"),
        Constraint("exclaim", ("End it with an exclamation mark.", "Finish with an exclamation mark.",
                               "Make the last character an exclamation mark.", "Close it with an exclamation mark."),
                   lambda a, _: a.rstrip().endswith("!"),
                   "ends with an exclamation mark", "does not end with an exclamation mark"),
        Constraint("word", ("Include the word {arg}.", "Use the word {arg} in it."),
                   lambda a, w: re.search(rf"\b{re.escape(w)}\b", a, re.IGNORECASE) is not None,
                   "contains the requested word", "does not contain the requested word"),
        Constraint("count", ("Use exactly {arg} words.", "It must have exactly {arg} words."),
                   lambda a, n: len(_words(a)) == int(n),
                   "has exactly the requested number of words", "does not have the requested number of words"),
        Constraint("yes", ('Start your reply with "Yes".', 'Begin with the word "Yes".', 'Open with "Yes".',
                           'Make "Yes" the first word.'),
                   lambda a, _: re.match(r"\s*Yes\b", a) is not None,
                   'starts with "Yes"', 'does not start with "Yes"'),
    )
}
KINDS = tuple(CONSTRAINTS)


def _phrasing_pattern(phrasing: str) -> re.Pattern[str]:
    return re.compile(re.escape(phrasing).replace(re.escape("{arg}"), r"(\w+)") + r"\s*$")


_PATTERNS = [(kind, _phrasing_pattern(p)) for kind, c in CONSTRAINTS.items() for p in c.phrasings]


def parse_constraint(prompt: str) -> tuple[str, str] | None:
    """The (kind, argument) a testbed prompt states, or None for a prompt that is not one."""
    for kind, pattern in _PATTERNS:
        match = pattern.search(prompt.strip())
        if match:
            return kind, (match.group(1) if match.groups() else "")
    return None


def check(prompt: str, answer: str) -> bool | None:
    """The verifier: does ``answer`` satisfy the constraint ``prompt`` states? None if it states none."""
    parsed = parse_constraint(prompt)
    if parsed is None:
        return None
    kind, arg = parsed
    return CONSTRAINTS[kind].passes(answer.strip(), arg)


# --------------------------------------------------------------------------- prompts and answers


def _topic_of(prompt: str) -> str:
    for intro in INTROS:
        head, _, tail = intro.partition("{topic}")
        if prompt.startswith(head):
            rest = prompt[len(head):]
            end = rest.find(tail) if tail else -1
            if end > 0:
                return rest[:end]
    raise SrlmError(f"not a testbed prompt: {prompt!r}")


def _sentence(rng: random.Random, topic: str, adverb: str = "", words: int | None = None) -> str:
    """A plain sentence about ``topic`` ("The ocean is calm at night."), with exactly ``words`` words if given."""
    subject = topic[0].upper() + topic[1:]
    shapes = [(verb, tail) for verb in VERBS for tail in TAILS
              if words is None or len(f"{subject} {verb} {adverb} x {tail}".split()) == words]
    if not shapes:
        raise SrlmError(f"the testbed grammar cannot make a {words}-word sentence about {topic!r}")
    verb, tail = rng.choice(shapes)
    return " ".join(p for p in (subject, verb, adverb, rng.choice(ADJECTIVES), tail) if p) + "."


def make_answer(rng: random.Random, prompt: str, satisfy: bool) -> str:
    """An answer to a testbed prompt that satisfies its constraint, or narrowly misses it."""
    parsed = parse_constraint(prompt)
    if parsed is None:
        raise SrlmError(f"not a testbed prompt: {prompt!r}")
    kind, arg = parsed
    topic = _topic_of(prompt)
    if kind == "caps":
        text = _sentence(rng, topic)
        if satisfy:
            return text.upper()
        if rng.random() < 0.5:
            return text
        words = text.upper().split()
        i = rng.randrange(len(words))
        words[i] = words[i].lower()
        return " ".join(words)
    if kind == "exclaim":
        text = _sentence(rng, topic)
        return text[:-1] + ("!" if satisfy else rng.choice([".", "?", "."]))
    if kind == "word":
        other = rng.choice([w for w in WORDS if w != arg])
        return _sentence(rng, topic, adverb=arg if satisfy else other)
    if kind == "count":
        n = int(arg)
        if not satisfy:
            n = rng.choice([m for m in (n - 2, n - 1, n + 1, n + 2) if m in _reachable(topic)])
        return _sentence(rng, topic, words=n)
    text = _sentence(rng, topic)
    opener = "Yes" if satisfy else rng.choice(OPENERS_NOT_YES)
    return f"{opener}, {text[0].lower()}{text[1:]}"


def _reachable(topic: str) -> set[int]:
    return {len(f"{topic} {verb} x {tail}".split()) for verb in VERBS for tail in TAILS}


def observation(kind: str, arg: str, answer: str) -> str:
    """What the judge notes before its verdict: the fact the constraint turns on, copied from the texts.

    Copying (the asked word beside the word used, the last mark, the first word, the first word not
    in capitals) is what a small model learns easily, so words are copied in the form they have in
    the texts (" really", not '"really"': another token). Counting is not: the count is spelled
    out word by word ("The 1 ocean 2 is 3 calm 4"), each step a copy and an increment.
    """
    answer = answer.strip()
    words = [w.strip(".,!?") for w in answer.split()]
    if kind == "caps":
        lower = next((w for w in words if w != w.upper()), "none")
        return f'Not in capitals: "{lower}".'
    if kind == "exclaim":
        return f'Last mark: "{answer[-1:] or "none"}".'
    if kind == "word":
        used = next((w for w in words if w.lower() in WORDS), "none")
        return f"Asked for {arg}, used {used}."
    if kind == "count":
        spelled = " ".join(f"{w} {i}" for i, w in enumerate(words, 1))
        return f"Asked for {arg} words: {spelled}."
    return f'First word: "{words[0] if words else "none"}".'


def judgement(prompt: str, answer: str, rng: random.Random) -> tuple[str, int]:
    """The EFT target for (prompt, answer): the observation, the verdict from the verifier, the score line."""
    parsed = parse_constraint(prompt)
    if parsed is None:
        raise SrlmError(f"not a testbed prompt: {prompt!r}")
    kind, arg = parsed
    note = observation(kind, arg, answer)
    if check(prompt, answer):
        return f"{note} Follows the task.\nScore: 5", 5
    score = rng.choice([1, 2])
    return f"{note} Misses the task.\nScore: {score}", score


# --------------------------------------------------------------------------- the seed directory


@dataclasses.dataclass
class TestbedConfig(StageConfig):
    ift_examples: int = setting(4000, "IFT conversations (instruction -> answer)")
    satisfy_fraction: float = setting(0.5, "share of IFT answers that satisfy their constraint")
    eft_examples: int = setting(8000, "EFT judge examples, labelled by the verifier")
    eft_eval_items: int = setting(100, "held-out judge items (one satisfying and one missing answer each)")
    prompts_per_iteration: int = setting(300, "fresh prompts per DPO round in prompts.jsonl")
    iterations: int = setting(3, "models M1..M<iterations>: prompts.jsonl holds iterations-1 rounds of prompts")
    verify_prompts: int = setting(250, "held-out prompts in verify.jsonl (the verifier evaluation)")
    seed: int = setting(0, "seed for every draw")

    def validate(self) -> None:
        if not 0 <= self.satisfy_fraction <= 1:
            raise SrlmError(f"satisfy_fraction must be in [0, 1], got {self.satisfy_fraction}")
        if min(self.ift_examples, self.eft_examples, self.eft_eval_items, self.verify_prompts) < 1:
            raise SrlmError("ift_examples, eft_examples, eft_eval_items and verify_prompts must be >= 1")
        if self.iterations < 2 or self.prompts_per_iteration < 1:
            raise SrlmError("testbed: iterations must be >= 2 and prompts_per_iteration >= 1")


def all_prompts() -> list[str]:
    """Every distinct prompt the grammar can state (topic x intro x constraint phrasing x argument)."""
    prompts = []
    for topic in TOPICS:
        for intro in INTROS:
            for kind, constraint in CONSTRAINTS.items():
                args = {"word": WORDS, "count": [str(n) for n in COUNTS]}.get(kind, [""])
                for phrasing in constraint.phrasings:
                    prompts.extend(f"{intro.format(topic=topic)} {phrasing.replace('{arg}', a)}" for a in args)
    return prompts


def split_prompts(config: TestbedConfig) -> dict[str, list[str]]:
    """Disjoint prompt sets: held out (verify, each round's fresh prompts, EFT eval) and the rest for seed data.

    The held-out sets are drawn constraint-balanced, so every kind has the same share.
    """
    rng = random.Random(config.seed)
    by_kind = {kind: [p for p in all_prompts() if parse_constraint(p)[0] == kind] for kind in KINDS}
    for prompts in by_kind.values():
        rng.shuffle(prompts)
    sizes = {"verify": config.verify_prompts, "rounds": config.prompts_per_iteration * (config.iterations - 1),
             "eft_eval": config.eft_eval_items}
    sets: dict[str, list[str]] = {}
    cursor = dict.fromkeys(KINDS, 0)
    for name, size in sizes.items():
        chosen = []
        for i in range(size):
            kind = KINDS[i % len(KINDS)]
            if cursor[kind] >= len(by_kind[kind]) // 2:  # keep at least half of each kind for the seed data
                raise SrlmError(f"testbed: {name} needs {size} prompts; the grammar has too few {kind!r} prompts left")
            chosen.append(by_kind[kind][cursor[kind]])
            cursor[kind] += 1
        rng.shuffle(chosen)
        sets[name] = chosen
    sets["seed"] = [p for kind in KINDS for p in by_kind[kind][cursor[kind]:]]
    return sets


def build(config: TestbedConfig) -> dict[str, list[Record]]:
    """The testbed's seed files as records (see the module doc)."""
    rng = random.Random(config.seed + 1)
    sets = split_prompts(config)
    by_kind = {kind: [p for p in sets["seed"] if parse_constraint(p)[0] == kind] for kind in KINDS}

    def seed_prompt() -> str:  # constraint kinds balanced, whatever each kind's number of prompts
        return rng.choice(by_kind[rng.choice(KINDS)])

    ift = []
    for i in range(config.ift_examples):
        prompt = seed_prompt()
        answer = make_answer(rng, prompt, satisfy=rng.random() < config.satisfy_fraction)
        ift.append({"id": f"tb-ift-{i:05d}", "messages": [{"role": "user", "content": prompt},
                                                         {"role": "assistant", "content": answer}]})
    eft = []
    for i in range(config.eft_examples):
        prompt = seed_prompt()
        answer = make_answer(rng, prompt, satisfy=rng.random() < 0.5)
        text, score = judgement(prompt, answer, rng)
        eft.append({"id": f"tb-eft-{i:05d}", "prompt": prompt, "response": answer, "judgement": text, "score": score})
    eft_eval = []
    for i, prompt in enumerate(sets["eft_eval"]):
        replies = [make_answer(rng, prompt, satisfy=True), make_answer(rng, prompt, satisfy=False)]
        order = [0, 1] if rng.random() < 0.5 else [1, 0]
        eft_eval.append({"id": f"tb-eval-{i:04d}", "prompt": prompt, "replies": [replies[j] for j in order],
                         "ranks": [j for j in order]})
    rounds = [
        {"id": f"tb-round{2 + i // config.prompts_per_iteration}-{i:05d}", "prompt": p, "source": "testbed",
         "constraint": parse_constraint(p)[0]}
        for i, p in enumerate(sets["rounds"])
    ]
    verify = [{"id": f"tb-verify-{i:04d}", "prompt": p, "source": "testbed", "constraint": parse_constraint(p)[0]}
              for i, p in enumerate(sets["verify"])]
    return {"ift": ift, "eft_train": eft, "eft_eval": eft_eval, "prompts": rounds, "verify": verify}


FILE_KINDS = {"ift": "ift", "eft_train": "eft", "eft_eval": "eft_eval", "prompts": "prompt", "verify": "prompt"}


def run(config: TestbedConfig, out: str | Path) -> dict[str, Any]:
    """Write the testbed seed directory; return the counts and the IFT answers' satisfaction rate."""
    parts = build(config)
    with atomic_path(out, directory=True) as tmp:
        counts = {name: write_jsonl(tmp / f"{name}.jsonl", records, FILE_KINDS[name]) for name, records in parts.items()}
    satisfied = [check(r["messages"][0]["content"], r["messages"][1]["content"]) for r in parts["ift"]]
    return {**counts, "ift_satisfied": sum(map(bool, satisfied)) / len(satisfied)}


def corpus(config: TestbedConfig | None = None, examples: int = 400) -> list[str]:
    """Text for the tiny model's tokenizer: prompts, answers and judgements the testbed writes."""
    config = config or TestbedConfig()
    rng = random.Random(config.seed + 2)
    prompts = all_prompts()
    texts = []
    for _ in range(examples):
        prompt = rng.choice(prompts)
        answer = make_answer(rng, prompt, satisfy=rng.random() < 0.5)
        texts.extend([prompt, answer, judgement(prompt, answer, rng)[0]])
    return texts
