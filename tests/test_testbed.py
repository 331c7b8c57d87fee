"""The testbed's data generator and the verifier: every answer's ground truth is what the grammar meant."""

import math
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
    ('Describe snow in a single sentence. Include the word truly.', "Snow is truly soft.", True),
    ('Describe snow in a single sentence. Include the word truly.', "Snow is untruly soft.", False),
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


@pytest.mark.parametrize(("prompt", "answer", "expected"), [
    ("Describe snow in a single sentence. Include the word truly.", "Snow is really soft.",
     "Asked for truly, used really. Misses the task."),
    ("Describe snow in a single sentence. Use exactly 5 words.", "Snow is soft at night.",
     "Asked for 5 words: Snow 1 is 2 soft 3 at 4 night 5. Follows the task."),
    ("Describe snow in a single sentence. Reply in all caps.", "SNOW IS soft.",
     'Not in capitals: "soft". Misses the task.'),
])
def test_judgement_copies_what_the_verdict_turns_on(prompt, answer, expected):
    """The words a judge copies keep the form they have in the texts (the same tokens); counts are spelled out."""
    text, score = testbed.judgement(prompt, answer, random.Random(0))
    note, score_line = text.split("\n")
    assert note == expected and score_line == f"Score: {score}"
    assert (score == 5) is testbed.check(prompt, answer)


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


# Margins from statistics, calibrated on seeds 0-4 with portable CPU numerics (README, "Proof of learning"):
# - each gain M1 -> M2 and M1 -> M3 is at least Z standard errors of the difference, sqrt(se1^2 + se2^2) (the two
#   models answer the same 250 prompts, so this is conservative): measured 4.8-9.5 and 5.5-10.6 SE;
# - the gain M1 -> M3 is at least 3x the control's (or 3 points when the control gains under 1): 16-28x measured;
# - M3 keeps M2's level within 2 points (M3 - M2 was +2.3 to +6.7);
# - the judges that built the pairs (M1, M2) are right on >= 80% of answers (worst seed 83.4%);
# - each round's pairs: >= 40% ordered as the verifier orders them (worst 46.5%) and >= 3x as many correct as
#   inverted (worst 5.5x).
# They hold unpinned too: this machine's native kernels gave 97.6-99.5% judges, 82-89% correct pairs and gains of
# 16-20 points (6+ SE) on seeds 0-2; the Intel machine of issue 11 gave seed 0 65.4 -> 79.6 -> 81.5 (about 5 SE each),
# a 91% judge, 71/3% pairs and a control at -3.1. The test runs seed 0, deterministic with portable numerics.
MARGINS = {"z": 3.0, "gain_over_control": 3.0, "m3_drop": 2.0, "judge_accuracy": 0.80, "pairs_correct": 0.40,
           "correct_over_inverted": 3.0}


def gain_in_standard_errors(rows, later):
    first, last = rows[0], rows[later]
    return (last["satisfied"] - first["satisfied"]) / math.hypot(first["stderr"], last["stderr"])


@pytest.mark.testbed
def test_the_compiled_pipeline_learns_on_the_testbed(tmp_path):
    """Proof of learning: the compiled pipeline (kfp.local) raises the ground-truth score M1 -> M3 with its own
    judge, and a random judge (the control) does not."""
    from pipelines import testbed as bed

    result = bed.run(tmp_path / "testbed", seed=0, numerics_mode="portable")
    real, control = result["arms"]["self-judge"], result["arms"]["random-judge"]
    m1, m2, m3 = (100 * row["satisfied"] for row in real)
    for later in (1, 2):
        assert gain_in_standard_errors(real, later) >= MARGINS["z"], (later, real)
    control_gain = 100 * (control[-1]["satisfied"] - control[0]["satisfied"])
    assert m3 - m1 >= MARGINS["gain_over_control"] * max(control_gain, 1.0), (m3 - m1, control_gain)
    assert m3 >= m2 - MARGINS["m3_drop"], (m2, m3)
    for row in real[:2]:  # the judges that built the pairs: M1 (round 2) and M2 (round 3)
        assert row["judge_accuracy"] >= MARGINS["judge_accuracy"], row
    for row in real[1:]:
        assert row["pairs_correct"] >= MARGINS["pairs_correct"], row
        assert row["pairs_correct"] >= MARGINS["correct_over_inverted"] * row["pairs_inverted"], row
    assert control[0]["satisfied"] == pytest.approx(real[0]["satisfied"])  # same M1: the arms differ only in the judge
