"""Training on several processes through the project's one entry point (srlm.distributed under torchrun):
2 CPU processes (gloo, DDP) in one "pod", and two torchrun "nodes" set up by PET_* variables as the
Kubeflow Trainer sets them. Real TRL training on the tiny model."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from srlm import distributed, training
from srlm.errors import SrlmError
from srlm.io import read_jsonl, write_jsonl
from srlm.modeldir import check_model_dir, read_lineage


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loads_and_changed(out: Path, parent: Path) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    check_model_dir(out)
    AutoModelForCausalLM.from_pretrained(out)
    new, old = load_file(str(out / "model.safetensors")), load_file(str(parent / "model.safetensors"))
    assert any(not (new[k] == old[k]).all() for k in new)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "a temporary or old copy was left"


# ---------------------------------------------------------------- settings (fast)


def test_strategies_become_trls_own_fsdp_and_deepspeed_settings(tmp_path):
    fsdp = training.trainer_args(training.SFTConfig.load("tiny", strategy="fsdp2", gradient_checkpointing=True), tmp_path)
    assert fsdp["fsdp"] is True and fsdp["fsdp_config"]["version"] == 2
    assert fsdp["fsdp_config"]["state_dict_type"] == "FULL_STATE_DICT"  # what vLLM and the next stage load
    assert fsdp["fsdp_config"]["activation_checkpointing"] and not fsdp["gradient_checkpointing"]
    assert "fsdp" not in training.trainer_args(training.SFTConfig.load("tiny"), tmp_path)
    for name in ("zero3", "zero3_offload"):
        shipped = json.loads((distributed.DEEPSPEED_CONFIGS / f"{name}.json").read_text())
        assert shipped["zero_optimization"]["stage"] == 3
        assert shipped["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]  # a consolidated checkpoint
        assert ("offload_optimizer" in shipped["zero_optimization"]) == (name == "zero3_offload")
    with pytest.raises(SrlmError, match="zero3 needs the deepspeed package \\(the training image has it"):
        training.trainer_args(training.DPOConfig.load("tiny", strategy="zero3"), tmp_path)
    with pytest.raises(SrlmError, match="gpus_per_node must be >= 0"):
        training.SFTConfig.load("tiny", gpus_per_node=-1)


def test_one_process_on_cpu_when_gpus_per_node_is_every_gpu():
    assert distributed.processes(training.SFTConfig.load("tiny")) == 1  # 0 = every GPU; none here
    assert distributed.processes(training.SFTConfig.load("tiny", gpus_per_node=2)) == 2


# ---------------------------------------------------------------- real runs (slow)


@pytest.fixture(scope="module")
def pairs(seed_dir, tmp_path_factory) -> Path:
    rows = []
    for r in read_jsonl(seed_dir / "ift.jsonl", "ift")[:16]:
        reply = r["messages"][-1]["content"]
        rows.append({"prompt": r["messages"][0]["content"], "chosen": reply,
                     "rejected": " ".join(reversed(reply.split()[:8])), "chosen_score": 4.5, "rejected_score": 1.0})
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    write_jsonl(path, rows, "pair")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("processes", [2, 1])
def test_seed_sft_on_processes(processes, tiny_model, seed_dir, tmp_path):
    config = training.SFTConfig.load("tiny", max_steps=8, logging_steps=1, gpus_per_node=processes)
    out = tmp_path / "out" / "m1"
    metrics = training.run_sft(config, tiny_model, seed_dir / "ift.jsonl", out, eft=seed_dir / "eft_train.jsonl")
    assert metrics["processes"] == processes and metrics["steps"] == 8
    assert metrics["final_loss"] < metrics["first_loss"]
    assert read_lineage(out)["metrics"]["processes"] == processes  # rank 0 wrote the directory
    loads_and_changed(out, tiny_model)


@pytest.mark.slow
def test_dpo_round_on_two_processes_with_precomputed_reference(sft_model, pairs, tmp_path):
    """The case STACK_NOTES warns about: precomputed reference log-probs with 2 ranks need one file-backed dataset."""
    config = training.DPOConfig.load("tiny", max_steps=6, logging_steps=1, gpus_per_node=2, precompute_ref_log_probs=True)
    out = tmp_path / "out" / "m2"
    metrics = training.run_dpo(config, sft_model, pairs, out)
    assert metrics["processes"] == 2 and metrics["pairs"] == 16
    assert metrics["final_loss"] < metrics["first_loss"] and metrics["final_rewards_margins"] > 0
    loads_and_changed(out, sft_model)


@pytest.mark.slow
def test_a_failing_worker_fails_the_stage_with_its_own_message(sft_model, pairs, tmp_path):
    config = training.DPOConfig.load("tiny", max_steps=2, gpus_per_node=2, min_pairs=100)
    with pytest.raises(SrlmError, match=r"distributed training failed \(torchrun exit status 1\): .*pairs.jsonl: 16 "
                                        r"preference pairs; DPO needs at least 100"):
        training.run_dpo(config, sft_model, pairs, tmp_path / "m2")
    assert not (tmp_path / "m2").exists()


@pytest.mark.slow
def test_two_nodes_from_the_trainers_pet_variables(tiny_model, seed_dir, tmp_path):
    """Two torchrun "nodes" on this machine, configured only by the PET_* variables Kubeflow Trainer's torch
    runtime sets, run the same module on one request in a directory both see (the RWX volume's stand-in)."""
    config = training.SFTConfig.load("tiny", max_steps=4, logging_steps=1)
    out = tmp_path / "out" / "m1"
    request = distributed.write_request(tmp_path, {
        "stage": "sft", "model": str(tiny_model), "ift": str(seed_dir / "ift.jsonl"),
        "eft": str(seed_dir / "eft_train.jsonl"), "out": str(out), "config": config.to_dict()})
    port = free_port()
    nodes = []
    for rank in (0, 1):
        env = {**os.environ, "PET_NNODES": "2", "PET_NPROC_PER_NODE": "1", "PET_NODE_RANK": str(rank),
               "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        nodes.append(subprocess.Popen(distributed.worker_command(request, 1, standalone=False), env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    codes = [node.wait(timeout=600) for node in nodes]
    assert codes == [0, 0], [node.stderr.read()[-3000:] for node in nodes]
    metrics = distributed.read_result(tmp_path, 0)
    assert metrics["processes"] == 2 and metrics["steps"] == 4
    loads_and_changed(out, tiny_model)


def test_the_hardware_is_set_once_per_group():
    """Group-level hardware keys reach every config of the group that has them (SFT and DPO alike; every
    generating stage's tensor parallelism)."""
    from srlm import stages

    group = {"preset": "tiny", "nodes": 4, "gpus_per_node": 8, "strategy": "fsdp2", "shared_dir": "/models",
             "dpo": {"nodes": 2}}
    sft, dpo = (stages.group_config("training", group, key) for key in ("sft", "dpo"))
    assert (sft.nodes, sft.gpus_per_node, sft.strategy, sft.shared_dir) == (4, 8, "fsdp2", "/models")
    assert (dpo.nodes, dpo.gpus_per_node) == (2, 8)  # a config's own value wins
    sampling = {"preset": "tiny", "tensor_parallel_size": 4}
    assert {stages.group_config("sampling", sampling, k).tensor_parallel_size for k in ("prompts", "candidates")} == {4}
