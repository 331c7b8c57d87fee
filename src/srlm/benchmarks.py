"""The benchmarks the evaluate step can run on M(t) (``evaluation.benchmarks``): one entry each.

An entry says which settings key configures it, how it runs into its own directory, which of its
numbers are headline metrics (``summary.json`` as ``<benchmark>_<metric>``, hence the model
version's ``metric.*`` tags the promotion rule reads) and how its report section is drawn.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from srlm.errors import SrlmError
from srlm.io import read_jsonl


@dataclasses.dataclass(frozen=True)
class Benchmark:
    name: str  # also the settings key of its config in the evaluation group
    title: str
    run: Callable[[Any, str, Path, str | None], dict[str, Any]]  # (config, model, out, local judge) -> metrics
    headline: Callable[[Mapping[str, Any]], dict[str, float | None]]
    section: Callable[[Path, int], str]  # (its directory, heading level) -> Markdown
    judged: bool  # needs a judge: its server (judge_base_url) or, without one, the evaluation's fixed judge model
    check: Callable[[Any], None]  # reads its input files as its run will (validation, before any GPU work)


def _run_alpaca_eval(config: Any, model: str, out: Path, judge: str | None) -> dict[str, Any]:
    from srlm.alpaca_eval import run_alpaca_eval

    return run_alpaca_eval(config, model, out, judge)


def _run_mt_bench(config: Any, model: str, out: Path, judge: str | None) -> dict[str, Any]:
    from srlm.mt_bench import run_mt_bench

    return run_mt_bench(config, model, out, judge)


def _run_ifeval(config: Any, model: str, out: Path, judge: str | None) -> dict[str, Any]:
    from srlm.ifeval import run_ifeval

    return run_ifeval(config, model, out)


def _alpaca_eval_headline(m: Mapping[str, Any]) -> dict[str, float | None]:
    failures = m["judge_failures"] / m["instructions"] if m.get("instructions") else None
    rates = {}
    for name in ("lc_win_rate", "win_rate", "discrete_win_rate"):
        low, high = m.get(f"{name}_ci") or (None, None)
        rates.update({name: m.get(name), f"{name}_low": low, f"{name}_high": high})
    return {**rates, "mean_length": m.get("mean_length"), "judge_failure_rate": failures,
            "position_consistency": m.get("position_consistency")}


def _mt_bench_headline(m: Mapping[str, Any]) -> dict[str, float | None]:
    return {"score": m.get("score"), "score_turn_1": m.get("score_turn_1"), "score_turn_2": m.get("score_turn_2"),
            "parse_failure_rate": m.get("parse_failure_rate"),
            **{f"category_{re.sub(r'[^0-9A-Za-z]+', '_', c).lower()}": s for c, s in (m.get("by_category") or {}).items()}}


def _ifeval_headline(m: Mapping[str, Any]) -> dict[str, float | None]:
    return {"prompt_strict": m.get("prompt_level_strict_accuracy"), "prompt_loose": m.get("prompt_level_loose_accuracy"),
            "instruction_strict": m.get("instruction_level_strict_accuracy"),
            "instruction_loose": m.get("instruction_level_loose_accuracy"), "checker_errors": m.get("checker_errors")}


def _check_alpaca_eval(config: Any) -> None:
    from srlm.alpaca_eval import load_references

    load_references(config.references, config.max_instructions)


def _check_mt_bench(config: Any) -> None:
    from srlm import mt_bench

    mt_bench.load_questions(config.questions, config.max_questions)
    mt_bench.load_judge_prompts(config.judge_prompts)
    mt_bench.load_references(config.references)


def _check_ifeval(config: Any) -> None:
    from srlm.ifeval import load_prompts

    load_prompts(config.prompts, config.max_prompts)


def _metrics(out: Path) -> dict[str, Any]:
    import json

    return json.loads((out / "metrics.json").read_text(encoding="utf-8"))


def _alpaca_eval_section(out: Path, level: int) -> str:
    from srlm.alpaca_eval import report

    return report(_metrics(out), read_jsonl(out / "judgements.jsonl"), level=level)


def _mt_bench_section(out: Path, level: int) -> str:
    from srlm.mt_bench import report

    return report(_metrics(out), read_jsonl(out / "judgements.jsonl"), level=level)


def _ifeval_section(out: Path, level: int) -> str:
    from srlm.ifeval import report

    return report(_metrics(out), level=level)


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("alpaca_eval", "AlpacaEval-style win rate", _run_alpaca_eval, _alpaca_eval_headline,
              _alpaca_eval_section, judged=True, check=_check_alpaca_eval),
    Benchmark("mt_bench", "MT-Bench", _run_mt_bench, _mt_bench_headline, _mt_bench_section, judged=True,
              check=_check_mt_bench),
    Benchmark("ifeval", "IFEval", _run_ifeval, _ifeval_headline, _ifeval_section, judged=False, check=_check_ifeval),
)}


def check_benchmarks(names: Any) -> list[str]:
    """``evaluation.benchmarks`` as a list of known names, in the order given (each at most once)."""
    if names in (None, "", []):
        return []
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise SrlmError(f"evaluation.benchmarks: expected a list of benchmark names ({', '.join(BENCHMARKS)}), "
                        f"got {names!r}")
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise SrlmError(f"evaluation.benchmarks: unknown benchmark(s) {unknown}; known: {', '.join(BENCHMARKS)}")
    if len(set(names)) != len(names):
        raise SrlmError(f"evaluation.benchmarks: {list(names)} names a benchmark twice")
    return list(names)


def check_files(name: str, config: Any) -> None:
    """Read the benchmark's input files as its run would (SrlmError naming the file and record)."""
    BENCHMARKS[name].check(config)


def benchmark_of_metric(metric: str) -> str | None:
    """The benchmark a summary key such as ``alpaca_eval_lc_win_rate`` comes from (None: not a benchmark's)."""
    return next((name for name in BENCHMARKS if metric.startswith(name + "_") and len(metric) > len(name) + 1), None)


def run_benchmarks(names: Sequence[str], configs: Mapping[str, Any], model: str, judge_model: str | None,
                   out: Path) -> dict[str, dict[str, Any]]:
    """Run each named benchmark on ``model`` into ``out/<name>/``; its metrics by name. A judged benchmark
    without a judge server is judged by ``judge_model`` (the evaluation's fixed judge)."""
    results = {}
    for name in names:
        bench = BENCHMARKS[name]
        config = configs[name]
        judge = judge_model if bench.judged and not getattr(config, "judge_base_url", "") else None
        results[name] = bench.run(config, model, out / name, judge)
    return results


def headline_metrics(results: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """``<benchmark>_<metric>`` for every headline number a benchmark produced (None: left out)."""
    summary = {}
    for name, metrics in results.items():
        for key, value in BENCHMARKS[name].headline(metrics).items():
            if value is not None:
                summary[f"{name}_{key}"] = float(value)
    return summary
