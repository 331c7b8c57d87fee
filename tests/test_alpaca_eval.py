"""AlpacaEval-style win rate (srlm.alpaca_eval): the parsers on hostile judge outputs, the order draw, the
reference loader, the logprob path against a local OpenAI-compatible server that returns logprobs, and the
pairwise path with the tiny model as a local (transformers) judge. The logprob path against a real vLLM
server is in tests/test_vllm.py."""

from __future__ import annotations

import json
import math

import pytest
from openai_standin import OpenAIStandIn, completion

from srlm.alpaca_eval import (
    AlpacaEvalConfig,
    is_switched,
    load_references,
    parse_identifier,
    preference_from_logprobs,
    run_alpaca_eval,
)
from srlm.errors import SrlmError

REFERENCES = [
    {"id": 0, "instruction": "Name a colour.", "output": "Blue.", "dataset": "fixture"},
    {"id": 1, "instruction": "Write a short sentence about owls.", "output": "Owls hunt at night and fly silently."},
    {"id": 2, "instruction": "Count to three.", "output": "One, two, three."},
    {"id": 3, "instruction": "Give a synonym of happy.", "output": "Glad."},
    {"id": 4, "instruction": "Describe snow in a single sentence.", "output": "Snow is cold, soft and white."},
    {"id": 5, "instruction": "What is two plus two?", "output": "Four."},
]


@pytest.fixture
def references(tmp_path):
    path = tmp_path / "references.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in REFERENCES))
    return path


@pytest.mark.parametrize("text, expected", [
    ("M", "M"), (" m\n", "m"), ("**M**", "M"), ("Output M is better.", "M"), ('"m"', "m"),
    ("mM", None), ("Model", None), ("", None), ("I cannot decide.", None), ("m or M", "m"),
])
def test_the_verdict_is_the_first_standalone_identifier(text, expected):
    assert parse_identifier(text) == expected


def test_the_preference_is_the_probability_mass_on_the_models_identifier():
    top = {"m": math.log(0.2), "M": math.log(0.6), "The": math.log(0.1)}
    assert preference_from_logprobs(top, switched=False) == pytest.approx(0.75)  # the model is output M
    assert preference_from_logprobs(top, switched=True) == pytest.approx(0.25)  # the model is output m
    assert preference_from_logprobs({" M": math.log(0.5), "M": math.log(0.1), "m": math.log(0.2)}, False) \
        == pytest.approx(0.75)  # " M" and "M" are the same identifier
    assert math.isnan(preference_from_logprobs({"The": -0.1, "A": -3.0}, False))  # no verdict among the top tokens
    assert math.isnan(preference_from_logprobs(None, False))


def test_the_order_is_drawn_per_instruction_and_is_balanced():
    instructions = [f"instruction {i}" for i in range(400)]
    draws = [is_switched(i) for i in instructions]
    assert draws == [is_switched(i) for i in instructions]  # the same instruction is always shown the same way
    assert 160 < sum(draws) < 240


def test_references_are_checked_with_the_file_and_row(tmp_path, references):
    rows = load_references(references, limit=4)
    assert [r["id"] for r in rows] == ["0", "1", "2", "3"] and rows[0]["dataset"] == "fixture"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "Hi", "output": "Hello"}\n{"instruction": "Bye"}\n')
    with pytest.raises(SrlmError, match=r"bad.jsonl: row 2 has no 'output' text"):
        load_references(bad)
    listed = tmp_path / "outputs.json"
    listed.write_text(json.dumps([{"instruction": "Hi", "output": "Hello"}]))
    assert load_references(listed)[0]["id"] == "0"
    with pytest.raises(SrlmError, match="reference file not found"):
        load_references(tmp_path / "missing.jsonl")
    with pytest.raises(SrlmError, match="logprob needs judge_base_url"):
        AlpacaEvalConfig.load("tiny", method="logprob")


def logprob_verdict(body):
    """The judge's one-token verdict always puts 0.8 on "M" and 0.2 on "m"."""
    top = [{"token": "M", "logprob": math.log(0.8)}, {"token": "m", "logprob": math.log(0.2)}]
    return completion("M", "length", logprobs={"content": [{"token": "M", "logprob": math.log(0.8), "top_logprobs": top}]})


@pytest.mark.slow
def test_the_logprob_method_weighs_the_judges_one_token_verdict(tmp_path, references, tiny_model):
    with OpenAIStandIn(logprob_verdict) as judge:
        config = AlpacaEvalConfig.load("tiny", references=str(references), max_new_tokens=8, judge_base_url=judge.url,
                                       judge_model="judge-70b", bootstrap=100)
        metrics = run_alpaca_eval(config, tiny_model, tmp_path / "out")
    expected = [0.2 if is_switched(r["instruction"]) else 0.8 for r in REFERENCES]  # P(M) = 0.8, the model's slot
    assert metrics["method"] == "logprob" and metrics["judge"] == f"judge-70b at {judge.url}"
    assert metrics["win_rate"] == pytest.approx(sum(expected) / len(expected))
    assert metrics["judged"] == 6 and metrics["judge_failures"] == 0
    body = judge.bodies[0]
    assert body["logprobs"] is True and body["top_logprobs"] == 5 and body["max_tokens"] == 1
    assert body["model"] == "judge-70b"
    rows = [json.loads(line) for line in (tmp_path / "out" / "judgements.jsonl").read_text().splitlines()]
    assert [r["preference"] for r in rows] == pytest.approx(expected)
    for row in rows:  # the reference is output "m" exactly when the model's answer is not shown first
        shown = next(b["messages"][-1]["content"] for b in judge.bodies if row["instruction"] in b["messages"][-1]["content"])
        assert (shown.index(row["reference"]) < shown.index('assistant "M"')) == (not row["model_shown_first"])
    outputs = json.loads((tmp_path / "out" / "model_outputs.json").read_text())
    assert [o["instruction"] for o in outputs] == [r["instruction"] for r in REFERENCES]
    assert "length-controlled win rate" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.slow
def test_the_pairwise_method_with_a_local_judge_asks_in_both_orders(tmp_path, references, sft_model):
    config = AlpacaEvalConfig.load("tiny", references=str(references), max_new_tokens=16, bootstrap=50)
    metrics = run_alpaca_eval(config, sft_model, tmp_path / "out", judge_model=sft_model)
    assert metrics["method"] == "pairwise" and metrics["judge"] == str(sft_model)
    assert metrics["instructions"] == 6 and metrics["judged"] + metrics["judge_failures"] == 6
    rows = [json.loads(line) for line in (tmp_path / "out" / "judgements.jsonl").read_text().splitlines()]
    assert all({"judgement", "judgement_swapped"} <= set(r) for r in rows)
    for row in rows:  # a preference exists exactly when one of the two orders gave a verdict
        verdicts = [parse_identifier(row["judgement"]), parse_identifier(row["judgement_swapped"])]
        assert (row["preference"] is None) == (verdicts == [None, None])
        assert row["preference"] is None or row["preference"] in (0.0, 0.5, 1.0)
    assert metrics["position_consistency"] is None or 0.0 <= metrics["position_consistency"] <= 1.0
