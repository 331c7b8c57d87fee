import pytest

from srlm import SrlmError
from srlm.prompts import PromptFilter, PromptGenConfig, clean, few_shot_request


def test_filters():
    f = PromptFilter(PromptGenConfig(min_words=3), ["Write a short poem about the sea", "Explain how rain forms"])
    assert f.reason_to_drop("Write a short poem about the sea today") == "similar"
    assert f.reason_to_drop("Draw a cat on a mat") == "keyword"
    assert f.reason_to_drop("explain how rain forms") == "duplicate"
    assert f.reason_to_drop("Hi there") == "length"
    assert f.offer("Suggest three names for a bakery")
    assert not f.offer("Suggest three names for a bakery please")  # now similar to the accepted one
    assert f.rejected["similar"] == 1


def test_rouge_threshold_is_a_setting():
    text = "Write a short poem about the sea today"
    loose = PromptFilter(PromptGenConfig(rouge_threshold=0.95), ["Write a short poem about the sea"])
    assert loose.reason_to_drop(text) is None


def test_request_and_clean():
    request = few_shot_request(["A?", "B?"])
    assert request.endswith("Task 1: A?\nTask 2: B?\nTask 3:")
    assert clean(" Task 3: Name a  river.\nTask 4: something else") == "Name a river."


def test_prompt_model_is_a_setting(tiny_model, sft_model, tmp_path):
    """The prompts come from `prompt_model` when set, not from the round's model (which may be broken)."""
    from srlm.prompts import run

    config = PromptGenConfig.load("tiny", num_prompts=3, prompt_model=str(sft_model))
    stats = run(config, tmp_path / "no-such-model", tmp_path / "p.jsonl")
    assert stats["accepted"] >= 1
    with pytest.raises(SrlmError, match="model directory not found"):
        run(PromptGenConfig.load("tiny", num_prompts=3), tmp_path / "no-such-model", tmp_path / "q.jsonl")
