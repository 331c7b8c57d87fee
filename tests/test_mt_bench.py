"""MT-Bench single-answer grading (srlm.mt_bench) on fixture files this test writes (same shapes as FastChat's):
the rating parser on hostile judgements, the second turn seeing the first answer, the judge prompt per category
and turn with the reference answers, the per-category temperatures, the scores; and a local tiny judge."""

from __future__ import annotations

import json

import pytest
from openai_standin import OpenAIStandIn, completion

from srlm.errors import SrlmError
from srlm.mt_bench import MTBenchConfig, load_judge_prompts, load_questions, parse_rating, run_mt_bench

QUESTIONS = [
    {"question_id": 1, "category": "writing", "turns": ["Write a line about owls.", "Now make it rhyme."]},
    {"question_id": 2, "category": "math", "turns": ["What is 2 + 3?", "And times 4?"]},
    {"question_id": 3, "category": "stem", "turns": ["Why is the sky blue?", "Say it in five words."]},
]
# Our own judge prompts in the shape of FastChat's: the four names, a system prompt and a template each.
JUDGE_PROMPTS = [
    {"name": "single-v1", "system_prompt": "Grade one answer.",
     "prompt_template": "[Question]\n{question}\n[Answer]\n{answer}\nRate 1-10 as [[rating]]."},
    {"name": "single-math-v1", "system_prompt": "Grade one math answer.",
     "prompt_template": "[Question]\n{question}\n[Reference]\n{ref_answer_1}\n[Answer]\n{answer}\nRate as [[rating]]."},
    {"name": "single-v1-multi-turn", "system_prompt": "Grade the second answer.",
     "prompt_template": "Q1 {question_1}\nA1 {answer_1}\nQ2 {question_2}\nA2 {answer_2}\nRate as [[rating]]."},
    {"name": "single-math-v1-multi-turn", "system_prompt": "Grade the second math answer.",
     "prompt_template": "R1 {ref_answer_1}\nR2 {ref_answer_2}\nQ1 {question_1}\nA1 {answer_1}\nQ2 {question_2}\n"
                        "A2 {answer_2}\nRate as [[rating]]."},
]
REFERENCES = [{"question_id": 2, "choices": [{"index": 0, "turns": ["5", "20"]}]}]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def files(tmp_path):
    return {"questions": str(write_jsonl(tmp_path / "questions.jsonl", QUESTIONS)),
            "judge_prompts": str(write_jsonl(tmp_path / "judge_prompts.jsonl", JUDGE_PROMPTS)),
            "references": str(write_jsonl(tmp_path / "references.jsonl", REFERENCES))}


@pytest.mark.parametrize("text, expected", [
    ("Rating: [[7]]", 7.0), ("[[8.5]]", 8.5), ("I'd say [6] overall.", 6.0), ("[[3]] then [[9]]", 3.0),
    ("Rating: [[11]]", None), ("[[0]]", None), ("Rating: 7", None), ("", None), ("[[seven]]", None),
])
def test_the_rating_is_the_first_bracketed_number_in_range(text, expected):
    assert parse_rating(text) == expected


def test_inputs_are_checked_with_the_file_and_record(tmp_path, files):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question_id": 9, "category": "x", "turns": ["only one"]}])
    with pytest.raises(SrlmError, match=r"bad.jsonl: question 1 needs 'turns': two non-empty texts"):
        load_questions(bad)
    partial = write_jsonl(tmp_path / "prompts.jsonl", JUDGE_PROMPTS[:2])
    with pytest.raises(SrlmError, match="no judge prompt named single-math-v1-multi-turn, single-v1-multi-turn"):
        load_judge_prompts(partial)
    assert len(load_questions(files["questions"], limit=2)) == 2


def model_and_judge(body):
    """Answers as the model ("answer to: <question>") and grades as the judge: turn-1 judgements get [[8]],
    multi-turn ones [[4]], and the stem question's second turn no rating at all."""
    system = body["messages"][0]["content"] if body["messages"][0]["role"] == "system" else ""
    last = body["messages"][-1]["content"]
    if not system:
        return completion(f"answer to: {last}")
    if "second" in system:
        return completion("I cannot rate this." if "five words" in last else "Rating: [[4]]")
    return completion("Good. Rating: [[8]]")


def test_two_turns_graded_per_turn_and_category(tmp_path, files):
    with OpenAIStandIn(model_and_judge) as server:
        config = MTBenchConfig.load("tiny", **files, backend="openai", base_url=server.url, judge_base_url=server.url,
                                    judge_model="judge")
        metrics = run_mt_bench(config, "model-under-test", tmp_path / "out")
    answers = [b for b in server.bodies if b["messages"][0]["role"] != "system"]
    judgements = [b for b in server.bodies if b["messages"][0]["role"] == "system"]
    assert len(answers) == 6 and len(judgements) == 6
    second = next(b for b in answers if b["messages"][-1]["content"] == "And times 4?")
    assert second["messages"][:2] == [{"role": "user", "content": "What is 2 + 3?"},
                                      {"role": "assistant", "content": "answer to: What is 2 + 3?"}]
    temperatures = {b["messages"][-1]["content"]: b["temperature"] for b in answers}
    assert temperatures["Write a line about owls."] == 0.7 and temperatures["What is 2 + 3?"] == 0.0
    assert temperatures["Why is the sky blue?"] == pytest.approx(0.1)
    math_turn_2 = next(b for b in judgements if b["messages"][0]["content"] == "Grade the second math answer.")
    assert "R1 5\nR2 20\n" in math_turn_2["messages"][1]["content"]  # the reference answers reach the math judge
    assert {b["model"] for b in judgements} == {"judge"} and {b["temperature"] for b in judgements} == {0.0}
    assert metrics["score_turn_1"] == 8.0 and metrics["score_turn_2"] == 4.0
    assert metrics["score"] == pytest.approx((8 * 3 + 4 * 2) / 5)  # the unrated judgement is left out
    assert metrics["by_category"] == {"math": 6.0, "stem": 8.0, "writing": 6.0}
    assert metrics["parse_failures"] == 1 and metrics["questions_without_reference"] == 0
    assert "| math | 6.00 |" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.slow
def test_a_local_tiny_judge_grades_every_turn_or_counts_a_failure(tmp_path, files, sft_model):
    config = MTBenchConfig.load("tiny", **{**files, "references": ""}, max_new_tokens=8, judge_max_new_tokens=8)
    metrics = run_mt_bench(config, sft_model, tmp_path / "out", judge_model=sft_model)
    assert metrics["judgements"] == 6 and metrics["judge"] == str(sft_model)
    assert metrics["questions_without_reference"] == 1  # math without a reference: the general prompt
    rows = [json.loads(line) for line in (tmp_path / "out" / "judgements.jsonl").read_text().splitlines()]
    assert {r["judge_prompt"] for r in rows} == {"single-v1", "single-v1-multi-turn"}
    assert metrics["parse_failures"] == sum(r["score"] is None for r in rows)
