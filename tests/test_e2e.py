"""One self-rewarding iteration through the library on the tiny model, every stage for real.

seed SFT (the shared ``sft_model`` fixture) -> prompts -> candidates -> judgements -> pairs ->
DPO -> reward-model metrics and head-to-head win rate. The assertions are on the real outputs.
"""

import hashlib
import json

import pytest

from srlm import judge, pairs, prompts, rm_eval, sampling, training, winrate
from srlm.io import read_jsonl
from srlm.modeldir import check_model_dir, read_lineage

pytestmark = pytest.mark.slow


def weights_digest(model_dir):
    return hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()


def test_one_iteration_end_to_end(sft_model, seed_dir, tmp_path):
    prompt_stats = prompts.run(prompts.PromptGenConfig.load("tiny"), sft_model, tmp_path / "prompts.jsonl")
    generated = read_jsonl(tmp_path / "prompts.jsonl", "prompt")
    assert 0 < len(generated) <= prompts.PromptGenConfig.load("tiny").num_prompts
    assert prompt_stats["accepted"] == len(generated) and len({p["prompt"] for p in generated}) == len(generated)

    sample_config = sampling.SamplingConfig.load("tiny")
    sampling.run(sample_config, sft_model, tmp_path / "prompts.jsonl", tmp_path / "candidates.jsonl")
    candidates = read_jsonl(tmp_path / "candidates.jsonl", "candidates")
    assert [c["id"] for c in candidates] == [p["id"] for p in generated]
    assert all(len(c["replies"]) == sample_config.n for c in candidates)

    judge_config = judge.JudgeConfig.load("tiny")
    judge_stats = judge.run(judge_config, sft_model, tmp_path / "candidates.jsonl", tmp_path / "judgements.jsonl")
    judged = read_jsonl(tmp_path / "judgements.jsonl", "judgements")
    replies = [r for j in judged for r in j["replies"]]
    assert len(replies) == judge_stats["replies"] == len(candidates) * sample_config.n
    assert all(len(r["judge_outputs"]) == judge_config.samples == len(r["scores"]) for r in replies)
    assert judge_stats["parse_failures"] == sum(s is None for r in replies for s in r["scores"])
    assert judge_stats["parse_failure_rate"] < 0.5, "tiny M1 should have learned the score line from EFT"

    pair_stats = pairs.run(pairs.PairsConfig(), tmp_path / "judgements.jsonl", tmp_path / "pairs.jsonl")
    built = read_jsonl(tmp_path / "pairs.jsonl", "pair")
    assert len(built) == pair_stats["pairs"] > 0
    assert pair_stats["pairs"] + pair_stats["ties_or_unpaired"] == len(judged)
    assert all(p["chosen_score"] > p["rejected_score"] for p in built)

    dpo_metrics = training.run_dpo(training.DPOConfig.load("tiny"), sft_model, tmp_path / "pairs.jsonl", tmp_path / "m2")
    check_model_dir(tmp_path / "m2")
    assert weights_digest(tmp_path / "m2") != weights_digest(sft_model)
    lineage = read_lineage(tmp_path / "m2")
    assert lineage["iteration"] == read_lineage(sft_model)["iteration"] + 1 == 2
    assert lineage["parent"] == str(sft_model)
    assert dpo_metrics

    rm = rm_eval.run_rm(rm_eval.RMEvalConfig.load("tiny"), tmp_path / "m2", seed_dir / "eft_eval.jsonl", tmp_path / "rm")
    assert 0.0 <= rm["pairwise_accuracy"] <= 1.0
    assert 0.0 <= rm["judge_parse_failure_rate"] <= 1.0
    assert -1.0 <= rm["spearman"] <= 1.0 and -1.0 <= rm["kendall_tau"] <= 1.0
    assert json.loads((tmp_path / "rm" / "metrics.json").read_text())["pairwise_accuracy"] == rm["pairwise_accuracy"]

    win_config = winrate.WinRateConfig.load("tiny", max_prompts=4)
    win = winrate.run_winrate(win_config, tmp_path / "m2", sft_model, sft_model, tmp_path / "prompts.jsonl", tmp_path / "h2h")
    assert win["wins"] + win["ties"] + win["losses"] == min(4, len(generated))
    assert (tmp_path / "h2h" / "report.md").is_file()
