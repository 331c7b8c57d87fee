import hashlib

from srlm import tiny_model as tm
from srlm.generation import load_tokenizer
from srlm.modeldir import check_model_dir, read_lineage


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tiny_model_is_a_complete_hf_dir(tiny_model):
    check_model_dir(tiny_model)
    assert (tiny_model / "chat_template.jinja").is_file()
    assert read_lineage(tiny_model)["iteration"] == 0
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert 0.5e6 < sum(p.numel() for p in model.parameters()) < 3e6


def test_deterministic_given_seed(tiny_model, tmp_path):
    again = tmp_path / "again"
    tm.run(tm.TinyModelConfig.load("tiny"), again)
    for name in ("tokenizer.json", "model.safetensors"):
        assert digest(again / name) == digest(tiny_model / name)
    other = tmp_path / "other"
    tm.run(tm.TinyModelConfig.load("tiny", seed=1), other)
    assert digest(other / "model.safetensors") != digest(tiny_model / "model.safetensors")


def test_chat_template_masks_assistant_tokens_only(tiny_model):
    tok = load_tokenizer(tiny_model)
    messages = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]
    out = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assistant = tok.decode([i for i, m in zip(ids, mask) if m])
    assert assistant == "Blue.<|end|>"
    assert "Name a colour." in tok.decode([i for i, m in zip(ids, mask) if not m])
    prompt = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|assistant|>\n")


def test_testbed_corpus_tokenizer_keeps_judge_prompts_short():
    from srlm import testbed
    from srlm.judge import fill_template, load_template
    from srlm.tiny_model import build_tokenizer

    tokenizer = build_tokenizer(1024, "testbed")
    prompt = testbed.all_prompts()[0]
    filled = fill_template(load_template("short"), prompt, "A SHORT ANSWER.")
    assert len(tokenizer(filled)["input_ids"]) < 120
