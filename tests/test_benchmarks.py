"""The benchmarks in the evaluate step (srlm.benchmarks): the names checked, each benchmark's headline numbers in
summary.json (hence the model version's metric tags), its report section, and the promotion rule on one of them."""

from __future__ import annotations

import json
import math

import pytest

from srlm import benchmarks, promotion, stages
from srlm.context import RunContext
from srlm.errors import SrlmError
from srlm.promotion import PromotionRule


def test_benchmark_names_are_checked():
    assert benchmarks.check_benchmarks(None) == [] and benchmarks.check_benchmarks(["ifeval"]) == ["ifeval"]
    for bad, says in ((["ifeval", "ifeval"], "names a benchmark twice"), (["bbh"], "unknown benchmark"),
                      ("ifeval", "expected a list"), ({"ifeval": 1}, "expected a list")):
        with pytest.raises(SrlmError, match=says):
            benchmarks.check_benchmarks(bad)


def test_headline_metrics_keep_numbers_and_drop_what_was_not_measured():
    alpaca = {"instructions": 8, "judge_failures": 2, "win_rate": 0.25, "win_rate_ci": [0.1, 0.4],
              "lc_win_rate": None, "discrete_win_rate": 0.2, "mean_length": 120.0, "position_consistency": None}
    mt = {"score": 6.5, "score_turn_1": 7.0, "score_turn_2": None, "parse_failure_rate": 0.0,
          "by_category": {"writing": 8.0, "Social Science": 5.0, "math": None}}
    summary = benchmarks.headline_metrics({"alpaca_eval": alpaca, "mt_bench": mt})
    assert summary == {"alpaca_eval_win_rate": 0.25, "alpaca_eval_win_rate_low": 0.1, "alpaca_eval_win_rate_high": 0.4,
                       "alpaca_eval_discrete_win_rate": 0.2, "alpaca_eval_mean_length": 120.0,
                       "alpaca_eval_judge_failure_rate": 0.25, "mt_bench_score": 6.5, "mt_bench_score_turn_1": 7.0,
                       "mt_bench_parse_failure_rate": 0.0, "mt_bench_category_writing": 8.0,
                       "mt_bench_category_social_science": 5.0}
    assert benchmarks.benchmark_of_metric("mt_bench_category_math") == "mt_bench"
    assert benchmarks.benchmark_of_metric("pairwise_accuracy") is None and benchmarks.benchmark_of_metric("ifeval_") is None


def test_the_promotion_rule_can_require_a_benchmark_metric():
    rule = PromotionRule(rm_metric="", benchmark_metric="alpaca_eval_lc_win_rate", benchmark_tolerance=0.01)
    challenger = {"adjusted_win_rate_vs_previous": 0.6, "alpaca_eval_lc_win_rate": 0.20}
    holds, reason, compared, _ = promotion.evaluate_rule(rule, challenger, {"alpaca_eval_lc_win_rate": 0.205},
                                                         champion_is_parent=True)
    assert holds and compared["benchmark"]["ok"] and "within tolerance 0.01" in reason
    holds, reason, _, _ = promotion.evaluate_rule(rule, challenger, {"alpaca_eval_lc_win_rate": 0.25},
                                                  champion_is_parent=True)
    assert holds is False and "alpaca_eval_lc_win_rate 0.200 vs champion 0.250 (drops more than" in reason
    rising = PromotionRule(rm_metric="", benchmark_metric="mt_bench_score", benchmark_tolerance=-0.5)  # must gain 0.5
    holds, _, _, _ = promotion.evaluate_rule(rising, {**challenger, "mt_bench_score": 6.4}, {"mt_bench_score": 6.0},
                                             champion_is_parent=True)
    assert holds is False
    holds, _, _, missing = promotion.evaluate_rule(rule, challenger, {}, champion_is_parent=True)
    assert holds is None and missing == ["champion has no alpaca_eval_lc_win_rate"]
    with pytest.raises(SrlmError, match="is no benchmark's"):
        PromotionRule(benchmark_metric="lc_win_rate").validate()


@pytest.mark.slow
def test_the_evaluate_step_runs_every_benchmark_on_the_bundled_sets(sft_model, seed_dir, tmp_path):
    """The tiny preset's bundled sets (srlm/data/benchmarks), the fixed judge judging AlpacaEval and MT-Bench."""
    evaluation = {"preset": "tiny", "benchmarks": ["alpaca_eval", "mt_bench", "ifeval"], "rm": {"max_items": 2},
                  "winrate": {"max_prompts": 2}}
    stats = stages.run_stage("evaluate", evaluation, RunContext(iteration=2), model=str(sft_model),
                             previous=str(sft_model), judge_model=str(sft_model), eft=str(seed_dir),
                             out=str(tmp_path / "eval"), report=str(tmp_path / "report.md"))
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    # every benchmark ran on its whole bundled set; the tiny judge's verdicts may fail, and are counted, not scored
    assert stats["alpaca_eval"]["instructions"] == 8 and stats["mt_bench"]["judgements"] == 12
    assert stats["ifeval"]["prompts"] == 8 and stats["ifeval"]["checker_errors"] == 0
    assert 0 <= summary["ifeval_prompt_strict"] <= summary["ifeval_prompt_loose"] <= 1
    assert 0 <= summary["alpaca_eval_judge_failure_rate"] <= 1 and 0 <= summary["mt_bench_parse_failure_rate"] <= 1
    assert ("alpaca_eval_win_rate" in summary) == (summary["alpaca_eval_judge_failure_rate"] < 1)
    assert summary["mean_tokens"] > 0 and not any(isinstance(v, float) and math.isnan(v) for v in summary.values())
    for name in ("alpaca_eval", "mt_bench", "ifeval"):
        assert (tmp_path / "eval" / name / "metrics.json").is_file()
    report = (tmp_path / "report.md").read_text()
    for heading in ("## AlpacaEval-style win rate against the reference outputs", "## MT-Bench", "## IFEval"):
        assert f"\n{heading}" in report


def test_benchmark_files_can_be_datasets_a_local_directory_or_a_hub_id(tmp_path, monkeypatch):
    """A dataset directory goes through datasets.load_dataset (the hub id path); offline, a hub id is one clear line."""
    from srlm.alpaca_eval import load_references
    from srlm.ifeval import load_prompts

    data = tmp_path / "alpaca_eval"
    data.mkdir()
    (data / "data.jsonl").write_text("".join(json.dumps({"instruction": f"Say {w}.", "output": w.title() + ".",
                                                          "dataset": "fixture"}) + "\n" for w in ("hi", "bye")))
    rows = load_references(f"{data}#train")
    assert [(r["instruction"], r["output"]) for r in rows] == [("Say hi.", "Hi."), ("Say bye.", "Bye.")]
    assert len(load_prompts("bundled:benchmarks/ifeval.jsonl")) == 8
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(SrlmError, match=r"tatsu-lab/alpaca_eval.*HF_HUB_OFFLINE.*local path") as error:
        load_references("tatsu-lab/alpaca_eval#eval")
    assert "\n" not in str(error.value)
    with pytest.raises(SrlmError, match="no such file"):
        load_prompts(str(tmp_path / "missing.jsonl"))
