"""The pipeline's stages on the testbed, on the shared tiny M1 (a file of its own: the proof-of-learning run in
test_testbed.py keeps one test worker busy, and this test runs wherever the session's M1 is already trained)."""

import pytest

from srlm import SrlmError, testbed

SMALL = {"ift_examples": 60, "eft_examples": 60, "eft_eval_items": 10, "prompts_per_iteration": 6,
         "verify_prompts": 10}


def test_stages_testbed_seed_prompts_from_file_and_verifier_evaluation(sft_model, tmp_path):
    """The pipeline's stages on the testbed: seed dir, each round's prompts sliced from the file, evaluation
    with the verifier (satisfaction per kind, judge agreement) and pairs graded by the verifier."""
    import json

    from srlm import stages
    from srlm.context import RunContext
    from srlm.io import read_prompts, write_jsonl

    data = {"preset": "tiny", "seed": {"source": "testbed"}, "testbed": SMALL}
    stats = stages.run_stage("seed", data, out=str(tmp_path / "seed"))
    assert stats["prompts"] == 12 and (tmp_path / "seed" / "verify.jsonl").is_file()

    sampling = {"preset": "tiny", "prompts": {"source": "file", "num_prompts": 6}}
    rounds = []
    for t in (2, 3):
        stages.run_stage("prompts", sampling, RunContext(iteration=t), model=str(sft_model),
                         seed_prompts=str(tmp_path / "seed"), out=str(tmp_path / f"p{t}.jsonl"))
        rounds.append([r["id"] for r in read_prompts(tmp_path / f"p{t}.jsonl")])
    assert rounds[0][0].startswith("tb-round2-") and rounds[1][0].startswith("tb-round3-") and len(rounds[1]) == 6
    with pytest.raises(SrlmError, match="none left for iteration 4"):
        stages.run_stage("prompts", sampling, RunContext(iteration=4), model=str(sft_model),
                         seed_prompts=str(tmp_path / "seed"), out=str(tmp_path / "p4.jsonl"))

    evaluation = {"preset": "tiny", "verify": {"verifier": "testbed", "max_new_tokens": 16, "n": 2,
                                              "judge_max_new_tokens": 16}}
    stats = stages.run_stage("evaluate", evaluation, RunContext(iteration=1), model=str(sft_model),
                             previous=str(sft_model), judge_model=str(sft_model), eft=str(tmp_path / "seed"),
                             seed=str(tmp_path / "seed"), out=str(tmp_path / "eval"), report=str(tmp_path / "report.md"))
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert 0 <= summary["verify_satisfied"] <= 1 and "verify_judge_accuracy" in summary
    assert {f"verify_satisfied_{k}" for k in testbed.KINDS} <= set(summary)
    assert stats["verify"]["prompts"] == 10
    report = (tmp_path / "report.md").read_text()
    assert "\n## Verifier evaluation\n" in report and "\n## Head-to-head win rate\n" in report
    assert "\n### Examples\n" in report  # each part's own sections sit one level below its heading

    prompt = "Describe snow in a single sentence. End it with an exclamation mark."
    judged = [{"id": "a", "prompt": prompt, "replies": [
        {"text": "Snow!", "judge_outputs": ["Score: 5"], "scores": [5], "mean": 5.0},
        {"text": "Snow.", "judge_outputs": ["Score: 1"], "scores": [1], "mean": 1.0}]}]
    write_jsonl(tmp_path / "judged.jsonl", judged, "judgements")
    stats = stages.run_stage("pairs", {"preset": "tiny", "pairs": {"verifier": "testbed"}},
                             judgements=str(tmp_path / "judged.jsonl"), out=str(tmp_path / "pairs.jsonl"))
    assert stats["verifier_correct_share"] == 1.0 and stats["verifier_inverted_share"] == 0.0
