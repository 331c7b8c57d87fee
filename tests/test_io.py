import json
import os

import pytest

from srlm import SrlmError
from srlm.io import atomic_path, check_output_free, read_jsonl, read_prompts, validate, write_jsonl


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_roundtrip_every_kind(tmp_path):
    samples = {
        "ift": {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        "eft": {"prompt": "q", "response": "a", "judgement": "ok\nScore: 3", "score": 3},
        "eft_eval": {"prompt": "q", "replies": ["a", "b"], "ranks": [1, 0]},
        "prompt": {"id": "p1", "prompt": "q"},
        "candidates": {"id": "p1", "prompt": "q", "replies": ["a", "b"]},
        "judgements": {"id": "p1", "prompt": "q", "replies": [
            {"text": "a", "judge_outputs": ["Score: 4", "none"], "scores": [4.0, None], "mean": 4.0}]},
        "pair": {"prompt": "q", "chosen": "a", "rejected": "b", "chosen_score": 4.0, "rejected_score": 1.5},
    }
    for kind, record in samples.items():
        path = tmp_path / f"{kind}.jsonl"
        records = [record, {**record, "id": "p2"} if "id" in record else record]
        assert write_jsonl(path, records, kind) == 2
        assert read_jsonl(path, kind) == records


def test_malformed_line_names_file_and_line(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", ['{"id": "a", "prompt": "x"}', '{"id": "b", "prompt": '])
    with pytest.raises(SrlmError, match=r"p\.jsonl:2: not valid JSON"):
        read_jsonl(path, "prompt")


def test_missing_field_names_field_and_line(tmp_path):
    path = write_lines(tmp_path / "pairs.jsonl", [json.dumps({"prompt": "q", "chosen": "a", "chosen_score": 1, "rejected_score": 0})])
    with pytest.raises(SrlmError, match=r"pairs\.jsonl:1: missing field 'rejected'"):
        read_jsonl(path, "pair")


def test_wrong_type_and_range(tmp_path):
    with pytest.raises(SrlmError, match="field 'score' must be from 0 to 5"):
        validate("eft", {"prompt": "q", "response": "a", "judgement": "j", "score": 7})
    with pytest.raises(SrlmError, match="field 'ranks'"):
        validate("eft_eval", {"prompt": "q", "replies": ["a", "b"], "ranks": [0, 0]})
    with pytest.raises(SrlmError, match="field 'messages'"):
        validate("ift", {"messages": [{"role": "user", "content": "only a question"}]})


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(SrlmError, match=r"empty\.jsonl: file is empty"):
        read_jsonl(path, "candidates")
    assert read_jsonl(path, allow_empty=True) == []


def test_missing_file(tmp_path):
    with pytest.raises(SrlmError, match="no such file"):
        read_jsonl(tmp_path / "nope.jsonl", "prompt")


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    path = tmp_path / "out.jsonl"
    write_jsonl(path, [{"id": "1", "prompt": "keep me"}], "prompt")
    with pytest.raises(SrlmError):
        write_jsonl(path, [{"id": "2", "prompt": "ok"}, {"id": "3"}], "prompt")
    assert read_jsonl(path, "prompt") == [{"id": "1", "prompt": "keep me"}]
    assert os.listdir(tmp_path) == ["out.jsonl"]


def test_atomic_directory_is_removed_on_error(tmp_path):
    out = tmp_path / "model"
    with pytest.raises(RuntimeError):
        with atomic_path(out, directory=True) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("training crashed")
    assert os.listdir(tmp_path) == []


def test_existing_output_is_refused(tmp_path):
    out = tmp_path / "x.jsonl"
    out.write_text("{}\n")
    with pytest.raises(SrlmError, match="already exists"):
        check_output_free(out)
    check_output_free(out, overwrite=True)
    (tmp_path / "empty_dir").mkdir()
    check_output_free(tmp_path / "empty_dir")  # KFP pre-creates output directories


def test_read_prompts_accepts_alpaca_rows(tmp_path):
    path = write_lines(tmp_path / "a.jsonl", [json.dumps({"instruction": "Say hi", "dataset": "x"}), json.dumps({"id": 7, "prompt": "Q"})])
    rows = read_prompts(path)
    assert [(r["id"], r["prompt"]) for r in rows] == [("p1", "Say hi"), ("7", "Q")]
