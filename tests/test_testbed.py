"""The testbed's data generator and the verifier: every answer's ground truth is what the grammar meant."""

import random

import pytest

from srlm import SrlmError, testbed, verifiers
from srlm.io import read_jsonl


def test_answers_satisfy_or_miss_as_asked():
    rng = random.Random(0)
    for prompt in testbed.all_prompts()[::5]:
        for satisfy in (True, False):
            answer = testbed.make_answer(rng, prompt, satisfy)
            assert testbed.check(prompt, answer) is satisfy, (prompt, answer)


@pytest.mark.parametrize(("prompt", "answer", "expected"), [
    ("Write a short sentence about owls. Reply in all caps.", "OWLS ARE WILD AT NIGHT.", True),
    ("Write a short sentence about owls. Reply in all caps.", "OWLS ARE wild AT NIGHT.", False),
    ("Describe snow in a single sentence. End it with an exclamation mark.", "Snow is soft!", True),
    ("Describe snow in a single sentence. End it with an exclamation mark.", "Snow is soft.", False),
    ('Describe snow in a single sentence. Include the word "truly".', "Snow is truly soft.", True),
    ('Describe snow in a single sentence. Include the word "truly".', "Snow is untruly soft.", False),
    ("Describe snow in a single sentence. Use exactly 5 words.", "Snow is soft at night.", True),
    ("Describe snow in a single sentence. Use exactly 5 words.", "Snow is soft tonight.", False),
    ('Describe snow in a single sentence. Begin with the word "Yes".', "Yes, snow is soft.", True),
    ('Describe snow in a single sentence. Begin with the word "Yes".', "Yesterday snow was soft.", False),
    ("Name a fruit.", "Apple.", None),
])
def test_check(prompt, answer, expected):
    assert testbed.check(prompt, answer) is expected


def test_seed_directory_is_disjoint_balanced_and_reproducible(tmp_path):
    config = testbed.TestbedConfig(ift_examples=400, eft_examples=300, eft_eval_items=20, prompts_per_iteration=50,
                                   verify_prompts=40, satisfy_fraction=0.25, seed=3)
    stats = testbed.run(config, tmp_path / "a")
    testbed.run(config, tmp_path / "b")
    for name in ("ift", "eft_train", "eft_eval", "prompts", "verify"):
        assert (tmp_path / "a" / f"{name}.jsonl").read_bytes() == (tmp_path / "b" / f"{name}.jsonl").read_bytes()
    assert stats["prompts"] == 100 and stats["verify"] == 40
    assert 0.18 < stats["ift_satisfied"] < 0.32
    ift = {r["messages"][0]["content"] for r in read_jsonl(tmp_path / "a" / "ift.jsonl", "ift")}
    held_out = [r["prompt"] for name in ("verify", "prompts") for r in read_jsonl(tmp_path / "a" / f"{name}.jsonl", "prompt")]
    assert len(set(held_out)) == len(held_out) and not ift & set(held_out)
    kinds = [testbed.parse_constraint(p)[0] for p in held_out]
    assert {kinds.count(k) for k in testbed.KINDS} == {len(held_out) // 5}
    for item in read_jsonl(tmp_path / "a" / "eft_train.jsonl", "eft"):
        assert item["judgement"].endswith(f"Score: {item['score']}")
        assert (item["score"] == 5) is testbed.check(item["prompt"], item["response"])
    rounds = [r["id"].split("-")[1] for r in read_jsonl(tmp_path / "a" / "prompts.jsonl", "prompt")]
    assert rounds == ["round2"] * 50 + ["round3"] * 50


def test_config_rejects_bad_values():
    with pytest.raises(SrlmError, match="satisfy_fraction"):
        testbed.TestbedConfig.load(None, satisfy_fraction=1.5)
    with pytest.raises(SrlmError, match="too few 'caps' prompts"):
        testbed.split_prompts(testbed.TestbedConfig(verify_prompts=5000))


def test_satisfaction_and_judge_agreement():
    rows = [{"kind": "caps", "passed": [True, True]}, {"kind": "caps", "passed": [False, False]},
            {"kind": "yes", "passed": [True, False]}]
    result = verifiers.satisfaction(rows)
    assert result["satisfied"] == pytest.approx(0.5)
    assert result["stderr"] == pytest.approx(0.5 / 3 ** 0.5)
    assert result["by_kind"]["caps"]["satisfied"] == 0.5 and result["by_kind"]["yes"]["prompts"] == 1
    agreement = verifiers.judge_agreement([True, True, False, False], [5.0, 2.0, 1.0, None], threshold=3.5)
    assert agreement["accuracy"] == 0.5  # one right per class; the unscored answer counts as wrong
    assert agreement["true_positive_rate"] == 0.5 and agreement["true_negative_rate"] == 0.5
    assert agreement["unscored"] == 0.25


def test_pair_quality():
    prompt = "Describe snow in a single sentence. End it with an exclamation mark."
    pairs = [
        {"prompt": prompt, "chosen": "Snow!", "rejected": "Snow."},
        {"prompt": prompt, "chosen": "Snow.", "rejected": "Snow!"},
        {"prompt": prompt, "chosen": "Snow!", "rejected": "Ice!"},
        {"prompt": "Name a fruit.", "chosen": "Apple.", "rejected": "Stone."},
    ]
    quality = verifiers.pair_quality(pairs, "testbed")
    assert quality == {"pairs": 4, "correct_share": 0.25, "inverted_share": 0.25, "tied_share": 0.25,
                       "unchecked_share": 0.25}
    with pytest.raises(SrlmError, match="unknown verifier 'ifeval'"):
        verifiers.pair_quality(pairs, "ifeval")
