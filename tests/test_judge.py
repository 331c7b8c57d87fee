import pytest

from srlm import SrlmError
from srlm.judge import DEFAULT_TEMPLATE, check_template, fill_template, load_template, parse_score


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Relevant and complete.\nScore: 4", 4.0),
        ("Score: 2\nOn reflection it deserves more.\nScore: 3.5", 3.5),  # the last valid one
        ("score:5", 5.0),
        ("**Score:** 4", 4.0),
        ("Score: 0", 0.0),
        ("Score: 3\nScore: 7", 3.0),  # out-of-range later match is skipped
        ("Score: 45", None),  # not 4
        ("I would give it four points.", None),
        ("Score: -1", None),
        ("", None),
    ],
)
def test_parse_score(text, expected):
    assert parse_score(text) == expected


def test_default_template_has_the_rubric_structure():
    check_template(DEFAULT_TEMPLATE)
    for marker in ("additive\n5-point", "1 point", "2nd point", "3rd point", "4th point", "5th point", "100 words", "Score: <total points>"):
        assert marker in DEFAULT_TEMPLATE


def test_user_template(tmp_path):
    good = tmp_path / "judge.txt"
    good.write_text("Q: {instruction}\nA: {response}\nGive 'Score: N' with {braces} kept.")
    template = load_template(good)
    assert fill_template(template, "why {x}?", "because") == "Q: why {x}?\nA: because\nGive 'Score: N' with {braces} kept."
    assert fill_template(template, "echo {response}", "r") == "Q: echo {response}\nA: r\nGive 'Score: N' with {braces} kept."
    bad = tmp_path / "bad.txt"
    bad.write_text("Only {instruction} here")
    with pytest.raises(SrlmError, match=r"bad\.txt: .*\{response\}"):
        load_template(bad)
    with pytest.raises(SrlmError, match="not found"):
        load_template(tmp_path / "missing.txt")


def test_judge_without_any_valid_score_stops(tiny_model, tmp_path):
    """The untrained M0 never writes a score line: judging must stop with the counts, writing nothing."""
    from srlm import judge
    from srlm.io import write_jsonl

    candidates = tmp_path / "candidates.jsonl"
    write_jsonl(candidates, [{"id": "a", "prompt": "Name a fruit.", "replies": ["Apple.", "A stone."]}], "candidates")
    out = tmp_path / "judgements.jsonl"
    config = judge.JudgeConfig.load("tiny", max_new_tokens=8)
    with pytest.raises(SrlmError, match=r"no valid score in 6 judgements of 2 replies"):
        judge.run(config, tiny_model, candidates, out)
    assert not out.exists()


def test_random_scorer_is_seeded_and_loads_no_model(tmp_path):
    """The ablation control: scores drawn at random per reply, reproducible by seed, no model read."""
    from srlm import judge
    from srlm.io import read_jsonl, write_jsonl

    candidates = tmp_path / "candidates.jsonl"
    rows = [{"id": f"p{i}", "prompt": f"Prompt {i}.", "replies": ["a", "b", "c", "d"]} for i in range(30)]
    write_jsonl(candidates, rows, "candidates")

    def scores(seed, name):
        config = judge.JudgeConfig.load("tiny", scorer="random", seed=seed)
        stats = judge.run(config, tmp_path / "no-model-here", candidates, tmp_path / name)
        assert stats["parse_failures"] == 0 and stats["unscored_replies"] == 0
        return [[r["mean"] for r in rec["replies"]] for rec in read_jsonl(tmp_path / name, "judgements")]

    first, again, other = scores(0, "a.jsonl"), scores(0, "b.jsonl"), scores(1, "c.jsonl")
    assert first == again and first != other
    flat = [s for rec in first for s in rec]
    assert all(1 <= s <= 5 for s in flat) and len(set(flat)) > 5  # means of 3 draws: varied, in range
    with pytest.raises(SrlmError, match="scorer: 'coin' is not allowed; choose from 'model', 'random'"):
        judge.JudgeConfig.load("tiny", scorer="coin")


def test_named_templates():
    from srlm.judge import NAMED_TEMPLATES, SHORT_TEMPLATE

    assert load_template("short") == SHORT_TEMPLATE and load_template("rubric") == DEFAULT_TEMPLATE
    for template in NAMED_TEMPLATES.values():
        check_template(template)


def test_derived_judge_keeps_the_engine_settings():
    """Win rate and verifier judges run on the stage's own engine (e.g. a served model over HTTP)."""
    from srlm.verifiers import VerifyConfig
    from srlm.winrate import WinRateConfig

    for cls in (WinRateConfig, VerifyConfig):
        config = cls.load("tiny", backend="openai", base_url="http://judge:8000/v1", judge_samples=2,
                          judge_template="short")
        judge = config.judge_config()
        assert (judge.backend, judge.base_url, judge.samples, judge.template) == (
            "openai", "http://judge:8000/v1", 2, "short")
