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
