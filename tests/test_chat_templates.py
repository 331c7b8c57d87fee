"""Base checkpoints ship no chat template: M0 gets one from base_model.chat_template, validated up front."""

import json
import shutil

import pytest
from kfp import dsl

import components
from srlm import SrlmError, chat_templates, stages
from srlm.modeldir import has_chat_template

GROUPS = {name: {"preset": "tiny"} for name in stages.GROUPS}


def base_checkpoint(tiny_model, dest, model_type="llama"):
    """The tiny model as a base checkpoint: no chat template anywhere."""
    shutil.copytree(tiny_model, dest)
    (dest / "chat_template.jinja").unlink()
    config = dest / "tokenizer_config.json"
    data = json.loads(config.read_text())
    data.pop("chat_template", None)
    config.write_text(json.dumps(data))
    model = json.loads((dest / "config.json").read_text())
    (dest / "config.json").write_text(json.dumps({**model, "model_type": model_type}))
    assert not has_chat_template(dest)
    return dest


def validate_hf(tmp_path, base_model):
    """The chat template validate hands to seed SFT (its outputs: base_model_uri, chat_template)."""
    _base_model_uri, chat_template = components.validate.python_func(
        **{**GROUPS, "base_model": base_model}, mlflow={"enabled": False}, kfp_run_id="k", base_model_kind="hf",
        eft_build=False, iterations=2, hardware={}, metrics=dsl.Metrics(name="m", uri=str(tmp_path / "m")))
    return chat_template


def test_every_named_template_marks_the_assistant_turns(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello there!"}]
    for name, template in chat_templates.NAMED.items():
        tokenizer.chat_template = template
        out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        said = tokenizer.decode([i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m])
        assert said.strip().startswith("Hello there!") and "Hi" not in said, name  # loss on the answer only
        prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
        assert "Be brief." in prompt and "Hello" not in prompt, name


def test_validation_gives_a_base_checkpoint_a_template_or_says_what_to_set(tiny_model, tmp_path):
    llama = base_checkpoint(tiny_model, tmp_path / "llama-base")
    assert validate_hf(tmp_path, {"uri": str(llama)}) == chat_templates.LLAMA_2  # auto, by family
    assert validate_hf(tmp_path, {"uri": str(llama), "chat_template": "chatml"}) == chat_templates.CHATML
    assert validate_hf(tmp_path, {"uri": str(tiny_model)}) == ""  # its own template is kept
    other = base_checkpoint(tiny_model, tmp_path / "other-base", model_type="gpt_neox")
    with pytest.raises(SrlmError, match="has no chat template and its family is not one srlm knows: set "
                                        "base_model.chat_template to llama-2, llama-3, chatml"):
        validate_hf(tmp_path, {"uri": str(other)})
    with pytest.raises(SrlmError, match="chat template 'vicuna': not one of auto, llama-2"):
        validate_hf(tmp_path, {"uri": str(llama), "chat_template": "vicuna"})


def test_seed_sft_of_a_base_checkpoint_saves_m1_with_the_template(tiny_model, seed_dir, tmp_path):
    base = base_checkpoint(tiny_model, tmp_path / "base")
    with pytest.raises(SrlmError, match="no chat template .* set base_model.chat_template"):
        stages.run_stage("sft", {"preset": "tiny", "sft": {"max_steps": 1}}, model=str(base), ift=str(seed_dir),
                         out=str(tmp_path / "refused"))
    stats = stages.run_stage("sft", {"preset": "tiny", "threads": 1, "sft": {"max_steps": 2}}, model=str(base),
                             ift=str(seed_dir), eft=str(seed_dir), out=str(tmp_path / "m1"), chat_template="llama-2")
    assert stats["steps"] == 2
    assert (tmp_path / "m1" / "chat_template.jinja").read_text() == chat_templates.LLAMA_2
