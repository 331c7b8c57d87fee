"""EFT builder: agreement with human ranks, down-sampling, prompt-level split, and the stage end to end."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from srlm import eft, stages
from srlm.errors import SrlmError
from srlm.io import read_jsonl, write_jsonl
from srlm.judge import JudgeConfig

# ---------------------------------------------------------------- agreement


@pytest.mark.parametrize(
    "scores, ranks, verdict",
    [
        ([5, 3], [0, 1], "agree"),
        ([3, 5], [1, 0], "agree"),
        ([2, 4.5, 3], [2, 0, 1], "agree"),
        ([3, 5], [0, 1], "order"),
        ([5, 4, 4.5], [0, 1, 2], "order"),  # one pair out of order is enough
        ([4, 4], [0, 1], "tie"),
        ([5, 3, 3], [0, 1, 2], "tie"),
        ([3, 4, 4], [0, 1, 2], "tie"),  # a tie counts before a wrong order
        ([5, None], [0, 1], "unscored"),
        ([None, None], [0, 1], "unscored"),
        ([5], [0], "unscored"),  # nothing to compare
        ([5, 3, 3], [0, 1, 1], "agree"),  # equal human ranks: that pair is not compared
    ],
)
def test_agreement(scores, ranks, verdict):
    assert eft.agreement(scores, ranks) == verdict
    assert eft.agrees(scores, ranks) == (verdict == "agree")


def test_agreement_length_mismatch():
    with pytest.raises(ValueError):
        eft.agreement([1, 2], [0])


def test_choose_judgement_closest_to_mean():
    assert eft.choose_judgement([4, 3, 4]) == 0  # mean 3.67: a 4 is closest, the first one
    assert eft.choose_judgement([2, 4, 3]) == 2  # mean 3: the 3
    assert eft.choose_judgement([None, 3, 4]) == 1  # mean 3.5: tie between 3 and 4 -> first valid
    assert eft.choose_judgement([None, None, 5]) == 2
    assert eft.choose_judgement([None, None]) is None
    assert eft.choose_judgement([]) is None


def test_trim_judgement_ends_with_the_score_line():
    text = "Relevant and clear.\nScore: 4\nAs an extra note, Score: 9 is not a thing.\nmore rambling"
    assert eft.trim_judgement(text, 4.0) == "Relevant and clear.\nScore: 4"
    assert eft.trim_judgement("  Short.\nScore: 3  ", 3.0) == "Short.\nScore: 3"
    assert eft.trim_judgement("Score:\n2", 2.0) == "Score:\n2"  # no single line holds it: kept whole


# ---------------------------------------------------------------- down-sampling


def ex(score, i=0):
    return {"id": f"p{i}", "score": score}


def test_downsample_caps_the_most_frequent_at_the_second():
    examples = [ex(4, i) for i in range(10)] + [ex(3, i) for i in range(4)] + [ex(5, i) for i in range(2)]
    kept = eft.downsample(examples, "second", seed=1)
    assert Counter(e["score"] for e in kept) == {4: 4, 3: 4, 5: 2}
    assert [e for e in kept if e["score"] != 4] == [e for e in examples if e["score"] != 4]
    assert kept == [e for e in examples if e in kept]  # original order kept
    assert kept == eft.downsample(examples, "second", seed=1)  # seeded
    assert Counter(e["score"] for e in eft.downsample(examples, "second", factor=1.5)) == {4: 6, 3: 4, 5: 2}


def test_downsample_leaves_balanced_or_single_score_data_alone():
    tied = [ex(4), ex(4), ex(3), ex(3), ex(5)]
    assert eft.downsample(tied, "second") == tied
    single = [ex(4), ex(4)]
    assert eft.downsample(single, "second") == single
    skewed = [ex(4)] * 5 + [ex(2)]
    assert eft.downsample(skewed, "none") == skewed
    assert eft.downsample([], "second") == []
    with pytest.raises(SrlmError, match="downsample must be one of"):
        eft.downsample(skewed, "halve")


def test_score_histogram():
    assert eft.score_histogram([ex(4), ex(4.0), ex(3.5), ex(1)]) == {"1": 1, "3.5": 1, "4": 2}


# ---------------------------------------------------------------- split


def test_split_by_prompt():
    ids = [f"q{i}" for i in range(20)]
    train, held = eft.split_prompts(ids, 0.25, seed=3)
    assert len(held) == 5 and len(train) == 15
    assert set(train).isdisjoint(held) and set(train) | set(held) == set(ids)
    assert train == [i for i in ids if i in set(train)]  # input order kept
    assert eft.split_prompts(ids, 0.25, seed=3) == (train, held)
    assert eft.split_prompts(ids, 0.25, seed=4) != (train, held)
    # The split depends on the set of ids, not their order.
    _, r_held = eft.split_prompts(list(reversed(ids)), 0.25, seed=3)
    assert set(r_held) == set(held)


def test_split_edge_cases():
    assert eft.split_prompts(["a", "b"], 0.1) in ((["a"], ["b"]), (["b"], ["a"]))  # at least one held out
    assert eft.split_prompts(["a", "b"], 0.9)[0]  # never all held out
    assert eft.split_prompts(["a"], 0.5) == (["a"], [])
    assert eft.split_prompts(["a", "b", "c"], 0.0) == (["a", "b", "c"], [])
    assert eft.split_prompts([], 0.25) == ([], [])


def test_config_validation():
    assert eft.EFTConfig.load("tiny").max_new_tokens == JudgeConfig.load("tiny").max_new_tokens
    for bad in ({"eval_fraction": 1.0}, {"downsample": "x"}, {"eval_from": "x"}, {"max_prompts": -1}, {"samples": 0}):
        with pytest.raises(SrlmError):
            eft.EFTConfig.load(**bad)


# ---------------------------------------------------------------- the stage, with a scripted judge

# Per pool prompt: the judge's score for each reply, listed in rank order (rank 0 first).
SCRIPT = {
    "ok1": [4, 3],
    "ok2": [4, 3],
    "ok3": [4, 2],
    "ok4": [5, 4],
    "ok5": [4, 3, 1],
    "ok6": [4, 3],
    "ok7": [4, 2],
    "ok8": [5, 4, 2],
    "tie": [4, 4],
    "wrong": [2, 4],
    "unscored": [4, None],
}


def pool_records() -> list[dict]:
    records = []
    for pid, scores in SCRIPT.items():
        ranks = list(range(len(scores)))[::-1]  # replies listed worst first
        records.append(
            {
                "id": pid,
                "prompt": f"Question {pid}?",
                "replies": [f"answer {pid} rank {r}" for r in ranks],
                "ranks": ranks,
            }
        )
    return records


class ScriptedJudge:
    """Stands in for a model: judges 'answer <pid> rank <r>' with SCRIPT's score, 3 samples each."""

    def __init__(self):
        from srlm.generation import GenerationStats

        self.seen: list[str] = []
        self.stats = GenerationStats()

    def close(self):
        pass

    def generate(self, prompts, n=1, temperature=0.7, top_p=0.9, max_new_tokens=256, seed=0, desc=""):
        out = []
        for prompt in prompts:
            response = re.search(r"<response>(.*)</response>", prompt, re.DOTALL).group(1)
            self.seen.append(response)
            pid, rank = re.fullmatch(r"answer (\S+) rank (\d+)", response).groups()
            score = SCRIPT[pid][int(rank)]
            if score is None:
                samples = ["I cannot decide."] * n
            elif n >= 4:  # one unparsable, one off by one, two on the score: the chosen one is on it
                samples = [
                    "no score here",
                    f"Nearly.\nScore: {max(score - 1, 0)}",
                    f"Judged {pid}.\nScore: {score}\ntrailing",
                ]
                samples += [f"Judged {pid}.\nScore: {score}"] * (n - 3)
            else:
                samples = [f"Judged {pid}.\nScore: {score}\ntrailing"] * n
            out.append(samples)
        return out


@pytest.fixture
def pool_file(tmp_path) -> Path:
    path = tmp_path / "pool.jsonl"
    write_jsonl(path, pool_records(), "eft_eval")
    return path


@pytest.fixture
def judge(monkeypatch) -> ScriptedJudge:
    fake = ScriptedJudge()
    monkeypatch.setattr(eft, "make_generator", lambda model, options=None, chat_template="": fake)
    return fake


def test_run_with_scripted_judge(pool_file, judge, tmp_path):
    config = eft.EFTConfig.load(eval_fraction=0.25, seed=5, samples=4)
    out = tmp_path / "eft"
    stats = eft.run(config, tmp_path / "model", pool_file, out)
    train = read_jsonl(out / "eft_train.jsonl", "eft")
    held = read_jsonl(out / "eft_eval.jsonl", "eft_eval")
    assert sorted(p.name for p in out.iterdir()) == ["eft_eval.jsonl", "eft_train.jsonl"]

    held_ids = {r["id"] for r in held}
    train_ids = {r["id"] for r in train}
    assert len(held_ids) == round(0.25 * len(SCRIPT)) == stats["eval_prompts"]
    assert train_ids.isdisjoint(held_ids)
    # Eval prompts are held out before judging (eval_from=pool): not judged, all replies kept.
    assert not any(f"answer {pid} " in s for pid in held_ids for s in judge.seen)
    assert held == [r for r in pool_records() if r["id"] in held_ids]
    # Only agreeing prompts give training examples; each judgement ends on its score line.
    assert train_ids <= {p for p in SCRIPT if p.startswith("ok")}
    for e in train:
        pid, rank = re.fullmatch(r"answer (\S+) rank (\d+)", e["response"]).groups()
        assert e["score"] == SCRIPT[pid][int(rank)] and e["rank"] == int(rank)
        assert e["judgement"] == f"Judged {pid}.\nScore: {e['score']:g}"
    hist = Counter(e["score"] for e in train)
    top, second = sorted(hist.values(), reverse=True)[:2]
    assert top <= second  # the most frequent score (4) was down-sampled
    assert stats["examples_after_downsampling"] == len(train) <= stats["examples_before_downsampling"]
    judged_prompts = len(SCRIPT) - len(held_ids)
    assert stats["prompts_judged"] == judged_prompts
    unscored = sum(1 for pid, s in SCRIPT.items() if pid not in held_ids for x in s if x is None)
    assert stats["parse_failures"] == stats["replies_judged"] + 3 * unscored == stats["judgements"] // 4 + 3 * unscored
    disagreeing = stats["prompts_disagreeing"]
    assert stats["prompts_agreeing"] + sum(disagreeing.values()) == judged_prompts
    assert stats["score_histogram"] == {f"{k:g}": v for k, v in sorted(hist.items())}

    # Same seed, same files; the stage adapter needs overwrite the second time.
    group = {"eft": config.to_dict()}
    with pytest.raises(SrlmError, match="already exists"):
        stages.run_stage("build_eft", group, model=str(tmp_path / "model"), pool=str(pool_file), out=str(out))
    first = (out / "eft_train.jsonl").read_text()
    stages.run_stage("build_eft", group, model=str(tmp_path / "model"), pool=str(pool_file), out=str(out), overwrite=True)
    assert (out / "eft_train.jsonl").read_text() == first


def test_run_agreed_mode_judges_everything(pool_file, judge, tmp_path):
    config = eft.EFTConfig.load(eval_fraction=0.25, eval_from="agreed", downsample="none", samples=1)
    stats = eft.run(config, tmp_path / "model", pool_file, tmp_path / "eft")
    assert stats["prompts_judged"] == len(SCRIPT)
    assert stats["prompts_agreeing"] == 8
    assert stats["prompts_disagreeing"] == {"unscored": 1, "tie": 1, "order": 1}
    assert stats["eval_prompts"] == 2 and stats["train_prompts"] == 6
    assert stats["examples_before_downsampling"] == stats["examples_after_downsampling"]
    held = read_jsonl(tmp_path / "eft" / "eft_eval.jsonl", "eft_eval")
    assert all(r["id"].startswith("ok") for r in held)


def test_run_max_prompts(pool_file, judge, tmp_path):
    stats = eft.run(eft.EFTConfig.load(max_prompts=4, eval_fraction=0.25), tmp_path / "m", pool_file, tmp_path / "eft")
    assert stats["prompts_in"] == len(SCRIPT) and stats["prompts_used"] == 4
    assert stats["prompts_judged"] == 3 and stats["eval_prompts"] == 1


def test_run_fails_loudly_when_nothing_agrees(tmp_path, judge):
    pool = tmp_path / "pool.jsonl"
    write_jsonl(pool, [r for r in pool_records() if not r["id"].startswith("ok")], "eft_eval")
    (tmp_path / "sub").mkdir()
    out = tmp_path / "sub" / "eft"
    expected = r"0 of 3 prompts agreed with the human ranks \(6 replies judged.*tied scores 1, in the wrong order 1"
    with pytest.raises(SrlmError, match=expected):
        eft.run(eft.EFTConfig.load(eval_fraction=0.0), tmp_path / "model", pool, out)
    assert not out.exists()
    assert not list((tmp_path / "sub").iterdir())  # no temporary directory left behind


def test_run_rejects_a_bad_pool_before_loading_a_model(tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"prompt": "q", "replies": ["a", "b"], "ranks": [0, 0]}\n')
    with pytest.raises(SrlmError, match=r"pool\.jsonl:1: field 'ranks' must give one distinct rank per reply"):
        eft.run(eft.EFTConfig.load(), tmp_path / "no-model", pool, tmp_path / "eft")


# ---------------------------------------------------------------- the stage, with real models


def small_pool(tmp_path) -> Path:
    import oasst_fixtures as fx

    from srlm import oasst
    from srlm.seed_data import SeedConfig

    source = fx.write_flat_jsonl(tmp_path / "messages.jsonl")
    _, pool = oasst.build(SeedConfig.load(source=str(source), ift_count=1, seed=4))
    path = tmp_path / "pool.jsonl"
    write_jsonl(path, pool, "eft_eval")
    return path


@pytest.mark.slow
def test_untrained_model_gives_no_scores(tiny_model, tmp_path):
    """M0 never writes a score line: the stage must fail with counts and write nothing."""
    out = tmp_path / "eft"
    config = eft.EFTConfig.load("tiny", samples=1, max_new_tokens=16, eval_fraction=0.0, threads=1)
    expected = r"0 of 8 prompts agreed with the human ranks \(19 replies judged.*no valid 'Score: N'"
    with pytest.raises(SrlmError, match=expected):
        eft.run(config, tiny_model, small_pool(tmp_path), out)
    assert not out.exists()


@pytest.mark.slow
def test_sft_model_as_judge(sft_model, tmp_path):
    """The seed-SFT'd tiny model judges a small pool (seeded) and keeps the prompts it ranks like people."""
    out = tmp_path / "eft"
    config = eft.EFTConfig.load("tiny", eval_fraction=0.25, threads=1)
    stats = eft.run(config, sft_model, small_pool(tmp_path), out)
    assert stats["replies_judged"] > 0 and stats["prompts_agreeing"] >= 1
    train = read_jsonl(out / "eft_train.jsonl", "eft")
    held = read_jsonl(out / "eft_eval.jsonl", "eft_eval")
    assert len(train) == stats["train_examples"] and len(held) == stats["eval_prompts"] == 2
    assert {e["id"] for e in train}.isdisjoint(r["id"] for r in held)
    from srlm.judge import parse_score

    assert all(parse_score(e["judgement"]) == e["score"] for e in train)
