"""Proof of learning: the compiled pipeline on the checkable testbed, against a random-judge control.

    python -m pipelines.testbed [--seed 0] [--run-dir runs/testbed/<time>]      (what ``make testbed`` runs)

Runs the compiled tiny pipeline twice with kfp.local, side by side, on the testbed (``srlm.testbed``:
one short sentence about a topic under one checkable constraint): once as the method says (the
model judges its own candidates), once with ``judging.judge.scorer=random`` (the control: same
data, same training, scores drawn at random). One process each, one torch thread per task, so the
two fill two cores. Then prints one table: per M(t), the share of its answers to held-out prompts
that satisfy their constraint (with the standard error over prompts), its judge's accuracy
against the verifier, the round's pairs and how the verifier orders them, the mean answer
length; and the gain M1 -> M<last> against the control's. Each run keeps its MLflow store in its
directory (``mlflow ui --backend-store-uri sqlite:///<run dir>/<arm>/mlflow.db``); the table is
also written to ``testbed.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from pipelines import run_local
from srlm import presets
from srlm.stages import GROUPS

ROOT = Path(__file__).resolve().parent.parent

# Where each group keeps its seed (one --seed moves them all).
SEEDED = {"base_model": ["tiny"], "data": ["testbed"], "sampling": ["candidates"], "judging": ["judge"],
          "training": ["sft", "dpo"], "evaluation": ["verify", "rm", "winrate"]}
ARMS = {"self-judge": "model", "random-judge": "random"}


def settings_for(seed: int, scorer: str) -> dict[str, dict[str, Any]]:
    """The testbed settings with every seed set to ``seed`` and the judge's scorer set to ``scorer``."""
    # Every group on the shipped testbed preset (src/srlm/presets/testbed.yaml), merged over the tiny YAML's defaults.
    groups: dict[str, dict[str, Any]] = {group: {"preset": "testbed"} for group in GROUPS}
    for group, keys in SEEDED.items():
        for key in keys:
            groups[group].setdefault(key, {})["seed"] = seed
    groups["judging"]["judge"]["scorer"] = scorer
    groups["mlflow"] = {"enabled": True, "experiment": "srlm-testbed", "model_name": f"srlm-testbed-{scorer}"}
    return groups


def arm_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Per M(t) of one run: the verifier's numbers (version tags) and the round's pair quality (pairs runs)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=summary["mlflow"]["tracking_uri"])
    name = summary["mlflow"]["model_name"]
    experiment = client.get_experiment_by_name(summary["mlflow"]["experiment"])
    pair_runs = client.search_runs([experiment.experiment_id],
                                   f"tags.kfp_run_id = '{summary['kfp_run_id']}' and tags.stage = 'pairs'")
    pairs = {int(r.data.tags["iteration"]): r.data.metrics for r in pair_runs}
    rows = []
    for model in summary["models"]:
        tags = client.get_model_version(name, model["version"]).tags

        def tag(key: str, tags: dict[str, str] = tags) -> float | None:
            value = tags.get(f"metric.{key}")
            return float(value) if value is not None else None

        quality = pairs.get(model["iteration"], {})
        rows.append({
            "model": model["model"],
            "satisfied": tag("verify_satisfied"), "stderr": tag("verify_stderr"),
            "by_kind": {k.removeprefix("metric.verify_satisfied_"): float(v) for k, v in tags.items()
                        if k.startswith("metric.verify_satisfied_")},
            "judge_accuracy": tag("verify_judge_accuracy"),
            "judge_balanced_accuracy": tag("verify_judge_balanced_accuracy"),
            "mean_length_words": tag("verify_mean_length_words"),
            "pairs": quality.get("pairs"),
            "pairs_correct": quality.get("verifier_correct_share"),
            "pairs_inverted": quality.get("verifier_inverted_share"),
            "pairs_tied": quality.get("verifier_tied_share"),
        })
    return rows


def compare(arms: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Gains M1 -> M<last> of each arm, in points of satisfaction."""
    gains = {arm: 100 * (rows[-1]["satisfied"] - rows[0]["satisfied"]) for arm, rows in arms.items()}
    real, control = gains["self-judge"], gains["random-judge"]
    return {"gain_points": gains, "gain_over_control_points": real - control,
            "gain_ratio": real / control if control > 0 else None}


def _pct(value: float | None, se: float | None = None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}" + (f" ± {100 * se:.1f}" if se is not None else "")


def _pair_shares(row: dict[str, Any]) -> str:
    if row["pairs_correct"] is None:
        return "-"
    return "/".join(f"{100 * row[k]:.0f}" for k in ("pairs_correct", "pairs_inverted", "pairs_tied"))


def print_table(result: dict[str, Any]) -> None:
    header = ("model", "satisfied % ± se", "judge acc %", "pairs", "pairs ok/inv/tie %", "length",
              "control: satisfied %", "control pairs ok/inv/tie %")
    lines = [header]
    for real, control in zip(result["arms"]["self-judge"], result["arms"]["random-judge"]):
        lines.append((real["model"], _pct(real["satisfied"], real["stderr"]), _pct(real["judge_accuracy"]),
                      "-" if real["pairs"] is None else f"{real['pairs']:.0f}", _pair_shares(real),
                      "-" if real["mean_length_words"] is None else f"{real['mean_length_words']:.1f}",
                      _pct(control["satisfied"], control["stderr"]), _pair_shares(control)))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    print()
    print(f"Testbed, seed {result['seed']} ({result['numerics']} CPU numerics): share of answers to {result['verify_prompts']} held-out prompts "
          f"that satisfy their constraint")
    for i, line in enumerate(lines):
        print("  " + "  ".join(str(v).ljust(w) for v, w in zip(line, widths)))
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))
    gains = result["comparison"]["gain_points"]
    ratio = result["comparison"]["gain_ratio"]
    print()
    print(f"Gain M1 -> {result['arms']['self-judge'][-1]['model']}: {gains['self-judge']:+.1f} points with "
          f"self-judging, {gains['random-judge']:+.1f} with the random judge"
          + (f" ({ratio:.1f}x)" if ratio is not None else " (the control did not improve)") + ".")
    print("judge acc: M(t) judging its own answers, against the verifier; pairs ok/inv/tie: the round's pairs "
          "the verifier orders as the judge did / the other way / not at all (both pass or both fail).")
    print(f"Wall time: {result['seconds']:.0f} s. Runs and MLflow stores: {result['run_dir']}")


def run_arm(run_dir: Path, groups: dict[str, dict[str, Any]], threads: int | None, verbose: bool,
            numerics_mode: str) -> list[dict[str, Any]]:
    """One arm: the compiled pipeline with ``groups``, then its table rows. Its own process (kfp.local and
    MLflow settings are process-wide)."""
    summary = run_local.run(run_dir, threads=threads, verbose=verbose, overrides=groups, quiet=True,
                            numerics_mode=numerics_mode)
    return arm_rows(summary)


def run(run_dir: Path, seed: int = 0, threads: int | None = 1, verbose: bool = False,
        overrides: dict[str, dict[str, Any]] | None = None, parallel: bool = True,
        numerics_mode: str = "portable") -> dict[str, Any]:
    """Both arms in ``run_dir/<arm>``, side by side when ``parallel``; returns (and writes to ``testbed.json``)
    the table's numbers."""
    started = time.perf_counter()
    jobs = {}
    for arm, scorer in ARMS.items():
        groups = settings_for(seed, scorer)
        for group, values in (overrides or {}).items():
            groups[group] = {**groups.get(group, {}), **values}
        jobs[arm] = (run_dir / arm, groups, threads, verbose, numerics_mode)
        print(f"{arm}: judging.judge.scorer={scorer}, in {run_dir / arm}")
    workers = len(jobs) if parallel else 1
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {arm: pool.submit(run_arm, *job) for arm, job in jobs.items()}
        arms = {arm: future.result() for arm, future in futures.items()}
    result = {"seed": seed, "numerics": numerics_mode, "run_dir": str(run_dir), "seconds": round(time.perf_counter() - started, 1),
              "verify_prompts": presets.load("testbed")["data"]["testbed"]["verify_prompts"], "arms": arms,
              "comparison": compare(arms)}
    (run_dir / "testbed.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print_table(result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.testbed", description=__doc__.split("\n\n")[0])
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    parser.add_argument("--run-dir", default=str(ROOT / "runs" / "testbed" / stamp))
    parser.add_argument("--seed", type=int, default=0, help="one seed for the data, the model and every sampler")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per task (default 1: this tiny model gains nothing from more, and "
                             "oversubscribed cores slow it down many times)")
    parser.add_argument("--one-at-a-time", action="store_true",
                        help="run the control after the real arm (default: side by side, one process each)")
    parser.add_argument("-v", "--verbose", action="store_true", help="stream every task's log here too")
    run_local.add_numerics_argument(parser)
    args = parser.parse_args(argv)
    run(Path(args.run_dir), args.seed, args.threads, args.verbose, parallel=not args.one_at_a_time,
        numerics_mode=args.numerics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
