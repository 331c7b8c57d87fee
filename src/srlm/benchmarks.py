"""The benchmarks the evaluate step can run on M(t) (``evaluation.benchmarks``): one entry each.

An entry says which settings key configures it, how it runs into its own directory, which of its
numbers are headline metrics (``summary.json`` as ``<benchmark>_<metric>``, hence the model
version's ``metric.*`` tags the promotion rule reads) and how its report section is drawn.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from srlm.errors import SrlmError
from srlm.io import read_jsonl


@dataclasses.dataclass(frozen=True)
class Benchmark:
    """One benchmark: module ``srlm.<name>`` (also its settings key), which has ``run`` (config, model, out[, local
    judge]) -> metrics, ``check_inputs(config)`` (reads its files as the run will) and ``report(metrics[, rows],
    level=)``; ``rows``: the file of its run's directory the report's examples come from."""

    name: str
    title: str
    run: str
    judged: bool  # needs a judge: its server (judge_base_url) or, without one, the evaluation's fixed judge model
    headline: Callable[[Mapping[str, Any]], dict[str, float | None]]
    rows: str | None = None

    @property
    def module(self) -> Any:
        return importlib.import_module(f"srlm.{self.name}")

    def run_on(self, config: Any, model: str, out: Path, judge: str | None) -> dict[str, Any]:
        run = getattr(self.module, self.run)
        return run(config, model, out, judge) if self.judged else run(config, model, out)

    def check(self, config: Any) -> None:
        self.module.check_inputs(config)

    def section(self, metrics: Mapping[str, Any], out: Path, level: int) -> str:
        """Its Markdown report at heading ``level`` (the evaluation report's section)."""
        rows = (read_jsonl(out / self.rows),) if self.rows else ()
        return self.module.report(metrics, *rows, level=level)


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


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("alpaca_eval", "AlpacaEval-style win rate", "run_alpaca_eval", True, _alpaca_eval_headline,
              "judgements.jsonl"),
    Benchmark("mt_bench", "MT-Bench", "run_mt_bench", True, _mt_bench_headline, "judgements.jsonl"),
    Benchmark("ifeval", "IFEval", "run_ifeval", False, _ifeval_headline),
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
        results[name] = bench.run_on(config, model, out / name, judge)
    return results


def headline_metrics(results: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """``<benchmark>_<metric>`` for every headline number a benchmark produced (None: left out)."""
    summary = {}
    for name, metrics in results.items():
        for key, value in BENCHMARKS[name].headline(metrics).items():
            if value is not None:
                summary[f"{name}_{key}"] = float(value)
    return summary
