"""The fit check (srlm.fit, ``srlm plan``): exact parameter counts, the formula's numbers for known shapes,
refusals that say what would fit."""

import json

import pytest

from srlm import cli, fit
from srlm.errors import SrlmError
from srlm.judge import JudgeConfig
from srlm.training import DPOConfig, SFTConfig

GIB = 1024**3
# Public architecture shapes (the models' config.json files, reduced to what counts).
LLAMA3_8B = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
             "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
             "max_position_embeddings": 8192, "tie_word_embeddings": False}
LLAMA2_70B = {"model_type": "llama", "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
              "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 32000, "max_position_embeddings": 4096}


def llama_params(c):
    """Hand count: embeddings and LM head (V h each), per layer q/o (h x h), k/v (h x kv_dim), the gated MLP
    (3 h f) and two RMSNorms (2 h), the final norm (h)."""
    h, f, kv_dim = c["hidden_size"], c["intermediate_size"], c["hidden_size"] // c["num_attention_heads"] * c["num_key_value_heads"]
    layer = 2 * h * h + 2 * h * kv_dim + 3 * h * f + 2 * h
    return 2 * c["vocab_size"] * h + c["num_hidden_layers"] * layer + h


@pytest.fixture(scope="module")
def shapes():
    return {"8b": fit.model_shape(LLAMA3_8B), "70b": fit.model_shape(LLAMA2_70B)}


QWEN2_7B = {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
            "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False}
QWEN3_8B = {"model_type": "qwen3", "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
            "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936,
            "tie_word_embeddings": False}
MISTRAL_7B = {"model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
              "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000}


def test_parameter_counts_are_exact(shapes, tiny_model):
    assert shapes["8b"].params == llama_params(LLAMA3_8B) == 8_030_261_248  # Meta's published count
    assert shapes["70b"].params == llama_params(LLAMA2_70B) == 68_976_648_192
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert fit.model_shape(tiny_model).params == sum(p.numel() for p in loaded.parameters())


@pytest.mark.parametrize("config", [
    LLAMA3_8B, LLAMA2_70B, QWEN2_7B, QWEN3_8B, MISTRAL_7B,
    {**LLAMA3_8B, "num_hidden_layers": 2, "tie_word_embeddings": True},
    {**LLAMA3_8B, "num_hidden_layers": 2, "attention_bias": True, "mlp_bias": True},
], ids=["llama-3-8b", "llama-2-70b", "qwen2-7b", "qwen3-8b", "mistral-7b", "tied", "biases"])
def test_the_formula_the_validation_image_uses_counts_what_transformers_builds(config):
    """The light validation image has no torch: Llama-style families are counted by formula; transformers
    building the model on the meta device is the reference."""
    assert fit.llama_style_params(config) == fit._meta_device_params("model", config)


def test_70b_full_parameter_dpo_numbers_on_four_nodes_of_eight(shapes):
    """Paper preset DPO (reference log-probs precomputed, 4 pairs per device, 2048 tokens, checkpointing), 32 GPUs:
    model states 16 P / 32; activations 2 s b h L + 34 s b h with b = 8 rows (chosen + rejected); logits 8 s b V;
    10% + 2 GiB overhead."""
    p, s, b, h, layers, vocab = 68_976_648_192, 2048, 8, 8192, 80, 32000
    expected = {"model_states": 16 * p / 32, "activations": 2 * s * b * h * layers + 34 * s * b * h, "logits": 8 * s * b * vocab}
    expected["overhead"] = 0.1 * sum(expected.values()) + 2 * GIB
    estimate = fit.check_training(shapes["70b"], DPOConfig(), fit.Layout(4, 8, "zero3", 80), "dpo")
    assert estimate.parts == pytest.approx(expected)
    assert estimate.total / GIB == pytest.approx(68.3, abs=0.05) and estimate.fits


def test_70b_full_parameter_dpo_is_refused_on_one_80gb_gpu_with_what_would_fit(shapes):
    with pytest.raises(SrlmError, match=r"needs about 1163\.6 GiB per GPU .* on 1 node\(s\) x 1 GPU\(s\) of 80 GiB, ddp: "
                                        r"it does not fit\. What would fit: strategy=fsdp2 or zero3 on 4 node\(s\) x 8 GPU\(s\)"):
        fit.check_training(shapes["70b"], DPOConfig(), fit.Layout(1, 1, "ddp", 80), "dpo", "llama-2-70b")
    assert not fit.training(shapes["70b"], DPOConfig(), fit.Layout(1, 8, "fsdp2", 80), "dpo").fits  # one node is not enough


def test_8b_fits_one_node_of_eight_and_one_gpu_only_with_offload(shapes):
    on_one_node = fit.Layout(1, 8, "fsdp2", 80)
    assert fit.check_training(shapes["8b"], SFTConfig(), on_one_node, "sft").total / GIB == pytest.approx(30.4, abs=0.05)
    assert fit.check_training(shapes["8b"], DPOConfig(), on_one_node, "dpo").total / GIB == pytest.approx(42.4, abs=0.05)
    found = fit.what_fits(shapes["8b"], SFTConfig(), fit.Layout(1, 1, "ddp", 80), "sft")
    assert found[0] == "strategy=fsdp2 or zero3 on 1 node(s) x 2 GPU(s)"
    assert "strategy=zero3_offload on 1 node(s) x 1 GPU(s) (with 90 GiB of CPU memory per node" in found[1]


def test_the_reference_model_and_the_batch_count(shapes):
    layout = fit.Layout(1, 8, "fsdp2", 80)
    precomputed = fit.training(shapes["8b"], DPOConfig(), layout, "dpo")
    loaded = fit.training(shapes["8b"], DPOConfig(precompute_ref_log_probs=False), layout, "dpo")
    assert "reference" not in precomputed.parts and loaded.parts["reference"] == 2 * shapes["8b"].params / 8
    sft = fit.training(shapes["8b"], SFTConfig(), layout, "sft")
    assert precomputed.parts["logits"] == 2 * sft.parts["logits"]  # DPO runs chosen and rejected together
    unchecked = fit.training(shapes["8b"], SFTConfig(gradient_checkpointing=False), layout, "sft")
    assert unchecked.parts["activations"] > 10 * sft.parts["activations"]


def test_generation_needs_tensor_parallelism_for_70b(shapes):
    layout = fit.Layout(gpu_memory_gib=80)
    generators = {"judge": JudgeConfig()}
    estimates = fit.plan(LLAMA2_70B, layout, sft=SFTConfig(), dpo=DPOConfig(), generators=generators)[1]
    judge = estimates[-1]
    assert judge.parts["weights"] == 2 * shapes["70b"].params and not judge.fits
    problems = fit.refusals(shapes["70b"], estimates, layout, sft=SFTConfig(), dpo=DPOConfig(), generators=generators)
    assert problems[-1].endswith("tensor_parallel_size=2 would fit")
    assert fit.generation(shapes["70b"], JudgeConfig(tensor_parallel_size=4), 80).fits


def test_srlm_plan_prints_the_table_and_exits_2_on_a_refusal(tmp_path, capsys):
    model = tmp_path / "llama-3-8b"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(LLAMA3_8B))
    assert cli.main(["plan", "--model", str(model), "--gpus-per-node", "8", "--strategy", "fsdp2"]) == 0
    out = capsys.readouterr().out
    assert "8,030,261,248 parameters" in out and out.count("True") == 5  # sft, dpo, prompts, sample, judge
    assert cli.main(["plan", "--model", str(model)]) == 2
    assert "What would fit: strategy=fsdp2 or zero3 on 1 node(s) x 2 GPU(s)" in capsys.readouterr().err
    big = tmp_path / "llama-2-70b"
    big.mkdir()
    (big / "config.json").write_text(json.dumps(LLAMA2_70B))
    assert cli.main(["plan", "--model", str(big), "--nodes", "4", "--gpus-per-node", "8", "--strategy", "zero3",
                     "--tensor-parallel-size", "4"]) == 0
    assert capsys.readouterr().out.count("True") == 5
    assert cli.main(["plan", "--model", str(tmp_path / "nothing")]) == 2
    assert "no config.json" in capsys.readouterr().err


def big_checkpoint(tiny_model, dest, shape):
    """A model directory with a big model's config.json (tiny weights: validation reads only the config)."""
    import shutil

    shutil.copytree(tiny_model, dest)
    (dest / "config.json").write_text(json.dumps(shape))
    return dest


def validate_on(model, hardware, judging=None, **training):
    from srlm import validation

    groups = {"base_model": {"uri": str(model)}, "data": {"preset": "tiny"}, "sampling": {"preset": "paper"},
              "judging": judging or {"preset": "paper"}, "training": {"preset": "paper", **training},
              "evaluation": {"preset": "tiny"}, "mlflow": {"enabled": False}}
    return validation.validate(groups, base_model_kind="hf", hardware=hardware)


def test_validation_refuses_what_the_compiled_gpus_cannot_hold(tiny_model, tmp_path):
    one_gpu = {"training": {"gpus": 1.0, "gpu_memory_mib": 81920.0}, "generation": {"gpus": 1.0, "gpu_memory_mib": 81920.0}}
    big = big_checkpoint(tiny_model, tmp_path / "llama-2-70b", LLAMA2_70B)
    with pytest.raises(SrlmError) as refused:
        validate_on(big, one_gpu)
    message = str(refused.value)
    for stage in ("sft", "dpo", "prompts", "sample", "judge"):
        assert f"{stage}: " in message, stage
    assert "What would fit: strategy=fsdp2 or zero3 on 4 node(s) x 8 GPU(s)" in message
    assert "tensor_parallel_size=2 would fit" in message
    eight_gpus = {"training": {"gpus": 8, "gpu_memory_mib": 81920}, "generation": {"gpus": 1, "gpu_memory_mib": 81920}}
    llama3 = big_checkpoint(tiny_model, tmp_path / "llama-3-8b", LLAMA3_8B)
    assert validate_on(llama3, eight_gpus, sft={"strategy": "fsdp2"}, dpo={"strategy": "fsdp2"})["problems"] == 0
    with pytest.raises(SrlmError, match=r"training.sft.gpus_per_node=16 but the compiled pipeline gives training "
                                        r"tasks 8 GPU\(s\)"):
        validate_on(llama3, eight_gpus, sft={"strategy": "fsdp2", "gpus_per_node": 16})
    with pytest.raises(SrlmError, match=r"judge: tensor_parallel_size=4 but the compiled pipeline gives generation "
                                        r"tasks 1 GPU\(s\)"):
        validate_on(llama3, {**eight_gpus, "training": {}}, judging={"preset": "paper", "judge": {"tensor_parallel_size": 4}})
    assert validate_on(big, {})["problems"] == 0  # no GPUs compiled in (the tiny profile): nothing to check


def test_validation_plans_a_trainjob_on_its_nodes_not_on_the_task(tiny_model, tmp_path):
    big = big_checkpoint(tiny_model, tmp_path / "llama-2-70b", LLAMA2_70B)
    launcher_only = {"training": {"gpus": 0, "gpu_memory_mib": 81920}}  # the task launches; the nodes train
    four_nodes = {"nodes": 4, "gpus_per_node": 8, "strategy": "zero3", "shared_dir": "/models"}
    assert validate_on(big, launcher_only, sft=four_nodes, dpo=four_nodes)["problems"] == 0
    with pytest.raises(SrlmError, match=r"dpo: .* on 2 node\(s\) x 8 GPU\(s\) of 80 GiB, zero3: it does not fit"):
        validate_on(big, launcher_only, sft=four_nodes, dpo={**four_nodes, "nodes": 2})


def test_lora_counts_what_peft_adds_and_fits_8b_on_one_gpu(shapes, tiny_model):
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    def peft_trainable(model):
        adapted = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
        return sum(p.numel() for p in adapted.parameters() if p.requires_grad)

    values = {k: v for k, v in LLAMA3_8B.items() if k != "model_type"}
    with torch.device("meta"):
        llama3 = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model("llama", **values))
    assert fit.lora_params(shapes["8b"], 16, ["all-linear"]) == peft_trainable(llama3) == 41_943_040
    tiny = fit.model_shape(tiny_model)
    assert fit.lora_params(tiny, 16, ["all-linear"]) == peft_trainable(transformers.AutoModelForCausalLM.from_pretrained(tiny_model))
    assert fit.lora_params(shapes["8b"], 8, ["q_proj", "v_proj"]) == 32 * 8 * ((4096 + 4096) + (4096 + 1024))

    lora = SFTConfig(peft="lora")
    estimate = fit.check_training(shapes["8b"], lora, fit.Layout(1, 1, "ddp", 80), "sft")
    assert estimate.parts["frozen_weights"] == 2 * shapes["8b"].params and "model_states" not in estimate.parts
    assert estimate.parts["adapter_states"] == 16 * 41_943_040
    assert estimate.total / GIB == pytest.approx(31.2, abs=0.1)
    assert "reference" not in fit.training(shapes["8b"], DPOConfig(peft="lora", precompute_ref_log_probs=False),
                                           fit.Layout(1, 1, "ddp", 80), "dpo").parts  # the base is the reference
