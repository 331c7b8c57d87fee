"""The vLLM tier: the REAL vLLM engine (CPU build) on the tiny SFT'd model, through the stages.

Runs in .venv-vllm (`make test-vllm`); in the main venv vLLM is not importable and every test
here is skipped with that reason. One in-process engine and one OpenAI-compatible vLLM server
per session (each takes 20-40 s to start). Both run in float32, as the transformers backend does
on CPU, so the backends can be compared token for token; the bench measures bf16.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

if importlib.util.find_spec("vllm") is None:
    pytest.skip("vllm is not importable in this venv: `make test-vllm` runs these tests in .venv-vllm", allow_module_level=True)

from srlm import judge, sampling  # noqa: E402
from srlm.backends import make_generator  # noqa: E402
from srlm.generation import GenerationOptions, prompt_token_ids  # noqa: E402
from srlm.io import read_jsonl, write_jsonl  # noqa: E402
from srlm.transformers_backend import TransformersGenerator  # noqa: E402
from srlm.vllm_backend import VLLMGenerator  # noqa: E402

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
ENGINE = {"backend": "vllm", "dtype": "float32", "threads": 1}
PROMPTS = [
    "Give me three tips for staying focused while studying.",
    "What is a prime number?",
    "Write a short poem about the sea.",
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Why is the sky blue?"}],
    "Explain recursion to a child.",
    "List two uses of a paperclip.",
    "How do plants make food?",
]
SAMPLE = {"n": 3, "temperature": 0.8, "top_p": 0.9, "max_new_tokens": 40, "seed": 11}


def agreement(a: list, b: list) -> float:
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)


@pytest.fixture(scope="module")
def vllm_gen(sft_model) -> VLLMGenerator:
    gen = make_generator(sft_model, GenerationOptions(**ENGINE))
    assert isinstance(gen, VLLMGenerator)
    return gen


@pytest.fixture(scope="module")
def hf_gen(sft_model) -> TransformersGenerator:
    return TransformersGenerator(sft_model, GenerationOptions(backend="transformers", dtype="float32", threads=1, batch_size=16))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_server(sft_model, tmp_path_factory):
    """`python -m vllm.entrypoints.openai.api_server` on 127.0.0.1, serving the model under its path."""
    port, log_path = free_port(), tmp_path_factory.mktemp("vllm-server") / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    # --no-enable-chunked-prefill: seeded requests with chunked prefill kill a CPU engine (see vllm_backend)
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(sft_model), "--host", "127.0.0.1",
           "--port", str(port), "--dtype", "float32", "--enforce-eager", "--no-enable-chunked-prefill", "--seed", "0"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_until_ready(proc, url, log_path, timeout=240)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_until_ready(proc: subprocess.Popen, url: str, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"vLLM server not ready after {timeout} s:\n{log_path.read_text()[-3000:]}")


# --------------------------------------------------------------------------- in-process engine


def test_prompt_token_ids_equal_the_transformers_backend(vllm_gen, hf_gen):
    for prompt in PROMPTS:
        ids = vllm_gen.prompt_token_ids(prompt)
        text = hf_gen.render(prompt)
        assert ids == hf_gen.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ids.count(hf_gen.tokenizer.bos_token_id) == 1 and ids[0] == hf_gen.tokenizer.bos_token_id


def test_one_engine_per_process(sft_model, vllm_gen):
    again = make_generator(sft_model, GenerationOptions(**ENGINE, seed=5, batch_size=3))
    assert again.llm is vllm_gen.llm and again.stats is not vllm_gen.stats
    assert vllm_gen.start_seconds > 0


def test_switching_models_leaves_one_engine_and_returns_the_first_ones_memory(tiny_model, sft_model, vllm_gen):
    """A stage that loads model A, releases it and loads model B (evaluation: M(t), then M(t-1)) ends with one
    engine: A's engine processes are gone with their memory. On a GPU two engines at 0.9 utilization cannot start."""
    import psutil

    from srlm import vllm_backend

    me = psutil.Process()

    def engine_processes() -> set[int]:
        return {p.pid for p in me.children(recursive=True) if p.is_running() and p.status() != psutil.STATUS_ZOMBIE}

    before = engine_processes()
    a = make_generator(tiny_model, GenerationOptions(**ENGINE))  # another model: the other engine goes first
    assert len(vllm_backend._ENGINES) == 1 and a.generate(["Hi"], n=1, max_new_tokens=2)[0]
    a_processes = engine_processes() - before
    a_memory = sum(psutil.Process(pid).memory_info().rss for pid in a_processes)
    assert a_processes and a_memory > 100 * 2**20  # the engine core lives in its own process here
    a.close()
    assert not vllm_backend._ENGINES
    assert not a_processes & engine_processes(), "the released engine's processes still run"
    b = make_generator(sft_model, GenerationOptions(**ENGINE, seed=3))
    assert len(vllm_backend._ENGINES) == 1 and b.generate(["Hi"], n=1, max_new_tokens=2)[0]
    assert vllm_gen.generate(["Hi"], n=1, max_new_tokens=2)[0]  # a generator whose engine was closed starts it again


def judge_prompts(count: int = 12) -> list[str]:
    """Rubric prompts: the tiny judge ends most of them with a score line and EOS (stop handling)."""
    from srlm import seed_data

    items = [(item["prompt"], reply) for item in seed_data.bundled("eft_eval") for reply in item["replies"]]
    return [judge.fill_template(judge.DEFAULT_TEMPLATE, a, b) for a, b in items[:count]]


def test_engine_settings_on_cpu(monkeypatch, tmp_path):
    from srlm import SrlmError
    from srlm.vllm_backend import engine_settings

    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    settings = engine_settings(GenerationOptions(backend="vllm", prefix_caching=False, max_model_len=512))
    assert settings["enforce_eager"] and not settings["enable_prefix_caching"] and settings["max_model_len"] == 512
    assert settings["enable_chunked_prefill"] is False  # seeded requests + chunked prefill kill the CPU engine
    assert settings["kv_cache_memory_bytes"] == 2**30
    assert engine_settings(GenerationOptions(kv_cache_gib=0.5))["kv_cache_memory_bytes"] == 2**29
    with pytest.raises(SrlmError, match="model directory not found"):
        VLLMGenerator(tmp_path / "missing", GenerationOptions(**ENGINE))


def test_greedy_matches_transformers(vllm_gen, hf_gen):
    """Temperature 0: n identical replies, cut at EOS, stripped; token for token what transformers says,
    with the same token and stop counts."""
    prompts = judge_prompts() + PROMPTS
    kwargs = {"n": 3, "temperature": 0.0, "max_new_tokens": 128}
    v_before, h_before = dataclasses.replace(vllm_gen.stats), dataclasses.replace(hf_gen.stats)
    ours, theirs = vllm_gen.generate(prompts, **kwargs), hf_gen.generate(prompts, **kwargs)
    assert [len(r) for r in ours] == [3] * len(prompts)
    assert all(len(set(r)) == 1 for r in ours)
    assert all(t == t.strip() and "<|end|>" not in t and "<|pad|>" not in t for r in ours for t in r)
    assert agreement(ours, theirs) >= 0.85, list(zip(ours, theirs, strict=True))
    v = {k: getattr(vllm_gen.stats, k) - getattr(v_before, k) for k in ("prompts", "completions", "new_tokens", "stopped")}
    h = {k: getattr(hf_gen.stats, k) - getattr(h_before, k) for k in v}
    assert v["stopped"] > 0, "no reply ended at EOS: stop handling is not exercised"
    assert v["prompts"] == h["prompts"] and v["completions"] == h["completions"] == 3 * len(prompts)
    if ours == theirs:
        assert v == h


def test_seeds_are_per_prompt(vllm_gen):
    """Same seed, same replies; a prompt's replies depend on its global index and the seed only."""
    full = vllm_gen.generate(PROMPTS, **SAMPLE)
    assert [len(r) for r in full] == [3] * len(PROMPTS)
    assert vllm_gen.generate(PROMPTS, **SAMPLE) == full
    assert vllm_gen.generate(PROMPTS, **{**SAMPLE, "seed": 12}) != full
    assert len(set(full[0])) > 1  # n samples differ from each other
    alone = vllm_gen.generate(PROMPTS[:5], **SAMPLE, shard=(4, 5))  # prompt 4 in a batch of its own
    assert alone[4] == full[4] and alone[:4] == [None] * 4


def test_seeded_batch_beyond_one_step_budget(vllm_gen):
    """More seeded prompt tokens than one engine step takes (4096 on CPU): scheduled over several
    steps, still reproducible and shard invariant (chunked prefill would crash the CPU engine here)."""
    prompts = judge_prompts(24)  # ~24 x 3 x 400 prompt tokens
    kwargs = {"n": 3, "temperature": 0.7, "top_p": 0.9, "max_new_tokens": 8, "seed": 2}
    full = vllm_gen.generate(prompts, **kwargs)
    assert [len(r) for r in full] == [3] * len(prompts)
    parts = [vllm_gen.generate(prompts, **kwargs, shard=(k, 2)) for k in range(2)]
    assert [parts[i % 2][i] for i in range(len(prompts))] == full


@pytest.mark.parametrize("shards", [2, 3])
def test_shards_union_equals_unsharded(vllm_gen, shards):
    full = vllm_gen.generate(PROMPTS, **SAMPLE)
    parts = [vllm_gen.generate(PROMPTS, **SAMPLE, shard=(k, shards)) for k in range(shards)]
    for i, replies in enumerate(full):
        assert [p[i] for p in parts if p[i] is not None] == [replies]
        assert parts[i % shards][i] is not None


# --------------------------------------------------------------------------- the stages


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    write_jsonl(path, [{"id": f"q{i}", "prompt": p} for i, p in enumerate(PROMPTS) if isinstance(p, str)], "prompt")
    return path


def run_sampling(backend_settings: dict, model: Path, prompts: Path, out: Path, **overrides) -> tuple[dict, list[dict]]:
    config = sampling.SamplingConfig.load("tiny", **{**backend_settings, "n": 4, "max_new_tokens": 40, **overrides})
    stats = sampling.run(config, model, prompts, out)
    return stats, read_jsonl(out)


def test_sampling_stage_like_transformers(sft_model, prompts_file, tmp_path):
    hf = {"backend": "transformers", "dtype": "float32", "threads": 1}
    v_stats, v_rows = run_sampling(ENGINE, sft_model, prompts_file, tmp_path / "v.jsonl")
    h_stats, h_rows = run_sampling(hf, sft_model, prompts_file, tmp_path / "h.jsonl")
    assert [(r["id"], r["prompt"], len(r["replies"])) for r in v_rows] == [(r["id"], r["prompt"], 4) for r in h_rows]
    assert set(v_stats) == set(h_stats) and v_stats["prompts"] == h_stats["prompts"] == 6
    assert v_stats["replies"] == h_stats["replies"] == 24
    assert all(isinstance(t, str) and t == t.strip() and "<|end|>" not in t for r in v_rows for t in r["replies"])
    # greedy through the stage: the same candidates as the transformers backend
    _, v_greedy = run_sampling(ENGINE, sft_model, prompts_file, tmp_path / "vg.jsonl", temperature=0.0)
    _, h_greedy = run_sampling(hf, sft_model, prompts_file, tmp_path / "hg.jsonl", temperature=0.0)
    assert agreement([r["replies"] for r in v_greedy], [r["replies"] for r in h_greedy]) >= 0.8


def test_judging_stage_like_transformers(sft_model, prompts_file, tmp_path):
    _, rows = run_sampling(ENGINE, sft_model, prompts_file, tmp_path / "candidates.jsonl", n=2)
    results = {}
    for name, settings in {"vllm": ENGINE, "transformers": {"backend": "transformers", "dtype": "float32", "threads": 1}}.items():
        config = judge.JudgeConfig.load("tiny", **settings, samples=2, temperature=0.0)
        stats = judge.run(config, sft_model, tmp_path / "candidates.jsonl", tmp_path / f"judged-{name}.jsonl")
        results[name] = (stats, read_jsonl(tmp_path / f"judged-{name}.jsonl"))
    (v_stats, v_rows), (h_stats, h_rows) = results["vllm"], results["transformers"]
    assert v_stats["replies"] == h_stats["replies"] == 12 and v_stats["judgements"] == 24
    assert v_stats["unscored_replies"] < 12  # the tiny judge reaches its score line
    assert [r["id"] for r in v_rows] == [r["id"] for r in rows]
    for v, h in zip(v_rows, h_rows, strict=True):
        assert [set(x) for x in v["replies"]] == [set(x) for x in h["replies"]]
        assert all(len(x["judge_outputs"]) == 2 and len(set(x["judge_outputs"])) == 1 for x in v["replies"])
    v_out = [x["judge_outputs"] for r in v_rows for x in r["replies"]]
    h_out = [x["judge_outputs"] for r in h_rows for x in r["replies"]]
    assert agreement(v_out, h_out) >= 0.75


# --------------------------------------------------------------------------- OpenAI backend on a vLLM server


def test_server_renders_the_same_prompt_token_ids(vllm_server, sft_model, vllm_gen):
    body = {"model": str(sft_model), "messages": PROMPTS[3], "max_tokens": 4, "temperature": 0.0, "return_token_ids": True}
    request = urllib.request.Request(f"{vllm_server}/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.loads(response.read())
    assert answer["prompt_token_ids"] == prompt_token_ids(vllm_gen.tokenizer, PROMPTS[3])


def test_openai_backend_against_vllm_server(vllm_server, sft_model, vllm_gen):
    gen = make_generator(sft_model, GenerationOptions(backend="openai", base_url=vllm_server, concurrency=4))
    out = gen.generate(PROMPTS, **SAMPLE)
    assert [len(r) for r in out] == [3] * len(PROMPTS)
    assert gen.generate(PROMPTS, **SAMPLE) == out  # per-request seeds reproduce over HTTP
    parts = [gen.generate(PROMPTS, **SAMPLE, shard=(k, 3)) for k in range(3)]
    assert [next(p[i] for p in parts if p[i] is not None) for i in range(len(PROMPTS))] == out
    greedy = gen.generate(PROMPTS, n=2, temperature=0.0, max_new_tokens=48)
    assert all(len(r) == 2 and r[0] == r[1] for r in greedy)
    assert gen.stats.new_tokens > 0 and gen.stats.completions == 3 * 7 * 2 + 3 * 7 + 2 * 7
    many = gen.generate(judge_prompts(24), n=3, temperature=0.7, max_new_tokens=8, seed=2)  # beyond one step's budget
    assert [len(r) for r in many] == [3] * 24
    # Same engine, dtype, template and seeds as the in-process backend: the same replies.
    assert agreement(out, vllm_gen.generate(PROMPTS, **SAMPLE)) >= 0.85


def test_sampling_stage_over_openai(vllm_server, sft_model, prompts_file, tmp_path):
    settings = {"backend": "openai", "base_url": vllm_server}
    stats, rows = run_sampling(settings, sft_model, prompts_file, tmp_path / "o.jsonl")
    assert stats["prompts"] == 6 and stats["replies"] == 24 and all(len(r["replies"]) == 4 for r in rows)


def test_alpaca_eval_logprob_judge_against_vllm_server(vllm_server, sft_model, tmp_path):
    """AlpacaEval's one-token logprob judge against a real vLLM server (it returns top_logprobs): every request
    carries logprobs and its first token's alternatives come back; the tiny judge rarely puts m or M among its
    top 20, so a preference exists only where it does, and every other instruction is counted as a failure."""
    import json

    from srlm.alpaca_eval import AlpacaEvalConfig, preference_from_logprobs, run_alpaca_eval

    instructions = [p for p in PROMPTS if isinstance(p, str)]
    references = tmp_path / "references.jsonl"
    references.write_text("".join(json.dumps({"instruction": p, "output": "A short, clear answer."}) + "\n"
                                  for p in instructions))
    config = AlpacaEvalConfig.load("tiny", references=str(references), backend="openai", base_url=vllm_server,
                                   judge_base_url=vllm_server, judge_model=str(sft_model), judge_top_logprobs=20,
                                   max_new_tokens=16, bootstrap=50)
    metrics = run_alpaca_eval(config, sft_model, tmp_path / "out")
    assert metrics["method"] == "logprob" and metrics["instructions"] == len(instructions)
    rows = [json.loads(line) for line in (tmp_path / "out" / "judgements.jsonl").read_text().splitlines()]
    assert all(len(r["top_logprobs"]) == 20 for r in rows)  # the server answered with the alternatives asked for
    expected = [preference_from_logprobs(r["top_logprobs"], r["model_shown_first"]) for r in rows]
    assert [r["preference"] for r in rows] == [None if p != p else p for p in expected]
    assert metrics["judged"] == sum(p == p for p in expected)
