import json
import subprocess
import sys

from srlm import stages
from srlm.cli import main


def srlm(*args):
    return subprocess.run([sys.executable, "-m", "srlm.cli", *args], capture_output=True, text=True)


def test_help_lists_every_stage():
    out = srlm("--help").stdout
    commands = [stage.command for stage in stages.STAGES.values() if stage.cli]
    assert {"tiny-model", "seed", "build-eft", "sft", "prompts", "sample", "judge", "pairs", "dpo", "eval-rm", "winrate",
            "alpaca-eval", "mt-bench", "ifeval", "export-alpaca", "promote"} == set(commands)
    for command in commands:
        assert command in out
    sample_help = srlm("sample", "--help").stdout
    assert "--temperature" in sample_help and "replies sampled per prompt" in sample_help and "--preset" in sample_help


def test_user_error_is_one_line_without_traceback(tmp_path):
    bad = tmp_path / "j.jsonl"
    bad.write_text('{"id": "a", "prompt": "q"}\n')
    result = srlm("pairs", "--judgements", str(bad), "--out", str(tmp_path / "p.jsonl"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"srlm pairs: error: {bad}:1: missing field 'replies' (judgements record needs id, prompt, replies)"
    assert not (tmp_path / "p.jsonl").exists()


def test_pairs_through_cli(tmp_path, capsys):
    src = tmp_path / "j.jsonl"
    rows = [{"id": "a", "prompt": "q", "replies": [
        {"text": "good", "judge_outputs": ["Score: 5"], "scores": [5.0], "mean": 5.0},
        {"text": "bad", "judge_outputs": ["Score: 1"], "scores": [1.0], "mean": 1.0}]}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["pairs", "--judgements", str(src), "--out", str(tmp_path / "p.jsonl")]) == 0
    assert json.loads(capsys.readouterr().out)["pairs"] == 1
    assert main(["pairs", "--judgements", str(src), "--out", str(tmp_path / "p.jsonl")]) == 2  # exists
    assert "already exists" in capsys.readouterr().err
