"""Run the compiled tiny pipeline on this machine with KFP's local runner (what ``make demo`` runs).

    python -m pipelines.run_local [--run-dir runs/demo/<time>] [--yaml pipelines/compiled/self_rewarding_tiny.yaml]

1. Makes the run directory; inside it a SQLite MLflow store (``mlflow.db``, created once here:
   a new database takes seconds to migrate) with an explicit artifact location (``mlartifacts/``).
2. ``kfp.local.init(SubprocessRunner(use_venv=False))`` with the pipeline root in the run
   directory, loads the *compiled* YAML and calls it: every task runs as a subprocess of this
   Python, one at a time, so each gets all the machine's cores (``--threads``), or one thread with
   portable CPU numerics (``--numerics portable``, the default: the same bits on any x86-64
   processor with AVX2, see ``srlm.numerics``).
3. Prints a summary per M(t) read back from MLflow (pairs, parse failures, RM pairwise accuracy,
   win rate vs the previous model, mean answer length, registry version and aliases), the
   per-stage wall times, the report paths and the MLflow store; writes ``summary.json``.

Task logs go to ``<run dir>/pipeline.log`` (``--verbose`` also streams them here).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parent.parent
TINY_YAML = ROOT / "pipelines" / "compiled" / "self_rewarding_tiny.yaml"
THREADED_GROUPS = ("sampling", "judging", "training", "evaluation", "data")
_PROGRESS = re.compile(r"Executing task|finished with status|Pipeline .* finished")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _Tee:
    """stdout for the run: everything to the log file; progress lines (or everything) to the terminal."""

    def __init__(self, log: TextIO, terminal: TextIO, verbose: bool):
        self.log, self.terminal, self.verbose = log, terminal, verbose
        self._line = ""

    def write(self, text: str) -> int:
        self.log.write(text)
        if self.verbose:
            self.terminal.write(text)
        else:
            self._line += text
            *done, self._line = self._line.split("\n")
            for line in done:
                if _PROGRESS.search(line):
                    self.terminal.write(_ANSI.sub("", line) + "\n")
                    self.terminal.flush()
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        self.terminal.flush()

    def isatty(self) -> bool:
        return False


def pipeline_defaults(yaml_path: Path) -> dict[str, Any]:
    """The run-time parameters' defaults of a compiled pipeline."""
    import yaml

    spec = next(yaml.safe_load_all(yaml_path.read_text(encoding="utf-8")))
    params = spec["root"]["inputDefinitions"]["parameters"]
    return {name: p.get("defaultValue") for name, p in params.items()}


def run(
    run_dir: Path, yaml_path: Path = TINY_YAML, threads: int | None = None, verbose: bool = False,
    overrides: dict[str, dict[str, Any]] | None = None, quiet: bool = False, numerics_mode: str | None = None,
    runner: Any = None, store_dir: Path | None = None,
) -> dict[str, Any]:
    """Run the compiled pipeline in ``run_dir``; return the summary (also written to summary.json,
    printed unless ``quiet``). ``numerics_mode`` (portable | native) is set for every task; None keeps
    the environment's ``SRLM_CPU_NUMERICS``. ``runner``: a kfp.local runner (default: subprocesses of
    this Python); ``store_dir``: where the MLflow store goes (default: ``run_dir``; a DockerRunner's
    tasks see only the pipeline root, so the store goes there and the YAML names it)."""
    from srlm import numerics

    run_dir = run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    if numerics_mode:
        os.environ[numerics.ENV] = numerics_mode
    numerics.apply_environment()  # the tasks are subprocesses: they inherit the pinned variables
    threads = threads or (numerics.PORTABLE_THREADS if numerics.portable() else os.cpu_count() or 1)
    store_dir = (store_dir or run_dir).resolve()
    store_dir.mkdir(parents=True, exist_ok=True)
    db = store_dir / "mlflow.db"
    artifacts = store_dir / "mlartifacts"
    os.environ.update({
        "MLFLOW_TRACKING_URI": f"sqlite:///{db}",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "MLFLOW_ENABLE_ASYNC_LOGGING": "false",
    })
    params = pipeline_defaults(yaml_path)
    for group in THREADED_GROUPS:
        if isinstance(params.get(group), dict):
            params[group] = {**params[group], "threads": threads}
    for group, values in (overrides or {}).items():
        params[group] = {**(params.get(group) or {}), **values}
    params["mlflow"] = {**params["mlflow"], "artifact_location": artifacts.as_uri()}

    from srlm import tracking

    started = time.perf_counter()
    tracking.ensure_experiment(params["mlflow"]["experiment"], artifacts.as_uri())  # creates the SQLite DB once
    store_seconds = time.perf_counter() - started

    from kfp import local
    from kfp.components import load_component_from_file

    workspace = run_dir / "workspace"
    workspace.mkdir(exist_ok=True)  # a DockerRunner mounts it: a missing bind source would be made root's 0755
    local.init(runner=runner or local.SubprocessRunner(use_venv=False), pipeline_root=str(run_dir / "kfp"),
               workspace_root=str(workspace))
    pipeline = load_component_from_file(str(yaml_path))
    log_path = run_dir / "pipeline.log"
    terminal = sys.stdout
    print(f"Running {yaml_path.name} with kfp.local in {run_dir} ({threads} thread(s) per task, "
          f"{numerics.mode()} CPU numerics); log: {log_path}")
    error: BaseException | None = None
    started_at = time.time()
    started = time.perf_counter()
    with log_path.open("w", encoding="utf-8") as log, warnings.catch_warnings():
        # The stage images are not "python" images: the subprocess runner warns once per task.
        warnings.filterwarnings("ignore", message="You may be attemping to run a task")
        # Display names, GPUs and Kubernetes settings are for the cluster; the local runner says so per task.
        warnings.filterwarnings("ignore", message=r".*have no effect in the current local runner")
        sys.stdout = _Tee(log, terminal, verbose)
        try:
            pipeline(**params)
        except BaseException as e:  # reported below with the log's tail
            error = e
        finally:
            sys.stdout = terminal
    wall = time.perf_counter() - started
    if error is not None:
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-60:]
        print("\n".join(_ANSI.sub("", line) for line in tail), file=sys.stderr)
        print(f"\nThe pipeline failed after {wall:.0f} s: {error}\nFull log: {log_path}", file=sys.stderr)
        raise SystemExit(1)
    summary = collect(run_dir, params["mlflow"], wall, store_seconds, started_at, store_dir)
    summary.update(numerics=numerics.mode(), threads=threads)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    if not quiet:
        print_summary(summary)
    return summary


# --------------------------------------------------------------------------- reading the results back


def _task_dirs(run_dir: Path) -> list[Path]:
    """The task directories of the newest pipeline run in ``run_dir`` (sub-DAG tasks may be nested), in finish order."""
    runs = sorted((p for p in (run_dir / "kfp").glob("*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
    if not runs:
        return []
    outputs = sorted(runs[-1].rglob("executor_output.json"), key=lambda f: f.stat().st_mtime)
    return [f.parent for f in outputs]


def task_timings(run_dir: Path, started_at: float) -> list[dict[str, Any]]:
    """Per task, in execution order: its wall time (end of the previous task to its own end; tasks run one
    at a time) and the stage's own time (``wall_seconds`` in its Metrics)."""
    rows = []
    previous_end = started_at
    for task in _task_dirs(run_dir):
        end = (task / "executor_output.json").stat().st_mtime
        out = json.loads((task / "executor_output.json").read_text(encoding="utf-8"))
        stage_seconds = None
        for artifact in out.get("artifacts", {}).values():
            for a in artifact.get("artifacts", []):
                meta = a.get("metadata") or {}
                if "wall_seconds" in meta:
                    stage_seconds = float(meta["wall_seconds"])
        rows.append({"task": task.name, "stage": re.sub(r"-\d+$", "", task.name),
                     "task_seconds": round(end - previous_end, 1), "stage_seconds": stage_seconds})
        previous_end = end
    return rows


def collect(
    run_dir: Path, mlflow_settings: dict[str, Any], wall: float, store_seconds: float, started_at: float,
    store_dir: Path | None = None,
) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    name = mlflow_settings["model_name"]
    experiment = client.get_experiment_by_name(mlflow_settings["experiment"])
    parents = client.search_runs([experiment.experiment_id], "tags.`srlm.kind` = 'pipeline'",
                                 order_by=["attributes.start_time DESC"], max_results=1)
    kfp_run_id = parents[0].data.tags.get("kfp_run_id") if parents else None
    judge_runs = client.search_runs(
        [experiment.experiment_id], f"tags.kfp_run_id = '{kfp_run_id}' and tags.stage = 'judge'"
    ) if kfp_run_id else []
    self_judge = {int(r.data.tags["iteration"]): r.data.metrics for r in judge_runs if "iteration" in r.data.tags}
    aliases: dict[str, list[str]] = {}
    for alias, version in client.get_registered_model(name).aliases.items():
        aliases.setdefault(str(version), []).append(alias)
    models = []
    for mv in sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version)):
        if mv.tags.get("kfp_run_id") != kfp_run_id:
            continue
        tags = mv.tags
        t = int(tags.get("iteration", 0))

        def metric(key: str, tags: dict[str, str] = tags) -> float | None:
            value = tags.get(f"metric.{key}")
            return float(value) if value is not None else None

        models.append({
            "model": f"M{t}", "iteration": t, "version": str(mv.version), "aliases": sorted(aliases.get(str(mv.version), [])),
            "parent_version": tags.get("parent_version") or None, "source": mv.source,
            "pairs": metric("pairs"), "self_judge_parse_failure_rate": self_judge.get(t, {}).get("parse_failure_rate"),
            "rm_pairwise_accuracy": metric("pairwise_accuracy"), "rm_parse_failure_rate": metric("judge_parse_failure_rate"),
            "win_rate_vs_previous": metric("win_rate_vs_previous"),
            "adjusted_win_rate_vs_previous": metric("adjusted_win_rate_vs_previous"),
            "mean_length": metric("mean_length"),
            "promotion": tags.get("promotion.reason"),
        })
    store = store_dir or run_dir
    timings = task_timings(run_dir, started_at)
    by_stage: dict[str, dict[str, float]] = {}
    for row in timings:
        entry = by_stage.setdefault(row["stage"], {"tasks": 0, "task_seconds": 0.0, "stage_seconds": 0.0})
        entry["tasks"] += 1
        entry["task_seconds"] += row["task_seconds"] or 0.0
        if row["stage_seconds"] is not None:
            entry["stage_seconds"] += row["stage_seconds"]
    measured = [r for r in timings if r["task_seconds"] is not None and r["stage_seconds"] is not None]
    overhead = [r["task_seconds"] - r["stage_seconds"] for r in measured]
    reports = {}
    for task in _task_dirs(run_dir):
        report = task / "report"
        if report.is_file():
            first = report.read_text(encoding="utf-8").splitlines()[0]
            match = re.search(r"Evaluation of (M\d+)", first)
            reports[match.group(1) if match else "promotion"] = str(report)
        if (task / "run_report").is_file():  # the gate's HTML page: every M(t)'s numbers as plots
            reports["run report"] = str(task / "run_report")
    return {
        "run_dir": str(run_dir),
        "kfp_run_id": kfp_run_id,
        "pipeline_seconds": round(wall, 1),
        "mlflow_store_setup_seconds": round(store_seconds, 1),
        "models": models,
        "champion": next((v for v, names in aliases.items() if "champion" in names), None),
        "challenger": next((v for v, names in aliases.items() if "challenger" in names), None),
        "tasks": timings,
        "stages": {k: {kk: round(vv, 1) for kk, vv in v.items()} for k, v in by_stage.items()},
        "task_overhead_seconds_mean": round(sum(overhead) / len(overhead), 1) if overhead else None,
        "reports": reports,
        "mlflow": {"tracking_uri": os.environ["MLFLOW_TRACKING_URI"], "store": str(store / "mlflow.db"),
                   "artifacts": str(store / "mlartifacts"), "experiment": mlflow_settings["experiment"],
                   "model_name": name},
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _num(value: float | None, fmt: str = "{:.0f}") -> str:
    return "-" if value is None else fmt.format(value)


def print_summary(summary: dict[str, Any]) -> None:
    rows = [("model", "version", "aliases", "pairs", "judge parse fail", "RM pairwise acc",
             "win vs prev (adj.)", "mean length")]
    for m in summary["models"]:
        win = "-" if m["win_rate_vs_previous"] is None else (
            f"{_pct(m['win_rate_vs_previous'])} ({_pct(m['adjusted_win_rate_vs_previous'])})")
        rows.append((m["model"], m["version"], ",".join(m["aliases"]), _num(m["pairs"]),
                     _pct(m["self_judge_parse_failure_rate"]), _pct(m["rm_pairwise_accuracy"]), win,
                     _num(m["mean_length"])))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    print()
    print(f"Self-rewarding run finished in {summary['pipeline_seconds']:.0f} s (kfp run id {summary['kfp_run_id']}).")
    print()
    for i, row in enumerate(rows):
        print("  " + "  ".join(str(v).ljust(w) for v, w in zip(row, widths)))
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))
    print()
    print("pairs: preference pairs M(t) was trained on; judge parse fail: the round's self-judgements without a "
          "valid score; RM pairwise acc: M(t) ranking the held-out EFT replies like people did; win vs prev: "
          "M(t) against M(t-1) judged by M1 (adj. counts ties as half).")
    promoted = [m for m in summary["models"] if m["promotion"]]
    if promoted:
        print(f"Promotion gate: {promoted[-1]['promotion']}")
    print(f"Registry {summary['mlflow']['model_name']!r}: champion = version {summary['champion']}, "
          f"challenger = version {summary['challenger']}")
    print()
    print("Wall time per stage (task = process start + imports + stage; stage = the library call):")
    for stage, t in summary["stages"].items():
        print(f"  {stage:<18} {int(t['tasks'])} task(s)  task {t['task_seconds']:6.1f} s  stage {t['stage_seconds']:6.1f} s")
    if summary["task_overhead_seconds_mean"] is not None:
        print(f"  mean overhead per task (interpreter, imports, KFP executor, MLflow logging): "
              f"{summary['task_overhead_seconds_mean']:.1f} s")
    print()
    print("Reports:")
    for name, path in summary["reports"].items():
        print(f"  {name:<10} {path}")
    store = summary["mlflow"]
    print(f"MLflow store: {store['store']} (artifacts: {store['artifacts']})")
    print(f"  browse it: .venv/bin/mlflow ui --backend-store-uri {store['tracking_uri']}")
    print(f"Summary: {summary['run_dir']}/summary.json")
    print()
    print("A tiny model's numbers say nothing about quality: this run proves every stage and every wire of the "
          "pipeline, not the method.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.run_local", description=__doc__.split("\n\n")[0])
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    parser.add_argument("--run-dir", default=str(ROOT / "runs" / "demo" / stamp), help="run directory (default: runs/demo/<time>)")
    parser.add_argument("--yaml", default=str(TINY_YAML), help="compiled pipeline YAML (default: the tiny one)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per task (default: all cores; one with portable numerics)")
    add_numerics_argument(parser)
    parser.add_argument("--settings", metavar="YAML",
                        help="a settings file (e.g. a copied preset, src/srlm/presets/*.yaml), merged over the defaults")
    parser.add_argument("--set", action="append", default=[], metavar="GROUP=JSON",
                        help='merge settings into a group, e.g. --set \'sampling={"candidates": {"n": 4}}\'')
    parser.add_argument("-v", "--verbose", action="store_true", help="stream every task's log here too")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {}
    if args.settings:
        from srlm import presets

        overrides.update(presets.settings_file(args.settings))
    for item in args.set:
        group, _, value = item.partition("=")
        overrides[group] = json.loads(value)
    run(Path(args.run_dir), Path(args.yaml), args.threads or None, args.verbose, overrides, numerics_mode=args.numerics)
    return 0


def add_numerics_argument(parser: argparse.ArgumentParser) -> None:
    from srlm import numerics

    parser.add_argument("--numerics", choices=numerics.MODES, default=os.environ.get(numerics.ENV) or "portable",
                        help="CPU numerics of every task: portable (default; the same bits on any x86-64 processor "
                             "with AVX2, slower) or native (this processor's fastest kernels)")


if __name__ == "__main__":
    sys.exit(main())
