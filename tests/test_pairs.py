import pytest

from srlm import SrlmError, pairs
from srlm.io import read_jsonl, write_jsonl


def judged(pid, means):
    return {"id": pid, "prompt": f"prompt {pid}", "replies": [
        {"text": f"reply {i} " + "x" * i, "judge_outputs": [], "scores": [m], "mean": m} for i, m in enumerate(means)]}


def test_best_vs_worst_ties_and_unscored():
    records = [
        judged("a", [3.0, 4.5, 1.0, 2.0]),  # chosen 1, rejected 2
        judged("b", [4.0, 4.0, 4.0, 4.0]),  # tie -> dropped
        judged("c", [None, 2.0, None, None]),  # one scored reply -> dropped
        judged("d", [None, 2.0, 3.0, None]),  # unscored left out
    ]
    out, stats = pairs.build_pairs(records, pairs.PairsConfig())
    assert [(p["id"], p["chosen"][:7], p["rejected"][:7]) for p in out] == [("a", "reply 1", "reply 2"), ("d", "reply 2", "reply 1")]
    assert out[0]["chosen_score"] == 4.5 and out[0]["rejected_score"] == 1.0
    assert stats["prompts"] == 4 and stats["pairs"] == 2 and stats["ties_or_unpaired"] == 2
    assert stats["unscored_replies"] == 5 and stats["replies"] == 16
    assert stats["chosen_mean_chars"] == pytest.approx((len("reply 1 x") + len("reply 2 xx")) / 2)


def test_min_margin():
    out, _ = pairs.build_pairs([judged("a", [3.0, 3.5])], pairs.PairsConfig(min_margin=0.5))
    assert out == []


def test_zero_pairs_fails_and_writes_nothing(tmp_path):
    src = tmp_path / "j.jsonl"
    write_jsonl(src, [judged("a", [2.0, 2.0]), judged("b", [None, None])], "judgements")
    out = tmp_path / "pairs.jsonl"
    with pytest.raises(SrlmError, match=r"0 preference pairs from 2 prompts \(2 of 4 replies had no valid score, 2 prompts tied"):
        pairs.run(pairs.PairsConfig(), src, out)
    assert not out.exists()


def test_run_writes_valid_pairs(tmp_path):
    src = tmp_path / "j.jsonl"
    write_jsonl(src, [judged("a", [1.0, 5.0])], "judgements")
    stats = pairs.run(pairs.PairsConfig(), src, tmp_path / "p.jsonl")
    assert stats["pairs"] == 1
    assert read_jsonl(tmp_path / "p.jsonl", "pair")[0]["chosen_score"] == 5.0


def test_a_reply_sampled_twice_and_judged_apart_gives_no_pair():
    """The same text as best and worst is no preference (DPO's loss on it is log 2 with a zero gradient)."""
    twice = judged("a", [5.0, 1.0, 3.0])
    twice["replies"][1]["text"] = twice["replies"][0]["text"]
    out, stats = pairs.build_pairs([twice, judged("b", [1.0, 4.0])], pairs.PairsConfig())
    assert [p["id"] for p in out] == ["b"] and stats["same_text_dropped"] == 1 and stats["ties_or_unpaired"] == 0
