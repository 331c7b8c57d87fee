"""Kill and resume (srlm.resume): a sampling or judging stage run by the CLI is killed with SIGKILL after some of
its chunks, then run again with the same command. The output equals an uninterrupted run's byte for byte (and the
run without chunks), and the chunks finished before the kill are not done again (counted)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from srlm.io import read_jsonl, write_jsonl

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = 48


def srlm(*args: str) -> list[str]:
    return [sys.executable, "-m", "srlm.cli", *args]


def run(argv: list[str]) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout[done.stdout.rindex("{\n"):])  # the CLI's result (the trainer prints its logs too)


def kill_once(argv: list[str], ready: Callable[[], bool]) -> None:
    """Start the stage and SIGKILL it as soon as ``ready()`` (polled every 20 ms); it must not end before that."""
    proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not ready():
        assert proc.poll() is None, "the stage ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def kill_after_chunks(argv: list[str], chunks_dir: Path, chunks: int) -> tuple[int, int]:
    """Kill the stage once ``chunks`` chunk files exist; how many existed when it died and how many work items they
    hold (a chunk is a shard: with the transformers backend, whole batches)."""
    kill_once(argv, lambda: len(list(chunks_dir.glob("chunk-*.jsonl"))) >= chunks)
    files = list(chunks_dir.glob("chunk-*.jsonl"))
    return len(files), sum(len(f.read_text().splitlines()) - 1 for f in files)  # the first line is the header


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("resume") / "prompts.jsonl"
    ift = read_jsonl(ROOT / "src" / "srlm" / "data" / "seed_ift.jsonl", "ift")
    write_jsonl(path, [{"id": f"p{i}", "prompt": r["messages"][0]["content"]} for i, r in enumerate(ift[:PROMPTS])],
                "prompt")
    return path


@pytest.mark.slow
def test_sampling_killed_after_two_chunks_resumes_to_the_same_bytes(tmp_path, tiny_model, prompts):
    common = ["--preset", "tiny", "--model", str(tiny_model), "--prompts", str(prompts), "--threads", "1",
              "--max-new-tokens", "32", "--batch-size", "16"]
    sample = srlm("sample", *common, "--resume-chunk", "8", "--out", str(tmp_path / "killed.jsonl"))
    died_with, done = kill_after_chunks(sample, tmp_path / "killed.jsonl.chunks", 2)
    assert 2 <= died_with < 6 and done >= 8 and not (tmp_path / "killed.jsonl").exists()
    resumed = run(sample)
    assert resumed["chunks"] == 6 and resumed["chunks_resumed"] == died_with
    assert resumed["prompts_sampled_now"] == PROMPTS - done  # the work before the kill is not repeated
    assert not (tmp_path / "killed.jsonl.chunks").exists()
    run(srlm("sample", *common, "--resume-chunk", "8", "--out", str(tmp_path / "whole.jsonl")))
    run(srlm("sample", *common, "--resume-chunk", "0", "--out", str(tmp_path / "unchunked.jsonl")))
    killed = (tmp_path / "killed.jsonl").read_bytes()
    assert killed == (tmp_path / "whole.jsonl").read_bytes() == (tmp_path / "unchunked.jsonl").read_bytes()


@pytest.mark.slow
def test_judging_killed_mid_way_resumes_to_the_same_bytes_and_stale_chunks_are_dropped(tmp_path, sft_model, prompts):
    candidates = tmp_path / "candidates.jsonl"
    records = read_jsonl(prompts, "prompt")[:8]
    write_jsonl(candidates, [{"id": r["id"], "prompt": r["prompt"], "replies": [f"Reply {k} to {r['id']}." for k in range(4)]}
                             for r in records], "candidates")
    common = ["--preset", "tiny", "--model", str(sft_model), "--candidates", str(candidates), "--threads", "1",
              "--max-new-tokens", "128", "--batch-size", "16", "--samples", "1"]
    judge = srlm("judge", *common, "--resume-chunk", "4", "--out", str(tmp_path / "killed.jsonl"))
    died_with, done = kill_after_chunks(judge, tmp_path / "killed.jsonl.chunks", 3)
    assert 3 <= died_with < 8 and done > 0
    resumed = run(judge)
    assert (resumed["chunks"], resumed["chunks_resumed"]) == (8, died_with)
    assert resumed["replies_judged_now"] == 32 - done
    run(srlm("judge", *common, "--resume-chunk", "0", "--out", str(tmp_path / "unchunked.jsonl")))
    assert (tmp_path / "killed.jsonl").read_bytes() == (tmp_path / "unchunked.jsonl").read_bytes()

    # chunks left by a run with other settings are not mixed in: the stage starts over
    stale = srlm("judge", *common, "--resume-chunk", "4", "--temperature", "0.5", "--out", str(tmp_path / "other.jsonl"))
    kill_after_chunks(stale, tmp_path / "other.jsonl.chunks", 1)
    again = run(srlm("judge", *common, "--resume-chunk", "4", "--out", str(tmp_path / "other.jsonl")))
    assert again["chunks_resumed"] == 0 and again["replies_judged_now"] == 32
    assert (tmp_path / "other.jsonl").read_bytes() == (tmp_path / "unchunked.jsonl").read_bytes()


def weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


@pytest.mark.slow
def test_dpo_killed_after_a_checkpoint_resumes_from_it_to_the_same_weights(tmp_path, sft_model, prompts):
    """Checkpoints every 3 of 12 steps; SIGKILL once the step-6 checkpoint is complete; the same command resumes
    from the newest complete checkpoint, trains only the steps left, and ends at the uninterrupted run's weights
    (tolerance 1e-6 absolute: the same CPU kernels, data order and RNG states, so in practice equal)."""
    pairs = tmp_path / "pairs.jsonl"
    write_jsonl(pairs, [{"id": r["id"], "prompt": r["prompt"], "chosen": f"A clear, helpful answer to {r['id']}.",
                         "rejected": "No.", "chosen_score": 5.0, "rejected_score": 1.0}
                        for r in read_jsonl(prompts, "prompt")[:16]], "pair")
    common = ["--preset", "tiny", "--model", str(sft_model), "--pairs", str(pairs), "--threads", "1",
              "--max-steps", "12", "--checkpoint-steps", "3", "--max-length", "256"]
    dpo = srlm("dpo", *common, "--out", str(tmp_path / "killed"))
    checkpoints = tmp_path / "killed.checkpoints"
    kill_once(dpo, lambda: (checkpoints / "checkpoint-6" / "trainer_state.json").is_file())
    assert not (tmp_path / "killed").exists()
    resumed = run(dpo)
    assert resumed["resumed_from_step"] in (6, 9) and resumed["steps"] == 12
    assert resumed["steps_trained_now"] == 12 - resumed["resumed_from_step"]  # the steps before the kill are kept
    assert not checkpoints.exists()
    whole = run(srlm("dpo", *common, "--out", str(tmp_path / "whole")))
    assert whole["resumed_from_step"] == 0 and whole["steps_trained_now"] == 12
    a, b = weights(tmp_path / "killed"), weights(tmp_path / "whole")
    assert a.keys() == b.keys()
    assert max(float((a[k].float() - b[k].float()).abs().max()) for k in a) <= 1e-6


@pytest.mark.slow
def test_prompt_generation_killed_after_two_rounds_replays_them_to_the_same_prompts(tmp_path, tiny_model):
    """Self-Instruct rounds depend on what earlier rounds accepted: the saved rounds are replayed (the same few-shot
    draws and filter decisions), only the rest is generated, and the prompts equal the uninterrupted run's."""
    common = ["--preset", "tiny", "--model", str(tiny_model), "--threads", "1", "--num-prompts", "40",
              "--requests-per-round", "8", "--max-rounds", "6"]
    prompts = srlm("prompts", *common, "--out", str(tmp_path / "killed.jsonl"))
    rounds = tmp_path / "killed.jsonl.rounds"
    kill_once(prompts, lambda: len(list(rounds.glob("round-*.json"))) >= 2)
    died_with = len(list(rounds.glob("round-*.json")))
    resumed = run(prompts)
    assert resumed["rounds_resumed"] == died_with >= 2 and not (tmp_path / "killed.jsonl.rounds").exists()
    whole = run(srlm("prompts", *common, "--out", str(tmp_path / "whole.jsonl")))
    assert whole["rounds_resumed"] == 0 and whole["proposed"] == resumed["proposed"]
    assert (tmp_path / "killed.jsonl").read_bytes() == (tmp_path / "whole.jsonl").read_bytes()


def test_progress_goes_to_the_volume_a_retried_pod_gets_back(tmp_path, monkeypatch):
    from srlm.resume import progress_dir

    assert progress_dir(tmp_path / "candidates") == Path(str(tmp_path / "candidates") + ".chunks")  # beside it
    monkeypatch.setenv("SRLM_PROGRESS_VOLUME", str(tmp_path / "cache"))  # the pipeline sets it on GPU tasks
    first = progress_dir("/tmp/outputs/run-1/sample/candidates")
    assert first.parent == tmp_path / "cache" / "srlm-progress" and first.name.endswith(".chunks")
    assert first == progress_dir("/tmp/outputs/run-1/sample/candidates")  # a retry of the task finds it
    assert first != progress_dir("/tmp/outputs/run-2/sample/candidates")
    assert progress_dir("/x/m", str(tmp_path / "models"), ".checkpoints").parent == tmp_path / "models" / "srlm-progress"
