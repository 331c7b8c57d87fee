"""Evaluation: reward-model metrics (hand-computed), win-rate logic, AlpacaEval export, and real tiny-model runs."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import pytest

from srlm import backends, rm_eval, stages, winrate
from srlm.errors import SrlmError
from srlm.io import read_jsonl
from srlm.metrics import numeric_metrics


def item(ranks: list[int]) -> dict:
    return {"prompt": "q", "replies": [f"reply {r}" for r in ranks], "ranks": ranks}


# ---------------------------------------------------------------------------------------------
# Reward-model metrics, hand-computed
# ---------------------------------------------------------------------------------------------


def test_perfect_order():
    m = rm_eval.reward_model_metrics([item([0, 1, 2])], [[5, 3, 1]])
    assert m["pairwise_accuracy"] == 1.0
    assert m["pairwise_tie_share"] == 0.0
    assert m["five_best"] == 1.0 and m["counts"]["five_best_candidates"] == 1
    assert m["exact_match"] == 1.0
    assert m["spearman"] == pytest.approx(1.0)
    assert m["kendall_tau"] == pytest.approx(1.0)
    assert m["counts"]["prompts"] == 1 and m["counts"]["replies"] == 3 and m["counts"]["unscored"] == 0
    assert m["counts"]["pairs"] == 3


def test_fully_inverted():
    # reply order in the record does not matter: ranks say which is best
    m = rm_eval.reward_model_metrics([item([2, 0, 1])], [[5, 1, 3]])
    assert m["pairwise_accuracy"] == 0.0
    assert m["pairwise_tie_share"] == 0.0
    assert m["exact_match"] == 0.0
    assert m["five_best"] == 0.0  # the only reply >= 4.5 is the human worst
    assert m["spearman"] == pytest.approx(-1.0)
    assert m["kendall_tau"] == pytest.approx(-1.0)


def test_ties_count_as_wrong():
    # pairs: (r0, r1) tied -> wrong; (r0, r2) and (r1, r2) right
    m = rm_eval.reward_model_metrics([item([0, 1, 2])], [[4, 4, 2]])
    assert m["pairwise_accuracy"] == pytest.approx(2 / 3)
    assert m["pairwise_tie_share"] == pytest.approx(1 / 3)
    assert m["exact_match"] == 0.0
    # x = [4, 4, 2], y = -ranks = [0, -1, -2]: rank-x [2.5, 2.5, 1], rank-y [3, 2, 1]
    # Spearman = cov / sd = 1.5 / sqrt(1.5 * 2) = sqrt(3) / 2
    assert m["spearman"] == pytest.approx(math.sqrt(3) / 2)
    # tau-b: concordant 2, discordant 0, ties in x 1 -> 2 / sqrt((3 - 1) * 3)
    assert m["kendall_tau"] == pytest.approx(2 / math.sqrt(6))
    assert m["five_best"] is None and m["counts"]["five_best_candidates"] == 0


def test_unscored_replies():
    m = rm_eval.reward_model_metrics([item([0, 1, 2])], [[None, 3, 1]])
    # (r0, r1) and (r0, r2) involve the unscored best reply -> wrong; (r1, r2) right
    assert m["pairwise_accuracy"] == pytest.approx(1 / 3)
    assert m["pairwise_tie_share"] == 0.0
    assert m["counts"]["pairs_with_unscored"] == 2
    assert m["counts"]["unscored"] == 1
    assert m["exact_match"] == 0.0
    # correlations over the 2 scored replies: [3, 1] vs [-1, -2]
    assert m["spearman"] == pytest.approx(1.0)
    assert m["kendall_tau"] == pytest.approx(1.0)
    assert m["counts"]["correlation_prompts"] == 1


def test_all_equal_prompt_contributes_zero_and_single_scored_prompt_is_left_out():
    items = [item([0, 1, 2]), item([0, 1]), item([1, 0])]
    scores = [[5, 3, 1], [3, 3], [None, 2]]
    m = rm_eval.reward_model_metrics(items, scores)
    # correlations: prompt 1 -> 1, prompt 2 (all equal) -> 0, prompt 3 (1 scored) left out
    assert m["spearman"] == pytest.approx(0.5)
    assert m["kendall_tau"] == pytest.approx(0.5)
    assert m["counts"]["correlation_prompts"] == 2
    assert m["counts"]["constant_score_prompts"] == 1
    # pairs: 3 right + 1 tie + 1 unscored -> 3/5; exact match only prompt 1
    assert m["pairwise_accuracy"] == pytest.approx(3 / 5)
    assert m["pairwise_tie_share"] == pytest.approx(1 / 5)
    assert m["exact_match"] == pytest.approx(1 / 3)


def test_no_correlation_prompt_gives_none():
    m = rm_eval.reward_model_metrics([item([0, 1])], [[None, None]])
    assert m["spearman"] is None and m["kendall_tau"] is None
    assert m["pairwise_accuracy"] == 0.0
    assert m["counts"]["unscored"] == 2


def test_five_best_with_candidates():
    items = [item([0, 1]), item([1, 0]), item([0, 1, 2])]
    scores = [[5, 4.5], [4.7, 2], [4.4, 1, 0]]  # 4.4 is below the threshold
    m = rm_eval.reward_model_metrics(items, scores)
    assert m["counts"]["five_best_candidates"] == 3
    assert m["five_best"] == pytest.approx(1 / 3)


def test_five_best_uses_the_lowest_rank_as_top():
    m = rm_eval.reward_model_metrics([item([1, 3, 2])], [[5, 1, 2]])
    assert m["five_best"] == 1.0
    assert m["exact_match"] == 1.0


def test_exact_match_share():
    items = [item([0, 1, 2]), item([0, 1, 2]), item([0, 1, 2]), item([1, 0])]
    scores = [[5, 4, 3], [5, 5, 3], [5, 3, 4], [2.5, 3.5]]
    m = rm_eval.reward_model_metrics(items, scores)
    assert m["exact_match"] == pytest.approx(2 / 4)
    assert m["counts"]["exact_matches"] == 2


def test_nan_is_unscored():
    m = rm_eval.reward_model_metrics([item([0, 1])], [[float("nan"), 2.0]])
    assert m["counts"]["unscored"] == 1
    assert m["pairwise_accuracy"] == 0.0


def test_metric_input_errors():
    with pytest.raises(SrlmError, match="score lists"):
        rm_eval.reward_model_metrics([item([0, 1])], [])
    with pytest.raises(SrlmError, match="2 replies but 3 scores"):
        rm_eval.reward_model_metrics([item([0, 1])], [[1, 2, 3]])
    with pytest.raises(SrlmError, match="no eval items"):
        rm_eval.reward_model_metrics([], [])
    with pytest.raises(SrlmError, match="ranks"):
        rm_eval.reward_model_metrics([{"prompt": "q", "replies": ["a", "b"], "ranks": [0, 0]}], [[1, 2]])


def test_correlations_and_pairwise_match_scipy_and_brute_force():
    from scipy import stats

    rng = random.Random(7)
    items, scores = [], []
    for _ in range(40):
        k = rng.randint(2, 5)
        ranks = rng.sample(range(6), k)
        items.append(item(ranks))
        scores.append([rng.choice([None, 1, 2, 3, 3.5, 4, 4.5, 5]) if rng.random() < 0.9 else None for _ in ranks])
    scores.append([3.0, 3.0])  # an all-equal prompt
    items.append(item([0, 1]))
    m = rm_eval.reward_model_metrics(items, scores)

    rho, tau, right, pairs = [], [], 0, 0
    for it, s in zip(items, scores):
        kept = [(v, -r) for v, r in zip(s, it["ranks"]) if v is not None]
        if len(kept) >= 2:
            x, y = zip(*kept)
            if len(set(x)) == 1:
                rho.append(0.0), tau.append(0.0)
            else:
                rho.append(stats.spearmanr(x, y).statistic)
                tau.append(stats.kendalltau(x, y, variant="b").statistic)
        for a in range(len(s)):
            for b in range(len(s)):
                if it["ranks"][a] < it["ranks"][b]:
                    pairs += 1
                    right += s[a] is not None and s[b] is not None and s[a] > s[b]
    assert m["spearman"] == pytest.approx(sum(rho) / len(rho))
    assert m["kendall_tau"] == pytest.approx(sum(tau) / len(tau))
    assert m["pairwise_accuracy"] == pytest.approx(right / pairs)
    assert m["counts"]["pairs"] == pairs


def test_numeric_metrics_flattens_for_mlflow():
    m = rm_eval.reward_model_metrics([item([0, 1])], [[1, 2]])
    m["run"] = {"model": "x"}
    m["counts"]["run"] = {"settings": {"samples": 3}}  # nested report sections are skipped too
    m["spearman"], m["kendall_tau"] = float("nan"), float("inf")
    flat = numeric_metrics(m)
    assert flat["pairwise_accuracy"] == 0.0
    assert flat["counts.pairs"] == 1.0
    assert "five_best" not in flat  # None is skipped
    assert not any(k.startswith("run") or ".run." in k for k in flat)
    assert "spearman" not in flat and "kendall_tau" not in flat  # not finite: no metric


# ---------------------------------------------------------------------------------------------
# Pairwise verdicts and templates
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A is clearer.\nWinner: A", "A"),
        ("Winner: A\nOn reflection...\nWinner: B", "B"),
        ("**Winner:** Response B.", "B"),
        ("verdict: [[A]]", "A"),
        ("winner: tie", "tie"),
        ("Winner: a tiny bit of both", None),
        ("Winner: AB", None),
        ("I prefer A.", None),
        ("", None),
    ],
)
def test_parse_verdict(text, expected):
    assert winrate.parse_verdict(text) == expected


def test_fill_pairwise_is_one_pass():
    filled = winrate.fill_pairwise("{instruction}|{response_a}|{response_b}", "say {response_b}", "{x}", "b")
    assert filled == "say {response_b}|{x}|b"


def test_pairwise_template_checks(tmp_path):
    assert winrate.load_pairwise_template(None) == winrate.DEFAULT_PAIRWISE_TEMPLATE
    winrate.check_pairwise_template(winrate.DEFAULT_PAIRWISE_TEMPLATE)
    bad = tmp_path / "bad.txt"
    bad.write_text("Which is better? {instruction} {response_a}\nWinner:", encoding="utf-8")
    with pytest.raises(SrlmError, match=r"\{response_b\}"):
        winrate.load_pairwise_template(bad)
    with pytest.raises(SrlmError, match="not found"):
        winrate.load_pairwise_template(tmp_path / "missing.txt")
    good = tmp_path / "good.txt"
    good.write_text("{instruction} {response_a} {response_b}", encoding="utf-8")
    assert winrate.load_pairwise_template(good).startswith("{instruction}")


def test_config_validation_and_presets():
    with pytest.raises(SrlmError, match="method"):
        winrate.WinRateConfig.load(method="elo")
    with pytest.raises(SrlmError, match="judge_samples"):
        winrate.WinRateConfig.load(judge_samples=0)
    with pytest.raises(SrlmError, match="max_items"):
        rm_eval.RMEvalConfig.load(max_items=-1)
    paper = winrate.WinRateConfig.load()
    assert (paper.max_prompts, paper.judge_samples, paper.judge_temperature, paper.judge_top_p) == (256, 3, 0.7, 0.9)
    assert paper.method == "pairwise"
    rm = rm_eval.RMEvalConfig.load()
    assert (rm.samples, rm.temperature, rm.top_p) == (3, 0.7, 0.9)
    assert winrate.WinRateConfig.load("tiny").max_prompts <= 16
    assert rm_eval.RMEvalConfig.load("tiny").max_items > 0
    jc = paper.judge_config()
    assert (jc.samples, jc.temperature, jc.max_new_tokens) == (3, 0.7, 256)


# ---------------------------------------------------------------------------------------------
# Win-rate logic with scripted generators (no model)
# ---------------------------------------------------------------------------------------------


class ScriptedGenerator:
    """Answers with the model dir's name; judges by the name of a fake judge directory."""

    loaded: list[str] = []
    made: list[ScriptedGenerator] = []

    def __init__(self, name: str):
        from srlm.generation import GenerationStats

        self.name = name
        self.stats = GenerationStats()
        self.closed = False
        ScriptedGenerator.loaded.append(name)
        ScriptedGenerator.made.append(self)

    def close(self):
        self.closed = True

    def generate(self, prompts, n=1, temperature=0.7, top_p=0.9, max_new_tokens=256, seed=0, desc=""):
        return [[self.reply(p, i) for i in range(n)] for p in prompts]

    def reply(self, prompt: str, sample: int) -> str:
        if self.name.startswith("model"):
            return f"{self.name} answer"
        if "[Response A]" in prompt:  # pairwise judge prompt
            a = prompt.split("[Response A]")[1].split("[Response B]")[0]
            if self.name == "judge-fair":
                return "Winner: A" if "good" in a else "Winner: B"
            if self.name == "judge-biased":
                return "A is shown first. Winner: A"
            if self.name == "judge-split":  # one valid verdict each way, one failure per order
                return ["Winner: A", "Winner: B", "hmm"][sample]
            return "I cannot decide."
        response = prompt.split("<response>")[1].split("</response>")[0]  # rubric judge prompt
        if self.name == "judge-mute":
            return "no score"
        return "Score: 5" if "good" in response else "Score: 2"


@pytest.fixture
def scripted(monkeypatch, tmp_path):
    ScriptedGenerator.loaded = []
    def scripted_generator(model, options=None, chat_template=""):
        return ScriptedGenerator(Path(model).name)

    monkeypatch.setattr(winrate, "make_generator", scripted_generator)
    monkeypatch.setattr(backends, "make_generator", scripted_generator)  # answer_each (the AlpacaEval export)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"instruction": f"task {i}", "dataset": "demo"}) + "\n" for i in range(5)))
    return prompts


def _winrate(prompts, tmp_path, judge, a="model-good", b="model-bad", **settings):
    config = winrate.WinRateConfig.load("tiny", **{"method": "pairwise", **settings})
    return winrate.run_winrate(config, tmp_path / a, tmp_path / b, tmp_path / judge, prompts, tmp_path / f"out-{judge}-{a}")


def test_pairwise_fair_judge_sees_through_order(scripted, tmp_path):
    ScriptedGenerator.made = []
    m = _winrate(scripted, tmp_path, "judge-fair")
    # A, B and the judge loaded one at a time, each closed before the next (two models never share a GPU)
    assert [g.name for g in ScriptedGenerator.made] == ["model-good", "model-bad", "judge-fair"]
    assert all(g.closed for g in ScriptedGenerator.made)
    assert (m["wins"], m["ties"], m["losses"]) == (5, 0, 0)
    assert m["win_pct"] == 100.0
    assert m["judge_outputs"] == 5 * 2 * 3 and m["verdict_parse_failures"] == 0
    assert ScriptedGenerator.loaded == ["model-good", "model-bad", "judge-fair"]
    m = _winrate(scripted, tmp_path, "judge-fair", a="model-bad", b="model-good")
    assert (m["wins"], m["ties"], m["losses"]) == (0, 0, 5)


def test_pairwise_position_bias_is_a_tie(scripted, tmp_path):
    m = _winrate(scripted, tmp_path, "judge-biased")
    assert (m["wins"], m["ties"], m["losses"]) == (0, 5, 0)
    assert m["order_disagreements"] == 5


def test_pairwise_split_vote_and_failures(scripted, tmp_path):
    m = _winrate(scripted, tmp_path, "judge-split")
    assert m["ties"] == 5
    assert m["verdict_parse_failures"] == 5 * 2  # one of three samples per order
    assert m["orders_without_verdict"] == 10
    assert m["verdict_parse_failure_rate"] == pytest.approx(1 / 3)
    m = _winrate(scripted, tmp_path, "judge-mute")
    assert m["ties"] == 5 and m["verdict_parse_failure_rate"] == 1.0


def test_rubric_method(scripted, tmp_path):
    m = _winrate(scripted, tmp_path, "judge-fair", method="rubric")
    assert (m["wins"], m["ties"], m["losses"]) == (5, 0, 0)
    assert m["judge_outputs"] == 5 * 2 * 3
    m = _winrate(scripted, tmp_path, "judge-mute", method="rubric")
    assert m["ties"] == 5 and m["unscored_answers"] == 10 and m["verdict_parse_failure_rate"] == 1.0


def test_same_model_loaded_once(scripted, tmp_path):
    _winrate(scripted, tmp_path, "judge-fair", a="model-x", b="model-x")
    assert ScriptedGenerator.loaded == ["model-x", "judge-fair"]


def test_winrate_files(scripted, tmp_path):
    m = _winrate(scripted, tmp_path, "judge-fair")
    out = tmp_path / "out-judge-fair-model-good"
    assert json.loads((out / "metrics.json").read_text())["wins"] == m["wins"]
    rows = read_jsonl(out / "answers.jsonl")
    assert len(rows) == 5
    assert {"prompt", "answer_a", "answer_b", "verdicts", "winner"} <= set(rows[0])
    assert rows[0]["verdicts"]["ab"]["verdict"] == "A" and rows[0]["verdicts"]["ba"]["verdict"] == "A"
    report = (out / "report.md").read_text()
    assert "| % | **100.0** | 0.0 | 0.0 |" in report and "M3 vs M2" in report


def test_winrate_errors_before_loading(scripted, tmp_path):
    bad = tmp_path / "pairwise.txt"
    bad.write_text("{instruction} {response}", encoding="utf-8")
    with pytest.raises(SrlmError, match="response_a"):
        _winrate(scripted, tmp_path, "judge-fair", judge_template=str(bad))
    rubric_bad = _write(tmp_path / "rubric.txt", "{instruction} {response_a} {response_b}")
    with pytest.raises(SrlmError, match="exactly once"):  # a rubric template needs {response}
        _winrate(scripted, tmp_path, "judge-fair", judge_template=str(rubric_bad), method="rubric")
    (tmp_path / "out-judge-fair-model-good").mkdir()
    (tmp_path / "out-judge-fair-model-good" / "metrics.json").write_text("{}")
    with pytest.raises(SrlmError, match="already exists"):  # the stage adapter refuses it before any model loads
        stages.run_stage("winrate", {"preset": "tiny"}, model_a=str(tmp_path / "model-good"),
                         model_b=str(tmp_path / "model-bad"), judge_model=str(tmp_path / "judge-fair"),
                         prompts=str(scripted), out=str(tmp_path / "out-judge-fair-model-good"))
    assert ScriptedGenerator.loaded == []


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_export_alpaca_scripted(scripted, tmp_path):
    out = tmp_path / "alpaca" / "model_outputs.json"
    config = winrate.WinRateConfig.load("tiny", export_max_prompts=3)
    stats = winrate.export_alpaca(config, tmp_path / "model-good", scripted, out)
    rows = json.loads(out.read_text())
    assert stats["prompts"] == 3 and stats["generator"] == "model-good"
    expected = {"instruction": "task 0", "output": "model-good answer", "generator": "model-good", "dataset": "demo"}
    assert rows[0] == expected
    with pytest.raises(SrlmError, match="already exists"):
        stages.run_stage("export_alpaca", {"preset": "tiny"}, model=str(tmp_path / "model-good"), prompts=str(scripted),
                         out=str(out))


# ---------------------------------------------------------------------------------------------
# The real tiny model
# ---------------------------------------------------------------------------------------------


def _check_rm_outputs(out: Path, m: dict, config: rm_eval.RMEvalConfig) -> None:
    assert {p.name for p in out.iterdir()} == {"metrics.json", "judgements.jsonl", "report.md"}
    assert json.loads((out / "metrics.json").read_text())["counts"] == m["counts"]
    counts, judge = m["counts"], m["judge"]
    for key in ("pairwise_accuracy", "pairwise_tie_share", "exact_match"):
        assert 0.0 <= m[key] <= 1.0
    assert m["five_best"] is None or 0.0 <= m["five_best"] <= 1.0
    for key in ("spearman", "kendall_tau"):
        assert m[key] is None or -1.0 <= m[key] <= 1.0
    assert judge["judgements"] == counts["replies"] * config.samples
    assert judge["replies"] == counts["replies"]
    assert judge["unscored_replies"] == counts["unscored"]
    assert m["judge_parse_failure_rate"] == pytest.approx(judge["parse_failures"] / judge["judgements"])
    rows = read_jsonl(out / "judgements.jsonl", "judgements")
    assert len(rows) == counts["prompts"]
    reply = rows[0]["replies"][0]
    assert {"text", "judge_outputs", "scores", "mean", "human_rank"} <= set(reply)
    assert len(reply["judge_outputs"]) == config.samples
    report = (out / "report.md").read_text()
    assert "pairwise accuracy %" in report and "paper M3" in report and "## Example judgements" in report


@pytest.mark.slow
def test_run_rm_tiny_model(tiny_model, seed_dir, tmp_path):
    config = rm_eval.RMEvalConfig.load("tiny", max_items=4, threads=1)
    out = tmp_path / "rm"
    m = rm_eval.run_rm(config, tiny_model, seed_dir / "eft_eval.jsonl", out)
    assert m["counts"]["prompts"] == min(4, len(read_jsonl(seed_dir / "eft_eval.jsonl")))
    _check_rm_outputs(out, m, config)
    with pytest.raises(SrlmError, match="already exists"):
        stages.run_stage("eval_rm", {"preset": "tiny"}, model=str(tiny_model), eft_eval=str(seed_dir), out=str(out))


@pytest.mark.slow
def test_run_rm_sft_model(request, seed_dir, tmp_path):
    pytest.importorskip("srlm.training")
    sft_model = request.getfixturevalue("sft_model")
    config = rm_eval.RMEvalConfig.load("tiny", threads=1)
    out = tmp_path / "rm-m1"
    m = rm_eval.run_rm(config, sft_model, seed_dir / "eft_eval.jsonl", out)
    _check_rm_outputs(out, m, config)


@pytest.fixture
def few_prompts(tmp_path) -> Path:
    path = tmp_path / "prompts.jsonl"
    rows = [
        {"instruction": "Name three primary colours.", "dataset": "demo"},
        {"id": 7, "prompt": "Explain what a list is in Python."},
        {"instruction": "Write a short greeting for a friend.", "dataset": "demo"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("method", ["pairwise", "rubric"])
def test_run_winrate_tiny_model(tiny_model, few_prompts, tmp_path, method):
    config = winrate.WinRateConfig.load("tiny", method=method, judge_samples=2, threads=1)
    out = tmp_path / f"winrate-{method}"
    m = winrate.run_winrate(config, tiny_model, tiny_model, tiny_model, few_prompts, out)
    assert m["wins"] + m["ties"] + m["losses"] == m["prompts"] == 3
    assert m["win_pct"] + m["tie_pct"] + m["loss_pct"] == pytest.approx(100.0)
    assert m["mean_length_a"] > 0 and m["mean_length_b"] > 0
    assert m["judge_outputs"] == 3 * 2 * 2
    assert 0 <= m["verdict_parse_failures"] <= m["judge_outputs"]
    assert {p.name for p in out.iterdir()} == {"metrics.json", "answers.jsonl", "report.md"}
    rows = read_jsonl(out / "answers.jsonl")
    assert [r["id"] for r in rows] == ["p1", "7", "p3"]
    assert all(r["winner"] in ("A", "B", "tie") for r in rows)
    assert re.search(r"\| count \| \d+ \| \d+ \| \d+ \|", (out / "report.md").read_text())


@pytest.mark.slow
def test_run_winrate_sft_vs_m0(request, tiny_model, few_prompts, tmp_path):
    pytest.importorskip("srlm.training")
    sft_model = request.getfixturevalue("sft_model")
    config = winrate.WinRateConfig.load("tiny", threads=1)
    m = winrate.run_winrate(config, sft_model, tiny_model, sft_model, few_prompts, tmp_path / "wr")
    assert m["wins"] + m["ties"] + m["losses"] == 3
    assert m["run"]["lineage"]["a"].get("stage") == "sft"


@pytest.mark.slow
def test_export_alpaca_tiny_model(tiny_model, few_prompts, tmp_path):
    out = tmp_path / "model_outputs.json"
    config = winrate.WinRateConfig.load("tiny", threads=1)
    stats = winrate.export_alpaca(config, tiny_model, few_prompts, out, generator_name="m0")
    rows = json.loads(out.read_text(encoding="utf-8"))
    assert isinstance(rows, list) and len(rows) == 3 == stats["prompts"]
    assert set(rows[0]) == {"instruction", "output", "generator", "dataset"}
    assert set(rows[1]) == {"instruction", "output", "generator"}  # that row had no dataset
    assert rows[0]["instruction"] == "Name three primary colours."
    assert rows[1]["instruction"] == "Explain what a list is in Python."
    assert all(r["generator"] == "m0" and isinstance(r["output"], str) for r in rows)
    assert not list(tmp_path.glob(".model_outputs.json.*"))  # no temporary left behind
