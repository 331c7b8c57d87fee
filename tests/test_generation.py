import importlib.util
import shutil

import pytest

from srlm import SrlmError
from srlm.backends import make_generator, resolve_backend, vllm_usable
from srlm.generation import GenerationOptions, request_seed, shard_indices
from srlm.transformers_backend import TransformersGenerator


@pytest.fixture(scope="module")
def generator(tiny_model):
    return make_generator(tiny_model, GenerationOptions(batch_size=8, threads=1))


def test_shapes_order_and_stop(generator):
    prompts = ["Tell me about rivers and the sea and boats.", "Hi", "Tell me about rivers and the sea and boats."]
    out = generator.generate(prompts, n=3, temperature=0.0, max_new_tokens=12)
    assert [len(r) for r in out] == [3, 3, 3]
    assert out[0] == out[2]  # length sorting and batching give results back in input order
    assert all(isinstance(t, str) and "<|end|>" not in t and "<|pad|>" not in t for r in out for t in r)
    assert generator.stats.new_tokens <= 9 * 12


def test_sampling_is_seeded(generator):
    a = generator.generate(["Write a haiku."], n=2, temperature=1.0, max_new_tokens=10, seed=5)
    b = generator.generate(["Write a haiku."], n=2, temperature=1.0, max_new_tokens=10, seed=5)
    c = generator.generate(["Write a haiku."], n=2, temperature=1.0, max_new_tokens=10, seed=6)
    assert a == b and a != c


def test_threads_setting(generator):
    import torch

    assert torch.get_num_threads() == 1


def test_model_dir_without_tokenizer(tiny_model, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    (broken / "tokenizer.json").unlink()
    with pytest.raises(SrlmError, match="no tokenizer"):
        TransformersGenerator(broken)
    (broken / "chat_template.jinja").unlink()
    shutil.copy(tiny_model / "tokenizer.json", broken / "tokenizer.json")
    with pytest.raises(SrlmError, match="no chat template"):
        TransformersGenerator(broken)


def test_unknown_backend(tiny_model):
    with pytest.raises(SrlmError, match="unknown generation backend"):
        make_generator(tiny_model, GenerationOptions(backend="magic"))


SHARD_PROMPTS = [f"Tell me {'more ' * (i % 5)}about topic number {i}." for i in range(14)]


def test_shards_union_equals_unsharded(generator):
    """Shard k of K generates the global batches b % K == k; their union is the K=1 output."""
    kwargs = dict(n=2, temperature=0.7, top_p=0.9, max_new_tokens=8, seed=3)
    full = generator.generate(SHARD_PROMPTS, **kwargs)
    parts = [generator.generate(SHARD_PROMPTS, shard=(k, 3), **kwargs) for k in range(3)]
    for i, texts in enumerate(full):
        owners = [p[i] for p in parts if p[i] is not None]
        assert owners == [texts], f"prompt {i}: produced by {len(owners)} shards or different replies"
    assert all(any(x is not None for x in p) for p in parts)  # 4 batches of 4 prompts over 3 shards


def test_bad_shard(generator):
    with pytest.raises(SrlmError, match="out of range"):
        generator.generate(["Hi"], shard=(3, 3))


def test_request_seeds_and_prompt_shards():
    seeds = {request_seed(s, i) for s in range(3) for i in range(50)}
    assert len(seeds) == 150 and all(0 <= x < 2**31 for x in seeds)
    assert request_seed(0, 1) != request_seed(1, 0)
    assert shard_indices(7, (1, 3)) == [1, 4] and shard_indices(2, (2, 3)) == []


def test_auto_backend():
    """auto is vLLM only where vLLM is importable and usable (GPU, or the CPU build)."""
    usable, why = vllm_usable()
    assert resolve_backend(GenerationOptions()) == ("vllm" if usable else "transformers")
    if importlib.util.find_spec("vllm") is None:
        assert not usable and "not importable" in why
    assert resolve_backend(GenerationOptions(backend="transformers")) == "transformers"


def test_replies_stop_at_every_eos_of_the_generation_config(tiny_model, tmp_path):
    """A model whose generation config lists a second end-of-turn token (as Llama 3's <|eot_id|>) stops there."""
    import json

    prompt = ["Tell me about rivers."]
    plain = TransformersGenerator(tiny_model, GenerationOptions(threads=1))
    (reply,), = plain.generate(prompt, n=1, temperature=0.0, max_new_tokens=8)
    first = plain.tokenizer(reply, add_special_tokens=False)["input_ids"][0]  # the first token it says
    assert reply and plain.stats.truncation()["truncated_share"] == 1.0  # 8 tokens were not enough to end

    ends = tmp_path / "m"
    shutil.copytree(tiny_model, ends)
    config = json.loads((ends / "generation_config.json").read_text())
    config["eos_token_id"] = [plain.tokenizer.eos_token_id, first]
    (ends / "generation_config.json").write_text(json.dumps(config))
    stopping = TransformersGenerator(ends, GenerationOptions(threads=1))
    assert stopping.stop_ids == [plain.tokenizer.eos_token_id, first]
    assert stopping.generate(prompt, n=1, temperature=0.0, max_new_tokens=8) == [[""]]
    assert stopping.stats.truncation() == {"truncated_replies": 0, "truncated_share": 0.0}
