"""SFT and DPO with real TRL training on the tiny model (no mocks)."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest

from srlm import stages, training
from srlm.errors import SrlmError
from srlm.io import file_digest, read_jsonl, write_jsonl
from srlm.modeldir import check_model_dir, read_lineage
from srlm.tiny_model import CHAT_TEMPLATE

pytestmark = pytest.mark.slow


def weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def weights_differ(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return any(not (wa[k] == wb[k]).all() for k in wa)


def copy_model(src: Path, dst: Path, drop: tuple[str, ...] = ()) -> Path:
    shutil.copytree(src, dst)
    for name in drop:
        (dst / name).unlink()
    return dst


# ---------------------------------------------------------------- configs


def test_paper_defaults_and_help():
    sft, dpo = training.SFTConfig(), training.DPOConfig()
    assert (sft.learning_rate, sft.final_learning_rate, sft.dropout) == (5.5e-6, 1.1e-6, 0.1)
    assert (dpo.learning_rate, dpo.final_learning_rate, dpo.dropout, dpo.beta) == (1e-6, 1e-7, 0.1, 0.1)
    for config in (sft, dpo):
        assert config.per_device_batch_size * config.gradient_accumulation_steps == 16
        assert all(f.metadata.get("help") for f in dataclasses.fields(config)), "every setting needs help text"
    assert dpo.loss_type == ["sigmoid"] and sft.assistant_only_loss
    assert training.DPOConfig.load("tiny", loss_type="sigmoid,sft").loss_type == ["sigmoid", "sft"]


@pytest.mark.parametrize(
    "cls, bad",
    [
        (training.SFTConfig, {"final_learning_rate": 1e-3}),
        (training.SFTConfig, {"dropout": 1.0}),
        (training.SFTConfig, {"max_steps": 0, "epochs": 0}),
        (training.DPOConfig, {"beta": 0}),
        (training.DPOConfig, {"loss_type": []}),
        (training.DPOConfig, {"mixed_precision": "fp8"}),
    ],
)
def test_invalid_settings(cls, bad):
    with pytest.raises(SrlmError):
        cls.load(**bad)


# ---------------------------------------------------------------- SFT


def test_sft_writes_complete_model_with_lineage(sft_model, tiny_model, seed_dir):
    check_model_dir(sft_model)
    assert (sft_model / "chat_template.jinja").read_text() == (tiny_model / "chat_template.jinja").read_text()
    lineage = read_lineage(sft_model)
    assert lineage["stage"] == "sft" and lineage["iteration"] == 1
    assert Path(lineage["parent"]) == tiny_model
    assert lineage["data_digests"] == {
        "ift": file_digest(seed_dir / "ift.jsonl"),
        "eft": file_digest(seed_dir / "eft_train.jsonl"),
    }
    metrics = lineage["metrics"]
    assert math.isfinite(metrics["train_loss"]) and metrics["steps"] > 0
    assert metrics["eft_examples"] > 0 and metrics["examples"] == metrics["ift_examples"] + metrics["eft_examples"]
    assert metrics["final_loss"] < metrics["first_loss"], metrics
    assert weights_differ(tiny_model, sft_model)


def test_tiny_m1_writes_parsable_judgements(sft_model, seed_dir):
    """The tiny preset must teach the judge format: most judgements end with a valid `Score: N` line.

    The bundled judgements are 63-118 tokens long, so the judge needs max_new_tokens >= ~128 to reach the line.
    """
    from srlm import judge
    from srlm.backends import make_generator

    config = judge.JudgeConfig.load("tiny", max_new_tokens=128)
    records = read_jsonl(seed_dir / "eft_eval.jsonl", "eft_eval")[:8]
    items = [(r["prompt"], reply) for r in records for reply in r["replies"]]
    _, stats = judge.judge_pairs(make_generator(sft_model, config), items, config)
    assert 1 - stats.parse_failure_rate >= 0.5, stats.as_dict()


def test_dropout_set_on_load(tiny_model):
    model, original = training.load_for_training(tiny_model, 0.1)
    assert model.config.attention_dropout == 0.1 and original == {"attention_dropout": 0.0}


def test_assistant_only_mask(tiny_model, seed_dir, tmp_path):
    """The collated labels are -100 on the user turn and the template, real ids on the assistant reply."""
    ift = read_jsonl(seed_dir / "ift.jsonl", "ift")[:1]
    eft = read_jsonl(seed_dir / "eft_train.jsonl", "eft")[:1]
    write_jsonl(tmp_path / "ift.jsonl", ift, "ift")
    write_jsonl(tmp_path / "eft.jsonl", eft, "eft")
    config = training.SFTConfig.load("tiny", max_length=4096)
    trainer = training.build_sft_trainer(
        config, tiny_model, tmp_path / "ift.jsonl", tmp_path / "eft.jsonl", tmp_path / "work"
    )
    tok = trainer.processing_class
    replies = [ift[0]["messages"][-1]["content"], eft[0]["judgement"]]
    prompts = [ift[0]["messages"][0]["content"], eft[0]["prompt"]]
    assert len(trainer.train_dataset) == 2
    for i in range(2):
        batch = trainer.data_collator([trainer.train_dataset[i]])
        ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
        trained = [t for t, lab in zip(ids, labels) if lab != -100]
        masked = [t for t, lab in zip(ids, labels) if lab == -100]
        assert all(lab in (-100, t) for t, lab in zip(ids, labels))
        # exactly the reply and its end-of-turn token carry loss
        assert tok.decode(trained) == replies[i] + "<|end|>"
        masked_text = tok.decode(masked)
        assert prompts[i] in masked_text and "<|user|>" in masked_text and "<|assistant|>" in masked_text
        if i == 1:
            assert "additive" in masked_text  # the judge rubric is prompt, not target


def test_schedule_ends_at_paper_ratio(tiny_model, seed_dir, tmp_path):
    config = training.SFTConfig.load("tiny", max_steps=40)
    trainer = training.build_sft_trainer(config, tiny_model, seed_dir / "ift.jsonl", None, tmp_path / "work")
    trainer.create_optimizer_and_scheduler(num_training_steps=40)
    lrs = []
    for _ in range(40):
        lrs.append(trainer.lr_scheduler.get_last_lr()[0])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    assert max(lrs) == pytest.approx(config.learning_rate)
    assert trainer.lr_scheduler.get_last_lr()[0] == pytest.approx(config.final_learning_rate)
    peak = lrs.index(max(lrs))
    assert peak <= 2 and all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1 :]))  # short warmup, then decay
    paper = training.SFTConfig()
    assert paper.final_learning_rate / paper.learning_rate == pytest.approx(0.2)
    assert config.final_learning_rate / config.learning_rate == pytest.approx(0.2)


def test_sft_template_without_generation_markers(tiny_model, seed_dir, tmp_path):
    model = copy_model(tiny_model, tmp_path / "m0")
    plain = CHAT_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    (model / "chat_template.jinja").write_text(plain)
    with pytest.raises(SrlmError, match="generation"):
        training.run_sft(training.SFTConfig.load("tiny"), model, seed_dir / "ift.jsonl", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_sft_model_without_tokenizer(tiny_model, seed_dir, tmp_path):
    model = copy_model(tiny_model, tmp_path / "m0", drop=("tokenizer.json",))
    with pytest.raises(SrlmError, match="tokenizer"):
        training.run_sft(training.SFTConfig.load("tiny"), model, seed_dir / "ift.jsonl", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_sft_refuses_existing_output(tiny_model, seed_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(SrlmError, match="already exists"):
        stages.run_stage("sft", {"preset": "tiny"}, model=str(tiny_model), ift=str(seed_dir), out=str(out))
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_sft_empty_ift(tiny_model, tmp_path):
    (tmp_path / "ift.jsonl").write_text("")
    with pytest.raises(SrlmError, match="ift.jsonl"):
        training.run_sft(training.SFTConfig.load("tiny"), tiny_model, tmp_path / "ift.jsonl", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- DPO


@pytest.fixture
def pairs_file(seed_dir, tmp_path) -> Path:
    """chosen = the IFT reply, rejected = a truncated, garbled copy of it."""
    pairs = []
    for r in read_jsonl(seed_dir / "ift.jsonl", "ift")[:16]:
        reply = r["messages"][-1]["content"]
        garbled = " ".join(reversed(reply.split()[:8]))
        pairs.append({"prompt": r["messages"][0]["content"], "chosen": reply, "rejected": garbled,
                      "chosen_score": 4.5, "rejected_score": 1.0})
    path = tmp_path / "pairs.jsonl"
    write_jsonl(path, pairs, "pair")
    return path


def test_dpo_round(sft_model, pairs_file, tmp_path):
    out = tmp_path / "m2"
    config = training.DPOConfig.load("tiny", max_steps=12, dropout=0.1)
    metrics = training.run_dpo(config, sft_model, pairs_file, out)
    check_model_dir(out)
    # dropout is a training setting: the saved config keeps the parent's value
    assert json.loads((out / "config.json").read_text())["attention_dropout"] == 0.0
    assert weights_differ(sft_model, out)
    lineage = read_lineage(out)
    assert lineage["stage"] == "dpo" and Path(lineage["parent"]) == sft_model
    assert lineage["iteration"] == 2 and lineage["parent_iteration"] == 1
    assert lineage["data_digests"] == {"pairs": file_digest(pairs_file)}
    assert lineage["config"]["beta"] == 0.1 and lineage["config"]["loss_type"] == ["sigmoid"]
    assert metrics["steps"] == 12 and metrics["pairs"] == 16 and math.isfinite(metrics["train_loss"])
    for key in ("final_rewards_accuracies", "final_rewards_margins", "final_rewards_chosen", "final_rewards_rejected"):
        assert math.isfinite(metrics[key])
    assert metrics["final_rewards_margins"] > 0  # chosen moved above rejected relative to the reference


def test_dpo_with_second_reference_copy(sft_model, pairs_file, tmp_path):
    config = training.DPOConfig.load("tiny", max_steps=2, precompute_ref_log_probs=False, loss_type="sigmoid,sft")
    trainer = training.build_dpo_trainer(config, sft_model, pairs_file, tmp_path / "work")
    assert trainer.ref_model is not None and trainer.ref_model is not trainer.model
    assert not trainer.ref_model.training  # the reference runs without dropout


def test_dpo_zero_pairs(sft_model, tmp_path):
    empty = tmp_path / "round2_pairs.jsonl"
    empty.write_text("")
    out = tmp_path / "m2"
    with pytest.raises(SrlmError, match=r"round2_pairs\.jsonl: 0 preference pairs"):
        training.run_dpo(training.DPOConfig.load("tiny"), sft_model, empty, out)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".m2")]  # no temporary left behind


def test_dpo_bad_pairs_file(sft_model, tmp_path):
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"prompt": "hi", "chosen": "a"}\n')
    with pytest.raises(SrlmError, match=r"pairs\.jsonl:1: missing field 'rejected'"):
        training.run_dpo(training.DPOConfig.load("tiny"), sft_model, bad, tmp_path / "m2")
    assert not (tmp_path / "m2").exists()


def test_dpo_refuses_existing_output(sft_model, pairs_file, tmp_path):
    out = tmp_path / "m2"
    out.mkdir()
    (out / "config.json").write_text("{}")
    with pytest.raises(SrlmError, match="already exists"):
        stages.run_stage("dpo", {"preset": "tiny"}, model=str(sft_model), pairs=str(pairs_file), out=str(out))


def test_dpo_model_without_tokenizer(sft_model, pairs_file, tmp_path):
    model = copy_model(sft_model, tmp_path / "m1", drop=("tokenizer.json",))
    with pytest.raises(SrlmError, match="no tokenizer"):
        training.run_dpo(training.DPOConfig.load("tiny"), model, pairs_file, tmp_path / "m2")
    assert not (tmp_path / "m2").exists()


def test_cli_help_renders():
    from srlm.cli import build_parser

    for stage in ("sft", "dpo"):
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args([stage, "--help"])
        assert exit_info.value.code == 0


def saved_dtypes(model_dir):
    from safetensors import safe_open

    with safe_open(str(Path(model_dir) / "model.safetensors"), "pt") as f:
        return {str(f.get_slice(name).get_dtype()) for name in f.keys()}


def test_weights_are_saved_in_the_training_precisions_16_bit_form(tiny_model, seed_dir, tmp_path):
    """bf16 training keeps fp32 master weights, but saves bfloat16: half the artifact; CPU fp32 training saves fp32."""
    bf16 = training.SFTConfig.load("tiny", max_steps=2, mixed_precision="bf16", threads=1)
    stats = training.run_sft(bf16, tiny_model, seed_dir / "ift.jsonl", tmp_path / "bf16")
    assert stats["saved_dtype"] == "bfloat16" and saved_dtypes(tmp_path / "bf16") == {"BF16"}
    size = (tmp_path / "bf16" / "model.safetensors").stat().st_size
    assert size < 0.6 * (tiny_model / "model.safetensors").stat().st_size
    plain = training.SFTConfig.load("tiny", max_steps=1, threads=1)  # mixed_precision auto: none on CPU
    assert training.run_sft(plain, tiny_model, seed_dir / "ift.jsonl", tmp_path / "fp32")["saved_dtype"] == "float32"
    assert saved_dtypes(tmp_path / "fp32") == {"F32"}


def test_stage_memory_reports_the_gpu_when_there_is_one(monkeypatch):
    """Stand-in for a GPU: torch.cuda answers as one with 80 GiB, 30 of them in use, 12 allocated at most here."""
    import torch

    from srlm.stagelog import peak_memory

    assert set(peak_memory()) == {"peak_rss_mb"}  # this machine has no GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (50 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: 12 * 2**30)
    found = peak_memory()
    assert found["peak_gpu_memory_gb"] == 12.0 and found["gpu_memory_in_use_gb"] == 30.0 and found["peak_rss_mb"] > 0


# ---------------------------------------------------------------- LoRA


def test_lora_sft_and_dpo_save_merged_plain_models(tiny_model, seed_dir, pairs_file, tmp_path):
    """peft: lora trains adapters on the frozen base and saves the merged weights: the next stage (and vLLM) load a
    plain model; in DPO the base with its adapters off is the reference (no second model)."""
    fast = {"learning_rate": 1e-2, "final_learning_rate": 1e-3, "logging_steps": 1, "peft": "lora"}
    m1 = tmp_path / "m1"
    sft = training.run_sft(training.SFTConfig.load("tiny", max_steps=8, **fast), tiny_model, seed_dir / "ift.jsonl", m1,
                           eft=seed_dir / "eft_train.jsonl")
    assert sft["final_loss"] < sft["first_loss"]
    check_model_dir(m1)
    assert not [p.name for p in m1.iterdir() if "adapter" in p.name]
    assert weights(m1).keys() == weights(tiny_model).keys() and weights_differ(tiny_model, m1)
    config = training.DPOConfig.load("tiny", max_steps=6, precompute_ref_log_probs=False, **fast)
    trainer = training.build_dpo_trainer(config, m1, pairs_file, tmp_path / "work")
    assert trainer.ref_model is None and sum(p.requires_grad for p in trainer.model.parameters()) < 100
    m2 = tmp_path / "m2"
    dpo = training.run_dpo(config, m1, pairs_file, m2)
    assert dpo["final_rewards_margins"] > 0 and weights_differ(m1, m2)
    assert read_lineage(m2)["config"]["peft"] == "lora"
    with pytest.raises(SrlmError, match="peft=lora runs with strategy ddp"):
        training.SFTConfig.load("tiny", peft="lora", strategy="fsdp2")
