"""Inputs a new user or a hostile file would give, through the CLI as a user runs it: each must end in one line
(exit 2) naming the file, line and field or the setting, leave what was already written untouched, and never
end in a traceback. The table below is the count the closing note reports."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import oasst_fixtures as fx
import pytest

from srlm import cli
from srlm.io import atomic_path, read_jsonl, write_jsonl

JUDGED = {"id": "p1", "prompt": "Name a colour.", "replies": [
    {"text": "Blue.", "judge_outputs": ["Score: 4"], "scores": [4], "mean": 4.0},
    {"text": "Hm.", "judge_outputs": ["Score: 1"], "scores": [1], "mean": 1.0}]}
PAIR = {"id": "p1", "prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Hm.", "chosen_score": 4.0,
        "rejected_score": 1.0}
TURNS = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]


def lines(path, *rows, raw: bytes | None = None):
    path.write_bytes(raw if raw is not None else "".join(r if isinstance(r, str) else json.dumps(r) + "\n"
                                                         for r in rows).encode())
    return str(path)


def judged(**reply_changes):
    return {**JUDGED, "replies": [{**JUDGED["replies"][0], **reply_changes}, JUDGED["replies"][1]]}


# (case, argv builder (tmp_path, tiny model) -> argv, the fragments the one line must hold)
CASES = [
    ("judgements with NaN", lambda d, m: ["pairs", "--judgements", lines(d / "j.jsonl", json.dumps(JUDGED) + "\n",
                                                                           '{"id": "p2", "prompt": "x", "replies": [{"text": "a", "judge_outputs": [], "scores": [NaN], "mean": NaN}]}\n'),
                                          "--out", str(d / "pairs.jsonl")], ["j.jsonl:2", "NaN is not a number"]),
    ("judgements with Infinity", lambda d, m: ["pairs", "--judgements", lines(d / "j.jsonl", '{"id": "p", "prompt": "x", "replies": [{"text": "a", "judge_outputs": [], "scores": [Infinity], "mean": 1}]}\n'),
                                               "--out", str(d / "pairs.jsonl")], ["j.jsonl:1", "Infinity"]),
    ("a score above 5", lambda d, m: ["pairs", "--judgements", lines(d / "j.jsonl", judged(scores=[9], mean=9.0)),
                                      "--out", str(d / "pairs.jsonl")], ["j.jsonl:1", "'replies'", "from 0 to 5"]),
    ("repeated prompt ids", lambda d, m: ["pairs", "--judgements", lines(d / "j.jsonl", JUDGED, JUDGED),
                                          "--out", str(d / "pairs.jsonl")], ["j.jsonl:2", "'p1'", "already used at", "j.jsonl:1"]),
    ("latin-1 text", lambda d, m: ["pairs", "--judgements", lines(d / "j.jsonl", raw=json.dumps(JUDGED).encode() + b"\n"
                                                                  + '{"id": "p2", "prompt": "caf\u00e9"}\n'.encode("latin-1")),
                                   "--out", str(d / "pairs.jsonl")], ["j.jsonl:2", "not UTF-8", "0xe9"]),
    ("identical chosen and rejected", lambda d, m: ["dpo", "--preset", "tiny", "--model", m, "--out", str(d / "m"),
                                                    "--pairs", lines(d / "p.jsonl", PAIR, {**PAIR, "rejected": "Blue."})],
     ["p.jsonl:2", "same text"]),
    ("an inverted pair", lambda d, m: ["dpo", "--preset", "tiny", "--model", m, "--out", str(d / "m"),
                                       "--pairs", lines(d / "p.jsonl", {**PAIR, "chosen_score": 0.5})],
     ["p.jsonl:1", "chosen_score 0.5 is below rejected_score 1.0"]),
    ("SFT turn with empty content", lambda d, m: ["sft", "--preset", "tiny", "--model", m, "--out", str(d / "m"),
                                                  "--ift", lines(d / "ift.jsonl", {"messages": [TURNS[0], {"role": "assistant", "content": " "}]})],
     ["ift.jsonl:1", "message 1 (assistant) has no text"]),
    ("SFT turn with an unknown role", lambda d, m: ["sft", "--preset", "tiny", "--model", m, "--out", str(d / "m"),
                                                    "--ift", lines(d / "ift.jsonl", {"messages": [{"role": "human", "content": "Hi"}, TURNS[1]]})],
     ["ift.jsonl:1", "role 'human'"]),
    ("negative temperature", lambda d, m: ["sample", "--preset", "tiny", "--model", m, "--temperature", "-0.5",
                                           "--prompts", lines(d / "p.jsonl", {"id": "a", "prompt": "x"}),
                                           "--out", str(d / "c.jsonl")], ["temperature must be >= 0"]),
    ("a YAML list for a boolean", lambda d, m: ["sample", "--model", m, "--config", lines(d / "c.yaml", "prefix_caching: [true]\n"),
                                                "--prompts", lines(d / "p.jsonl", {"id": "a", "prompt": "x"}),
                                                "--out", str(d / "c.jsonl")], ["prefix_caching", "expected a single bool"]),
    ("a mapping for a path", lambda d, m: ["judge", "--model", m, "--config", lines(d / "c.yaml", "template: {a: 1}\n"),
                                           "--candidates", lines(d / "c.jsonl", {"id": "a", "prompt": "x", "replies": ["y"]}),
                                           "--out", str(d / "j.jsonl")], ["template", "expected a single str"]),
    ("--out is a directory", lambda d, m: ["pairs", "--judgements", lines(d / "j.jsonl", JUDGED), "--overwrite",
                                           "--out", str((d / "outdir").mkdir() or d / "outdir")], ["outdir: is a directory"]),
    ("--out under a file", lambda d, m: ["pairs", "--judgements", lines(d / "j.jsonl", JUDGED),
                                         "--out", str(d / "j.jsonl" / "pairs.jsonl")], ["j.jsonl is a file"]),
    ("the paper's ift_count on a small file", lambda d, m: [
        "seed", "--source", lines(d / "oasst.jsonl", *fx.flat_rows([t for t in fx.trees()
                                                                    if t["message_tree_id"] != "t-kite"])),
        "--out", str(d / "seed")], ["EFT pool would be empty", "set ift_count below 8"]),
]


@pytest.fixture(scope="module")
def outcomes(tiny_model, tmp_path_factory):
    """Every case through the CLI: (exit code, stderr, an exception that escaped)."""
    results = {}
    for name, argv, _ in CASES:
        d = tmp_path_factory.mktemp("case")
        keep = d / "existing.jsonl"
        keep.write_text('{"kept": true}\n')
        capture = d / "stderr.txt"
        with open(capture, "w") as err:
            saved, sys.stderr = sys.stderr, err
            try:
                code, escaped = cli.main(argv(d, str(tiny_model))), None
            except BaseException as e:  # noqa: BLE001 (a traceback is what the test counts)
                code, escaped = None, e
            finally:
                sys.stderr = saved
        results[name] = (code, capture.read_text(), escaped, keep.read_text() == '{"kept": true}\n')
    return results


def test_every_hostile_input_ends_in_one_clear_line(outcomes):
    clear = 0
    for name, _, fragments in CASES:
        code, err, escaped, kept = outcomes[name]
        assert escaped is None, f"{name}: traceback {escaped!r}"
        errors = [line for line in err.splitlines() if line.startswith("srlm ")]
        assert code == 2 and len(errors) == 1, (name, err)
        assert all(f in errors[0] for f in fragments), (name, errors[0])
        assert kept, name
        clear += 1
    print(f"\nhostile inputs: {len(CASES)} tried, {clear} clear one-line errors, 0 tracebacks")


def test_a_byte_order_mark_and_crlf_are_read_as_utf8(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(PAIR).encode() + b"\r\n" + json.dumps({**PAIR, "id": "p2"}).encode())
    assert [r["id"] for r in read_jsonl(path, "pair")] == ["p1", "p2"]


def test_outputs_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_jsonl(tmp_path / "pairs.jsonl", [PAIR], "pair")
        with atomic_path(tmp_path / "dir", directory=True) as tmp:
            (tmp / "f").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "pairs.jsonl").stat().st_mode) == 0o644  # not mkstemp's 0600
    assert stat.S_IMODE((tmp_path / "dir").stat().st_mode) == 0o755  # not mkdtemp's 0700


def test_a_failing_task_prints_its_message_not_a_traceback():
    """What a KFP task does (stages.run_task): an SrlmError ends the process with one line, exit code 1."""
    code = ("from srlm import stages\n"
            "stages.run_task('validate', None, None, None, 'kfp-1', groups={'data': {'nope': 1}})\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr and "\x1b[" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "srlm validate: validation found 1 problem(s) before any training or generation:",
        "  - data: unknown key(s) ['nope']; known: " + result.stderr.split("known: ", 1)[1].splitlines()[0]]
