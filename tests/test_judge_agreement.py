"""The judge's drift between iterations and its agreement with a judge server (srlm.judge_agreement): M(t) judging
again what M(t-1) judged (the real tiny model), and a judge server scoring the EFT eval replies (a local stand-in
server whose scores are planted), with Kendall tau, alpha and the same-pair share worked out by hand."""

from __future__ import annotations

import json
import re

import pytest
from openai_standin import OpenAIStandIn
from scipy.stats import kendalltau

from srlm.errors import SrlmError
from srlm.io import write_jsonl
from srlm.judge_agreement import JudgeAgreementConfig, report, run
from srlm.rm_eval import RMEvalConfig


def rm_rows(mine):
    """rm/judgements.jsonl as srlm.rm_eval writes it: each reply says the score the stand-in server gives it."""
    return [{"id": f"e{i}", "prompt": f"Question {i}?", "replies": [
        {"text": f"Answer {j} (grade {theirs})", "scores": [m], "mean": m, "human_rank": j}
        for j, (m, theirs) in enumerate(row)]} for i, row in enumerate(mine)]


def graded(body):
    """The stand-in judge: the grade its reply carries, once per sample asked for."""
    grade = re.findall(r"\(grade (\d)\)", body["messages"][-1]["content"])[-1]
    return {"choices": [{"index": k, "finish_reason": "stop", "message": {"role": "assistant",
                                                                          "content": f"Fine.\nScore: {grade}"}}
                        for k in range(body.get("n", 1))], "usage": {"completion_tokens": 4}}


def test_agreement_with_a_judge_server_is_measured_on_the_eval_replies(tmp_path):
    # (M(t)'s mean score, the server's grade) per reply; human rank 0 is the best reply
    rows = rm_rows([[(5.0, 4), (3.0, 2), (1.0, 1)],      # same order: tau 1
                    [(2.0, 1), (4.0, 3), (3.0, 5)],      # M(t) 2<4>3, server 1<3<5: tau 1/3
                    [(4.0, 3), (4.0, 3), (1.0, 2)]])     # a tie on both sides: tau-b 1
    write_jsonl(tmp_path / "rm.jsonl", rows)
    with OpenAIStandIn(graded) as server:
        config = JudgeAgreementConfig(max_prompts=0, judge_base_url=server.url, judge_model="judge-70b")
        metrics = run(config, RMEvalConfig.load("tiny"), "unused", tmp_path / "out", judgements=None,
                      rm_judgements=tmp_path / "rm.jsonl")
        assert len(server.bodies) == 9 and {b["model"] for b in server.bodies} == {"judge-70b"}
    expected = (1.0 + kendalltau([2, 4, 3], [1, 3, 5]).statistic + 1.0) / 3
    assert metrics["judge_tau_vs_external"] == pytest.approx(expected) and metrics["judge_tau_vs_external_prompts"] == 3
    assert 0 < metrics["judge_alpha_vs_external"] < 1
    # the server's own ranking against the human ranks: 5 of 9 pairs ordered right (a tie counts wrong)
    assert metrics["external_pairwise_accuracy"] == pytest.approx(5 / 9)
    saved = [json.loads(line) for line in (tmp_path / "out" / "external.jsonl").read_text().splitlines()]
    assert saved[1] == {"id": "e1", "self": [2.0, 4.0, 3.0], "external": [1.0, 3.0, 5.0]}
    assert "judge-70b at" in report(metrics)


def test_a_judge_server_without_a_model_name_is_refused():
    with pytest.raises(SrlmError, match="judge_agreement.judge_model is empty"):
        JudgeAgreementConfig(judge_base_url="http://judge:8000/v1").validate()
    assert "Not measured" in report({})


@pytest.mark.slow
def test_drift_is_the_current_models_judgement_of_the_rounds_candidates(tmp_path, sft_model):
    round_judged = [{"id": f"p{i}", "prompt": f"Name a colour, please ({i}).", "replies": [
        {"text": text, "judge_outputs": [], "scores": [m], "mean": m} for text, m in zip(
            ["Blue.", "Red is a colour.", "I do not know."], means)]}
        for i, means in enumerate([[5.0, 3.0, 1.0], [2.0, 4.0, 3.0], [3.0, 3.0, 3.0]])]
    write_jsonl(tmp_path / "judgements.jsonl", round_judged, "judgements")
    config = JudgeAgreementConfig.load("tiny", max_prompts=2)
    metrics = run(config, RMEvalConfig.load("tiny"), sft_model, tmp_path / "out",
                  judgements=tmp_path / "judgements.jsonl", rm_judgements=tmp_path / "none.jsonl")
    assert metrics["rejudged_prompts"] == 2 and metrics["rejudged_replies"] == 6  # max_prompts: the first 2
    rows = [json.loads(line) for line in (tmp_path / "out" / "rejudged.jsonl").read_text().splitlines()]
    assert [r["previous"] for r in rows] == [[5.0, 3.0, 1.0], [2.0, 4.0, 3.0]]
    taus = []
    for r in rows:  # the replies both judges scored; a prompt whose tau is undefined (all tied) is left out
        kept = [(p, c) for p, c in zip(r["previous"], r["current"]) if c is not None]
        tau = kendalltau(*zip(*kept)).statistic if len(kept) >= 2 else float("nan")
        taus += [] if tau != tau else [tau]
    if taus:
        assert metrics["judge_tau_vs_previous"] == pytest.approx(sum(taus) / len(taus))
    else:
        assert metrics["judge_tau_vs_previous"] is None
    assert metrics["judge_tau_vs_previous_prompts"] == len(taus)
