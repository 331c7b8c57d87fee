"""``make bench``: throughput measured side by side in one run, written to ``bench.json``.

Each measurement runs in its own child process so its peak memory (max RSS) is its own.
- generation: the same requests batched vs one sequence at a time (tokens/s and the ratio);
- judging: rubric judgements per second with the judge's tiny settings, on the model after the
  bench's few SFT steps (it rarely reaches a score line, so judgements run to max_new_tokens);
- training: SFT and DPO seconds per optimizer step and peak memory;
- benchmark judging: AlpacaEval's pairwise method and MT-Bench grading with a local judge (requests/s;
  the logprob method needs a judge server: one request of one token per instruction);
- CPU numerics: SFT steps and batched generation on native vs portable kernels (``srlm.numerics``),
  one thread each, so the ratio is the cost of the pinned kernels alone;
- vLLM (where vllm is importable: `make bench-vllm`): the batched generation run again on vLLM
  (bf16 and float32) with the ratio to transformers, the engine start time, judging with prefix
  caching on vs off (judge prompts share the long rubric), and whether K-sharded generation
  (K = 3) is identical to K = 1 for both backends. Elsewhere these rows say why they were skipped.
The model is the locally built tiny one, so the figures compare code paths, not hardware.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _engine_peak_rss_mb() -> float:
    """The largest finished child process's peak RSS (vLLM's engine processes, once shut down)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def _child(fn: Callable[..., dict[str, Any]], args: tuple, queue: Any) -> None:
    try:
        result = fn(*args)
        result["peak_rss_mb"] = round(_peak_rss_mb(), 1)
        queue.put(result)
    except Exception as e:  # reported, not swallowed: the parent raises it
        queue.put({"error": f"{type(e).__name__}: {e}"})


def isolated(fn: Callable[..., dict[str, Any]], *args: Any, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``fn`` in a fresh process (with environment ``env``, default this one's) and return its result
    with its own peak RSS."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, args, queue))
    saved = dict(os.environ)
    try:
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        proc.start()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    result = queue.get()
    proc.join()
    if "error" in result:
        raise RuntimeError(f"{fn.__name__} failed: {result['error']}")
    return result


SHARDS = 3


def _sampling(n: int, max_new_tokens: int) -> dict[str, Any]:
    return {"n": n, "temperature": 0.7, "top_p": 0.9, "max_new_tokens": max_new_tokens, "seed": 0}


def _timed_run(gen: Any, prompts: list[str], n: int, max_new_tokens: int) -> tuple[list[Any], dict[str, Any]]:
    """Warm up, then generate ``prompts`` once; the output and its throughput."""
    from srlm.generation import GenerationStats

    gen.generate(prompts[:2], n=1, max_new_tokens=4)  # warm-up
    gen.stats = GenerationStats()
    out = gen.generate(prompts, **_sampling(n, max_new_tokens))
    s = gen.stats
    return out, {"sequences": s.completions, "new_tokens": s.new_tokens, "seconds": round(s.seconds, 3),
                 "tokens_per_second": round(s.tokens_per_second, 1),
                 "truncated_share": round(s.truncation()["truncated_share"], 3)}


def shards_identical(gen: Any, prompts: list[str], full: list[Any], n: int, max_new_tokens: int, shards: int = SHARDS) -> bool:
    """Whether the K shards of the same call, put together, are exactly ``full`` (the K = 1 output)."""
    parts = [gen.generate(prompts, **_sampling(n, max_new_tokens), shard=(k, shards)) for k in range(shards)]
    owners = [[p[i] for p in parts if p[i] is not None] for i in range(len(prompts))]
    return all(o == [texts] for o, texts in zip(owners, full))


def bench_generation(model: str, prompts: list[str], n: int, max_new_tokens: int, batch_size: int, threads: int,
                     check_shards: bool = False) -> dict[str, Any]:
    from srlm.generation import GenerationOptions
    from srlm.transformers_backend import TransformersGenerator

    gen = TransformersGenerator(model, GenerationOptions(batch_size=batch_size, threads=threads))
    full, result = _timed_run(gen, prompts, n, max_new_tokens)
    result["batch_size"] = batch_size
    if check_shards:
        result["shards_identical"] = shards_identical(gen, prompts, full, n, max_new_tokens)
    return result


def bench_vllm_generation(model: str, prompts: list[str], n: int, max_new_tokens: int, dtype: str) -> dict[str, Any]:
    from srlm.generation import GenerationOptions
    from srlm.vllm_backend import VLLMGenerator, close_engines

    gen = VLLMGenerator(model, GenerationOptions(backend="vllm", dtype=dtype))
    full, result = _timed_run(gen, prompts, n, max_new_tokens)
    result.update(dtype=dtype, engine_start_seconds=round(gen.start_seconds, 1),
                  shards_identical=shards_identical(gen, prompts, full, n, max_new_tokens))
    close_engines()
    result["engine_peak_rss_mb"] = round(_engine_peak_rss_mb(), 1)
    return result


def bench_vllm_judge(model: str, items: list[tuple[str, str]], prefix_caching: bool, dtype: str) -> dict[str, Any]:
    from srlm.backends import make_generator
    from srlm.judge import JudgeConfig, judge_pairs
    from srlm.vllm_backend import close_engines

    config = JudgeConfig.load("tiny", backend="vllm", dtype=dtype, prefix_caching=prefix_caching)
    gen = make_generator(model, config)
    gen.generate(["Hello"], n=1, max_new_tokens=4)  # warm-up that does not share the rubric prefix
    started = time.perf_counter()
    _, stats = judge_pairs(gen, items, config)
    seconds = time.perf_counter() - started
    close_engines()
    return {"prefix_caching": prefix_caching, "dtype": dtype, "judgements": stats.judgements, "seconds": round(seconds, 3),
            "judgements_per_second": round(stats.judgements / seconds, 2), "new_tokens": gen.stats.new_tokens,
            "parse_failure_rate": round(stats.parse_failure_rate, 3), "engine_peak_rss_mb": round(_engine_peak_rss_mb(), 1)}


def bench_judge(model: str, items: list[tuple[str, str]], threads: int) -> dict[str, Any]:
    from srlm.backends import make_generator
    from srlm.judge import JudgeConfig, judge_pairs

    config = JudgeConfig.load("tiny", backend="transformers", threads=threads)
    gen = make_generator(model, config)
    started = time.perf_counter()
    _, stats = judge_pairs(gen, items, config)
    seconds = time.perf_counter() - started
    return {"replies": stats.replies, "judgements": stats.judgements, "seconds": round(seconds, 3),
            "judgements_per_second": round(stats.judgements / seconds, 2), "parse_failure_rate": round(stats.parse_failure_rate, 3)}


def bench_benchmark_judges(model: str, items: list[tuple[str, str]], threads: int) -> dict[str, Any]:
    """Judge requests per second of the benchmarks' judging with a local (transformers) judge, after a warm-up,
    loading the judge included: AlpacaEval's pairwise method (two requests per instruction) and MT-Bench's 1-10 grading (one per
    turn)."""
    from srlm import alpaca_eval, mt_bench
    from srlm.backends import make_generator

    rows = [{"id": str(i), "instruction": prompt, "output": reply} for i, (prompt, reply) in enumerate(items)]
    answers = [reply[::-1] for _, reply in items]  # any other text of the same length
    config = alpaca_eval.AlpacaEvalConfig.load("tiny", backend="transformers", threads=threads)
    alpaca_eval.judge_against_references(config, model, rows[:1], answers[:1])  # warm-up: imports and first load out of the timings
    started = time.perf_counter()
    preferences, _, _ = alpaca_eval.judge_against_references(config, model, rows, answers)
    alpaca_seconds = time.perf_counter() - started
    grading = mt_bench.MTBenchConfig.load("tiny", backend="transformers", threads=threads)
    messages = [[{"role": "system", "content": "Grade the answer 1-10 as [[rating]]."},
                 {"role": "user", "content": f"[Question]\n{prompt}\n[Answer]\n{reply}"}] for prompt, reply in items]
    started = time.perf_counter()  # both timings include loading the judge
    judge = make_generator(model, grading)
    texts = judge.generate(messages, n=1, temperature=0.0, max_new_tokens=grading.judge_max_new_tokens, desc="grading")
    mt_seconds = time.perf_counter() - started
    judge.close()
    return {"alpaca_pairwise_requests": 2 * len(rows), "alpaca_pairwise_seconds": round(alpaca_seconds, 3),
            "alpaca_pairwise_requests_per_second": round(2 * len(rows) / alpaca_seconds, 2),
            "alpaca_pairwise_verdicts": sum(p == p for p in preferences),
            "mt_bench_requests": len(messages), "mt_bench_seconds": round(mt_seconds, 3),
            "mt_bench_requests_per_second": round(len(messages) / mt_seconds, 2),
            "mt_bench_ratings": sum(mt_bench.parse_rating(t[0]) is not None for t in texts)}


def bench_training(kind: str, model: str, data: dict[str, str], out: str, steps: int, threads: int) -> dict[str, Any]:
    from srlm import training

    if kind == "sft":
        config = training.SFTConfig.load("tiny", max_steps=steps, threads=threads, per_device_batch_size=8)
        metrics = training.run_sft(config, model, data["ift"], out, eft=data["eft"])
        batch = config.per_device_batch_size * config.gradient_accumulation_steps
    else:
        config = training.DPOConfig.load("tiny", max_steps=steps, threads=threads)
        metrics = training.run_dpo(config, model, data["pairs"], out)
        batch = config.per_device_batch_size * config.gradient_accumulation_steps
    train_seconds = metrics.get("train_seconds", metrics.get("seconds"))
    return {"steps": metrics.get("steps", steps), "batch_size": batch, "train_seconds": round(train_seconds, 3),
            "seconds_per_step": round(train_seconds / max(metrics.get("steps", steps), 1), 4)}


def bench_numerics(m0: str, data: dict[str, str], prompts: list[str], args: argparse.Namespace,
                   tmp_path: Path) -> dict[str, Any]:
    """The same SFT steps and batched generation on native and on portable CPU numerics, one thread each."""
    from srlm import numerics

    out: dict[str, Any] = {}
    for mode in numerics.MODES:
        env = numerics.child_environment(mode)
        sft = isolated(bench_training, "sft", m0, data, str(tmp_path / f"m1-{mode}"), args.numerics_steps, 1, env=env)
        gen = isolated(bench_generation, m0, prompts, args.n, args.max_new_tokens, args.batch_size, 1, env=env)
        out[mode] = {"sft_seconds_per_step": sft["seconds_per_step"], "sft_steps": sft["steps"],
                     "generation_tokens_per_second": gen["tokens_per_second"]}
    native, portable = out["native"], out["portable"]
    out["sft_slowdown"] = round(portable["sft_seconds_per_step"] / native["sft_seconds_per_step"], 2)
    out["generation_slowdown"] = round(native["generation_tokens_per_second"] / portable["generation_tokens_per_second"], 2)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench.json", help="where to write the results")
    parser.add_argument("--prompts", type=int, default=64, help="prompts in the batched generation run")
    parser.add_argument("--sequential-prompts", type=int, default=8, help="prompts in the one-at-a-time run")
    parser.add_argument("--n", type=int, default=4, help="samples per prompt")
    parser.add_argument("--batch-size", type=int, default=64, help="sequences per forward pass in the batched run")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the whole machine by default)")
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--numerics-steps", type=int, default=40, help="SFT steps per numerics mode (native vs portable)")
    parser.add_argument("--demo-runs", default="runs/demo", help="where `make demo` writes its runs (newest is reported)")
    parser.add_argument("--vllm-dtypes", default="bfloat16,float32", help="vLLM generation runs, one per dtype (first = judging's)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from srlm import seed_data, tiny_model
    from srlm.io import write_json, write_jsonl

    # The load average says whether other work shared the CPUs (torch with 2 threads slows down 8-40x then).
    machine = {"python": platform.python_version(), "cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()}
    results: dict[str, Any] = {"machine": machine, "settings": vars(args)}
    with tempfile.TemporaryDirectory(prefix="srlm-bench-") as tmp:
        tmp_path = Path(tmp)
        m0 = tmp_path / "m0"
        tiny_model.run(tiny_model.TinyModelConfig.load("tiny"), m0)
        seed = tmp_path / "seed"
        seed_data.run(seed_data.SeedConfig.load("tiny"), seed)
        prompts = (seed_data.ift_prompts(seed_data.bundled("ift")) * 4)[: args.prompts]

        print("generation: batched vs one sequence at a time ...", flush=True)
        batched = isolated(bench_generation, str(m0), prompts, args.n, args.max_new_tokens, args.batch_size, args.threads, True)
        # The naive loop: one sequence per forward pass (each prompt repeated n times, n=1 per request).
        one_by_one = [p for p in prompts[: args.sequential_prompts] for _ in range(args.n)]
        single = isolated(bench_generation, str(m0), one_by_one, 1, args.max_new_tokens, 1, args.threads)
        results["generation"] = {"batched": batched, "one_at_a_time": single,
                                 "speedup": round(batched["tokens_per_second"] / single["tokens_per_second"], 2)}

        print("training: SFT steps ...", flush=True)
        data = {"ift": str(seed / "ift.jsonl"), "eft": str(seed / "eft_train.jsonl")}
        results["sft"] = isolated(bench_training, "sft", str(m0), data, str(tmp_path / "m1"), args.train_steps, args.threads)

        print("judging ...", flush=True)
        eval_items = seed_data.bundled("eft_eval")
        items = [(item["prompt"], reply) for item in eval_items for reply in item["replies"]][:32]
        results["judge"] = isolated(bench_judge, str(tmp_path / "m1"), items, args.threads)
        print("benchmark judging: AlpacaEval pairwise, MT-Bench grading ...", flush=True)
        results["benchmark_judges"] = isolated(bench_benchmark_judges, str(tmp_path / "m1"), items, args.threads)

        print("training: DPO steps ...", flush=True)
        pairs = [{"prompt": r["messages"][0]["content"], "chosen": r["messages"][-1]["content"],
                  "rejected": r["messages"][-1]["content"][:40], "chosen_score": 5.0, "rejected_score": 1.0}
                 for r in seed_data.bundled("ift")]
        write_jsonl(tmp_path / "pairs.jsonl", pairs, "pair")
        results["dpo"] = isolated(bench_training, "dpo", str(tmp_path / "m1"), {"pairs": str(tmp_path / "pairs.jsonl")},
                                  str(tmp_path / "m2"), args.train_steps, args.threads)

        print("CPU numerics: native vs portable kernels, one thread each ...", flush=True)
        results["numerics"] = bench_numerics(str(m0), data, prompts, args, tmp_path)

        results["vllm"] = run_vllm_benches(args, str(m0), str(tmp_path / "m1"), prompts, items, results)

    demo = latest_demo_summary(Path(args.demo_runs))
    if demo:
        results["pipeline_demo"] = demo
    machine["load_average_at_end"] = os.getloadavg()
    write_json(args.out, results)
    print(summary(results))
    print(f"\nwritten to {args.out}")
    return 0


def run_vllm_benches(args: argparse.Namespace, m0: str, m1: str, prompts: list[str], items: list[tuple[str, str]],
                     results: dict[str, Any]) -> dict[str, Any]:
    """vLLM vs transformers on the same prompts and model, judging with prefix caching on/off, shards."""
    from srlm.backends import vllm_usable

    usable, why = vllm_usable()
    if not usable:
        print(f"vLLM rows skipped: {why}; `make bench-vllm` runs them in .venv-vllm", flush=True)
        return {"skipped": why}
    dtypes = [d.strip() for d in args.vllm_dtypes.split(",") if d.strip()]
    out: dict[str, Any] = {"why": why, "omp_threads_bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto")}
    batched = results["generation"]["batched"]
    for dtype in dtypes:
        print(f"generation: vLLM {dtype} ...", flush=True)
        run = isolated(bench_vllm_generation, m0, prompts, args.n, args.max_new_tokens, dtype)
        run["vs_transformers_batched"] = round(run["tokens_per_second"] / batched["tokens_per_second"], 2)
        out[f"generation_{dtype}"] = run
    for caching in (True, False):
        print(f"judging: vLLM, prefix caching {'on' if caching else 'off'} ...", flush=True)
        out[f"judge_prefix_caching_{'on' if caching else 'off'}"] = isolated(bench_vllm_judge, m1, items, caching, dtypes[0])
    on, off = out["judge_prefix_caching_on"], out["judge_prefix_caching_off"]
    out["judge_prefix_caching_speedup"] = round(on["judgements_per_second"] / off["judgements_per_second"], 2)
    out["judge_vs_transformers"] = round(on["judgements_per_second"] / results["judge"]["judgements_per_second"], 2)
    out["shards_identical"] = {"transformers": batched["shards_identical"],
                               **{f"vllm_{d}": out[f"generation_{d}"]["shards_identical"] for d in dtypes}}
    return out


def latest_demo_summary(runs: Path) -> dict[str, Any] | None:
    """Per-stage wall times and per-task overhead of the newest `make demo` run, if there is one."""
    found = sorted(runs.glob("*/summary.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        return None
    s = json.loads(found[-1].read_text(encoding="utf-8"))
    keys = ("run_dir", "pipeline_seconds", "task_overhead_seconds_mean", "stages")
    return {k: s.get(k) for k in keys}


def summary(r: dict[str, Any]) -> str:
    g = r["generation"]
    rows = [
        (f"generation, batched ({g['batched']['truncated_share']:.0%} of replies cut at max_new_tokens)",
         f"{g['batched']['tokens_per_second']:.0f} tok/s", f"{g['batched']['peak_rss_mb']:.0f} MB"),
        ("generation, one at a time", f"{g['one_at_a_time']['tokens_per_second']:.0f} tok/s", f"{g['one_at_a_time']['peak_rss_mb']:.0f} MB"),
        ("  batched / one at a time", f"{g['speedup']:.1f}x", ""),
        (f"judging ({r['judge']['judgements']} judgements, parse rate {1 - r['judge']['parse_failure_rate']:.0%})", f"{r['judge']['judgements_per_second']:.1f} judgements/s", f"{r['judge']['peak_rss_mb']:.0f} MB"),
        ("AlpacaEval judging, pairwise (local judge, both orders)",
         f"{r['benchmark_judges']['alpaca_pairwise_requests_per_second']:.1f} requests/s",
         f"{r['benchmark_judges']['peak_rss_mb']:.0f} MB"),
        ("MT-Bench grading (local judge)", f"{r['benchmark_judges']['mt_bench_requests_per_second']:.1f} requests/s", ""),
        (f"SFT step (batch {r['sft']['batch_size']})", f"{r['sft']['seconds_per_step']:.3f} s", f"{r['sft']['peak_rss_mb']:.0f} MB"),
        (f"DPO step (batch {r['dpo']['batch_size']})", f"{r['dpo']['seconds_per_step']:.3f} s", f"{r['dpo']['peak_rss_mb']:.0f} MB"),
    ]
    n = r["numerics"]
    rows += [
        (f"SFT step, native / portable numerics (1 thread, {n['native']['sft_steps']} steps)",
         f"{n['native']['sft_seconds_per_step']:.3f} / {n['portable']['sft_seconds_per_step']:.3f} s", ""),
        ("  portable slowdown, SFT", f"{n['sft_slowdown']:.2f}x", ""),
        ("generation, native / portable numerics (1 thread)",
         f"{n['native']['generation_tokens_per_second']:.0f} / {n['portable']['generation_tokens_per_second']:.0f} tok/s", ""),
        ("  portable slowdown, generation", f"{n['generation_slowdown']:.2f}x", ""),
    ]
    rows += vllm_rows(r)
    demo = r.get("pipeline_demo")
    if demo:
        rows.append((f"tiny 3-iteration pipeline (make demo, {demo['run_dir']})", f"{demo['pipeline_seconds']:.0f} s", ""))
        rows.append(("  mean KFP task overhead", f"{demo['task_overhead_seconds_mean']} s", ""))
        rows += [(f"  {stage} x{int(t['tasks'])}", f"{t['stage_seconds']:.1f} s", "") for stage, t in demo["stages"].items()]
    else:
        rows.append(("tiny pipeline", "run `make demo` first", ""))
    width = max(len(a) for a, _, _ in rows)
    lines = [f"{'measurement':<{width}}  {'throughput':>22}  {'peak RSS':>9}"]
    lines += [f"{a:<{width}}  {b:>22}  {c:>9}" for a, b, c in rows]
    return "\n".join(lines)


def vllm_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    v = r.get("vllm") or {}
    if "skipped" in v:
        return [("vLLM rows", "skipped", ""), (f"  ({v['skipped']})", "", "")]
    rows = []
    for key, run in v.items():
        if key.startswith("generation_"):
            rows.append((f"generation, vLLM {run['dtype']} (engine start {run['engine_start_seconds']:.0f} s)",
                         f"{run['tokens_per_second']:.0f} tok/s", f"{run['engine_peak_rss_mb']:.0f} MB"))
            rows.append((f"  vLLM {run['dtype']} / transformers batched", f"{run['vs_transformers_batched']:.1f}x", ""))
    for state in ("on", "off"):
        run = v[f"judge_prefix_caching_{state}"]
        rows.append((f"judging, vLLM, prefix caching {state}", f"{run['judgements_per_second']:.1f} judgements/s",
                     f"{run['engine_peak_rss_mb']:.0f} MB"))
    rows.append(("  prefix caching on / off", f"{v['judge_prefix_caching_speedup']:.2f}x", ""))
    rows.append(("  vLLM (caching on) / transformers judging", f"{v['judge_vs_transformers']:.1f}x", ""))
    same = ", ".join(f"{k} {'yes' if ok else 'NO'}" for k, ok in v["shards_identical"].items())
    rows.append((f"K={SHARDS} shards identical to K=1", same, ""))
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
