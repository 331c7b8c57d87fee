"""Steps: one function per stage, the one calling convention of the components and the CLI.

    step(ctx, *, <settings>, <paths and values>) -> statistics

``ctx`` is the run context (``srlm.context.RunContext``: MLflow settings, KFP run id, iteration);
the settings are the stage's resolved configs (``srlm.stages`` builds them from a pipeline
settings group or from CLI flags); paths are plain strings. A step runs the library stage, logs
a child run to MLflow when the context tracks (``srlm.stagelog.finish``) and returns the stage's
statistics (nested; ``wall_seconds`` included), which the component flattens into KFP Metrics and
the CLI prints. No KFP import here, and no output checks: the registry's adapter refuses an
existing output before a step runs (``--overwrite`` lifts that).

Where a step takes a directory or a file (``ift``, ``eft``, ``pool``, ``seed_prompts``), a
directory means the file of the usual name inside it: that is how the pipeline hands over its
seed and EFT directories while a user passes files.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from srlm import evaluation, training
from srlm.context import RunContext
from srlm.errors import SrlmError
from srlm.shards import is_sharded
from srlm.stagelog import Head, finish, log, params_of, timed

log_ = logging.getLogger(__name__)

# data.files: the user's own seed files, by name -> record kind
DATA_FILES = {"ift": "ift", "eft_train": "eft", "eft_eval": "eft_eval", "eft_pool": "eft_eval"}


def file_in(path: str | Path | None, name: str) -> Path | None:
    """``path`` itself, or ``path/name`` when ``path`` is a directory (None stays None)."""
    if path is None or str(path) == "":
        return None
    path = Path(path)
    return path / name if path.is_dir() else path


# --------------------------------------------------------------------------- data


def tiny_model(ctx: RunContext, *, config: Any, out: str) -> dict[str, Any]:
    """Build the tiny Llama-style base model (M0) locally."""
    from srlm import tiny_model as tm

    stats: dict[str, Any] = {}
    with timed(stats):
        stats.update(tm.run(config, out))
    finish(ctx.at(0), "tiny_model", params_of(config, out=out), stats)
    return stats


def check_data_files(files: Mapping[str, Any] | None) -> dict[str, str]:
    """``data.files``: the user's own seed files, ``{name: path}`` with names from ``DATA_FILES``."""
    files = files or {}
    if not isinstance(files, Mapping):
        raise SrlmError(f"data.files: expected a mapping of name -> path, got {files!r}")
    unknown = sorted(set(files) - set(DATA_FILES))
    if unknown:
        raise SrlmError(f"data.files: unknown file name(s) {unknown}; known: {list(DATA_FILES)}")
    return {k: str(v) for k, v in files.items() if v}


def seed(ctx: RunContext, *, config: Any, out: str, testbed: Any = None, files: Mapping[str, Any] | None = None
         ) -> dict[str, Any]:
    """Write the seed directory: the bundled set, the testbed, OpenAssistant data, or the user's own files.

    With ``files["ift"]`` the user's files are the seed data (each validated, copied in); otherwise
    the seed stage writes its parts and any ``eft_*`` files given replace theirs.
    """
    from srlm import seed_data
    from srlm.io import atomic_path, read_jsonl, write_jsonl

    files = check_data_files(files)
    given = {name: read_jsonl(path, DATA_FILES[name]) for name, path in files.items()}  # validated before writing
    stats: dict[str, Any] = {"user_files": len(given)}
    with timed(stats):
        with atomic_path(out, directory=True) as tmp:
            if "ift" not in given:
                stats.update(seed_data.run(config, tmp / "seed", testbed=testbed))
                for part in (tmp / "seed").iterdir():
                    part.rename(tmp / part.name)
                (tmp / "seed").rmdir()
            for name, records in given.items():
                stats[name] = write_jsonl(tmp / f"{name}.jsonl", records, DATA_FILES[name])
    finish(ctx, "seed", params_of(config, out=out, **files), stats)
    return stats


def build_eft(ctx: RunContext, *, config: Any, model: str, pool: str, out: str) -> dict[str, Any]:
    """EFT data: the SFT baseline ``model`` judges the EFT pool (a file, or the seed directory's
    ``eft_pool.jsonl``); a seed directory that already holds ``eft_train``/``eft_eval`` is copied."""
    from srlm import eft

    source = Path(pool)
    stats: dict[str, Any] = {}
    with timed(stats):
        if source.is_dir() and (source / "eft_train.jsonl").is_file() and (source / "eft_eval.jsonl").is_file():
            Path(out).mkdir(parents=True, exist_ok=True)
            for name in ("eft_train.jsonl", "eft_eval.jsonl"):
                shutil.copyfile(source / name, Path(out) / name)
            stats["skipped"] = 1
            log_.info("EFT build skipped: %s already holds eft_train.jsonl and eft_eval.jsonl", source)
        else:
            pool_file = file_in(source, "eft_pool.jsonl")
            if not pool_file.is_file():
                raise SrlmError(f"{source}: no eft_pool.jsonl (and no eft_train/eft_eval.jsonl) to build EFT data from")
            stats.update(eft.run(config, model, pool_file, out))
            stats["skipped"] = 0
    finish(ctx.at(0), "build_eft", params_of(config, model=model, pool=pool, out=out), stats)
    return stats


# --------------------------------------------------------------------------- training


def sft(ctx: RunContext, *, config: Any, model: str, ift: str, out: str, eft: str | None = None,
        chat_template: str = "", progress_volume: str = "") -> dict[str, Any]:
    """Seed SFT on IFT (+ EFT): M0 -> M1. Without ``eft`` it trains the SFT baseline (IFT only, iteration 0).
    ``chat_template``: M0's template (``srlm.chat_templates``: a name, a file or the text) when it has none."""
    from srlm import chat_templates

    template = chat_templates.resolve(chat_template, None) if chat_template else ""
    ift_file, eft_file = file_in(ift, "ift.jsonl"), file_in(eft, "eft_train.jsonl")
    if eft_file is not None and not eft_file.is_file():
        raise SrlmError(f"{eft}: no eft_train.jsonl for seed SFT on IFT + EFT")
    stats: dict[str, Any] = {}
    with timed(stats):
        stats.update(training.run_sft(config, model=model, ift=ift_file, eft=eft_file, out=out, chat_template=template,
                                      progress_volume=progress_volume))
    iteration = 1 if eft_file is not None else 0
    finish(ctx.at(iteration), "sft", params_of(config, model=model, ift=ift_file, eft=eft_file, out=out), stats)
    return stats


def dpo(ctx: RunContext, *, config: Any, model: str, pairs: str, out: str, progress_volume: str = "") -> dict[str, Any]:
    """One DPO round: M(t-1) (also the reference) -> M(t) on that round's pairs."""
    stats: dict[str, Any] = {}
    with timed(stats):
        stats.update(training.run_dpo(config, model, pairs, out, progress_volume=progress_volume))
    finish(ctx, "dpo", params_of(config, model=model, pairs=pairs, out=out), stats)
    return stats


# --------------------------------------------------------------------------- one round's data


def prompts(ctx: RunContext, *, config: Any, model: str, out: str, seed_prompts: str | None = None,
            progress_volume: str = "") -> dict[str, Any]:
    """M(t-1) writes new prompts, Self-Instruct style, few-shot from the seed IFT prompts (``seed_prompts``:
    an IFT file or the seed directory); with ``source: file``, round t's slice of a prompts file."""
    from srlm import prompts as pg

    seeds = file_in(seed_prompts, "ift.jsonl")
    stats: dict[str, Any] = {}
    with timed(stats):
        if config.source == "file":
            if ctx.iteration is None:
                raise SrlmError("prompts from a file need the iteration (which rows are this round's)")
            folder = Path(seed_prompts) if seed_prompts and Path(seed_prompts).is_dir() else (seeds.parent if seeds else Path("."))
            stats.update(pg.from_file(config, Path(config.file or folder / "prompts.jsonl"), ctx.iteration, out))
        else:
            stats.update(pg.run(config, model, out, seed_prompts=seeds, progress_volume=progress_volume))
    finish(ctx, "prompts", params_of(config, model=model, seed_prompts=seeds, out=out), stats,
           {"prompts_sample.jsonl": Head(out, 20)})
    return stats


def sample(ctx: RunContext, *, config: Any, model: str, prompts: str, out: str, shard: int = 0, shards: int = 1,
           progress_volume: str = "") -> dict[str, Any]:
    """M(t-1) samples N candidate replies per prompt; with ``shards`` > 1, shard ``shard`` of them (see ``merge``)."""
    from srlm import sampling

    part = (shard, shards)
    is_sharded(part)  # checks it before any input is read
    stats: dict[str, Any] = {}
    with timed(stats):
        stats.update(sampling.run(config, model, prompts, out, shard=part, progress_volume=progress_volume))
    return _finish_shardable(ctx, "sample", params_of(config, model=model, prompts=prompts, out=out), stats, part,
                             Head(out, 5))


def judge(ctx: RunContext, *, config: Any, model: str, candidates: str, out: str, shard: int = 0, shards: int = 1,
          progress_volume: str = "") -> dict[str, Any]:
    """M(t-1) judges every candidate with the rubric (its own reward model); with ``shards`` > 1, shard ``shard``."""
    from srlm import judge as jd

    part = (shard, shards)
    is_sharded(part)  # checks it before any input is read
    stats: dict[str, Any] = {}
    with timed(stats):
        stats.update(jd.run(config, model, candidates, out, shard=part, progress_volume=progress_volume))
    return _finish_shardable(ctx, "judge", params_of(config, model=model, candidates=candidates, out=out), stats, part,
                             Head(out, 3))


def _finish_shardable(ctx: RunContext, stage: str, params: dict[str, Any], stats: dict[str, Any],
                      part: tuple[int, int], sample: Head) -> dict[str, Any]:
    """A plain run logs as ``stage`` with a sample of its output; a shard task as ``<stage>_shard`` (the merge
    logs the merged output as ``stage``, so a query by stage sees one run per round whatever K)."""
    if is_sharded(part):
        finish(ctx, f"{stage}_shard", {**params, "shard": part[0], "shards": part[1]}, stats)
    else:
        finish(ctx, stage, params, stats, {f"{MERGED[stage]}_sample.jsonl": sample})
    return stats


# The stage whose shard files a merge joins -> the kind of its output, and the lines of its sample artifact.
MERGED = {"sample": "candidates", "judge": "judgements"}
SAMPLE_LINES = {"sample": 5, "judge": 3}


def merge(ctx: RunContext, *, stage: str, shard_files: list[str], out: str) -> dict[str, Any]:
    """The K shard files of a sharded ``sample`` or ``judge`` as one file: the output and the statistics of
    the unsharded stage, whatever K; logged as that stage."""
    from srlm import judge as jd
    from srlm import sampling
    from srlm.shards import shard_paths_param

    merges = {"sample": sampling.merge_shards, "judge": jd.merge_shards}
    if stage not in merges:
        raise SrlmError(f"merge: unknown stage {stage!r}; shards come from {', '.join(merges)}")
    stats: dict[str, Any] = {}
    with timed(stats):
        stats.update(merges[stage](list(shard_files), out))
    params = {"shards": len(shard_files), **shard_paths_param(shard_files), "path.out": str(out)}
    finish(ctx, stage, params, stats, {f"{MERGED[stage]}_sample.jsonl": Head(out, SAMPLE_LINES[stage])})
    return stats


def pairs(ctx: RunContext, *, config: Any, judgements: str, out: str) -> dict[str, Any]:
    """Preference pairs: best vs worst mean score per prompt, ties dropped."""
    from srlm import pairs as pr

    stats: dict[str, Any] = {}
    with timed(stats):
        stats.update(pr.run(config, judgements, out))
    finish(ctx, "pairs", params_of(config, judgements=judgements, out=out), stats, {"pairs_sample.jsonl": Head(out, 20)})
    return stats


# --------------------------------------------------------------------------- evaluation


def evaluate(ctx: RunContext, *, rm: Any, winrate: Any, verify: Any, model: str, previous: str, judge_model: str,
             eft: str, out: str, report: str, prompts: str | None = None, seed: str | None = None,
             previous_chat_template: str = "", benchmarks: Any = None, alpaca_eval: Any = None, mt_bench: Any = None,
             ifeval: Any = None, agreement: Any = None, judgements: str | None = None) -> dict[str, Any]:
    """M(t) as a reward model (EFT eval split), head to head against M(t-1) judged by ``judge_model``,
    (with ``verify.verifier`` set) checked by a program, and on the ``benchmarks`` named (their configs by
    name, ``srlm.benchmarks``), and the judge's drift against M(t-1)'s ``judgements`` of this round and agreement
    with a judge server (``agreement``, ``srlm.judge_agreement``) (``srlm.evaluation``). Writes ``out/`` and
    ``report``."""
    from srlm import chat_templates
    from srlm.benchmarks import check_benchmarks

    if ctx.iteration is None:
        raise SrlmError("evaluate needs the iteration of the model it evaluates")
    benchmarks = check_benchmarks(benchmarks)
    benchmark_configs = {"alpaca_eval": alpaca_eval, "mt_bench": mt_bench, "ifeval": ifeval}
    previous_chat_template = chat_templates.resolve(previous_chat_template, None) if previous_chat_template else ""
    stats: dict[str, Any] = {}
    with timed(stats):
        stats.update(evaluation.evaluate(rm, winrate, verify, model=model, previous=previous, judge_model=judge_model,
                                         eft_dir=eft, prompts=prompts, seed_dir=seed, out=out, report=report,
                                         iteration=ctx.iteration, previous_chat_template=previous_chat_template,
                                         benchmarks=benchmarks, benchmark_configs=benchmark_configs,
                                         agreement=agreement, judgements=judgements))
    params = {"rm": rm.to_dict(), "winrate": winrate.to_dict(), "path.model": model, "path.previous": previous,
              "path.judge_model": judge_model, "path.prompts": stats.pop("prompts_file"),
              "benchmarks": ",".join(benchmarks), **{name: benchmark_configs[name].to_dict() for name in benchmarks},
              **({"judge_agreement": agreement.to_dict(), "path.judgements": judgements} if agreement else {})}
    artifacts = {"report.md": report, "rm_metrics.json": Path(out) / "rm" / "metrics.json",
                 "winrate_metrics.json": Path(out) / "winrate" / "metrics.json", "summary.json": Path(out) / "summary.json"}
    if "verify" in stats:
        params["verify"] = verify.to_dict()
        artifacts["verify_metrics.json"] = Path(out) / "verify" / "metrics.json"
    artifacts.update({f"{name}_metrics.json": Path(out) / name / "metrics.json"
                      for name in (*benchmarks, "judge_agreement")})
    finish(ctx, "evaluate", params, stats, artifacts)
    return stats


def eval_rm(ctx: RunContext, *, config: Any, model: str, eft_eval: str, out: str) -> dict[str, Any]:
    """Reward-model metrics of ``model`` on EFT eval items (``srlm.rm_eval``)."""
    from srlm import rm_eval

    stats = rm_eval.run_rm(config, model, file_in(eft_eval, "eft_eval.jsonl"), out)
    finish(ctx, "eval_rm", params_of(config, model=model, eft_eval=eft_eval, out=out), stats,
           {"report.md": Path(out) / "report.md"})
    return stats


def winrate(ctx: RunContext, *, config: Any, model_a: str, model_b: str, judge_model: str, prompts: str, out: str
            ) -> dict[str, Any]:
    """Head-to-head win rate of A against B, judged by a third model (``srlm.winrate``)."""
    from srlm import winrate as wr

    stats = wr.run_winrate(config, model_a, model_b, judge_model, prompts, out)
    finish(ctx, "winrate", params_of(config, model_a=model_a, model_b=model_b, judge_model=judge_model,
                                     prompts=prompts, out=out), stats, {"report.md": Path(out) / "report.md"})
    return stats


def report_files(out: str) -> dict[str, Path]:
    """A benchmark's report and metrics, logged as artifacts of its MLflow run."""
    return {"report.md": Path(out) / "report.md", "metrics.json": Path(out) / "metrics.json"}


def alpaca_eval(ctx: RunContext, *, config: Any, model: str, out: str, local_judge: str | None = None,
                generator_name: str | None = None) -> dict[str, Any]:
    """AlpacaEval-style win rates of ``model`` against reference outputs (``srlm.alpaca_eval``)."""
    from srlm import alpaca_eval as ae

    stats = ae.run_alpaca_eval(config, model, out, local_judge, generator_name)
    finish(ctx, "alpaca_eval", params_of(config, model=model, local_judge=local_judge or "", out=out), stats,
           report_files(out))
    return stats


def mt_bench(ctx: RunContext, *, config: Any, model: str, out: str, local_judge: str | None = None) -> dict[str, Any]:
    """MT-Bench single-answer grading of ``model`` (``srlm.mt_bench``)."""
    from srlm import mt_bench as mt

    stats = mt.run_mt_bench(config, model, out, local_judge)
    finish(ctx, "mt_bench", params_of(config, model=model, local_judge=local_judge or "", out=out), stats,
           report_files(out))
    return stats


def ifeval(ctx: RunContext, *, config: Any, model: str, out: str) -> dict[str, Any]:
    """IFEval of ``model``: verifiable instructions checked by lm-eval's verifiers (``srlm.ifeval``)."""
    from srlm import ifeval as ife

    stats = ife.run_ifeval(config, model, out)
    finish(ctx, "ifeval", params_of(config, model=model, out=out), stats,
           report_files(out))
    return stats


def export_alpaca(ctx: RunContext, *, config: Any, model: str, prompts: str, out: str,
                  generator_name: str | None = None) -> dict[str, Any]:
    """A model's answers in AlpacaEval's ``model_outputs.json`` format."""
    from srlm import winrate as wr

    stats = wr.export_alpaca(config, model, prompts, out, generator_name)
    finish(ctx, "export_alpaca", params_of(config, model=model, prompts=prompts, out=out), stats)
    return stats


# --------------------------------------------------------------------------- registry


def register(ctx: RunContext, *, model: str, model_uri: str, evaluation: str, parent_version: str = "") -> dict[str, Any]:
    """Register M(t) by reference (its artifact URI) with lineage tags and the evaluation's key metrics;
    alias ``iter-<t>``. A model on the run's model volume (``model`` is a reference, srlm.storage) leaves the run:
    it is copied into the MLflow run's artifacts (the object store) and registered as ``runs:/<run>/model``.
    Returns the key metrics plus ``version`` (a string; "" when MLflow is off)."""
    import json

    from srlm import storage
    from srlm.modeldir import check_model_dir, read_lineage

    stored = storage.read_ref(model) is not None
    model = storage.resolve(model)
    check_model_dir(model)
    lineage = read_lineage(model)
    summary_file = Path(evaluation) / "summary.json"
    if not summary_file.is_file():
        raise SrlmError(f"{evaluation}: no summary.json from the evaluation step")
    metrics = json.loads(summary_file.read_text(encoding="utf-8"))
    lineage_metrics = lineage.get("metrics") or {}
    for key in ("pairs", "train_loss", "final_loss"):
        if isinstance(lineage_metrics.get(key), (int, float)):
            metrics[key] = lineage_metrics[key]
    if not ctx.tracking:
        return {**metrics, "version": ""}
    from srlm import model_registry

    started = time.perf_counter()
    run_id = log(ctx, "register", {"model_uri": model_uri, "parent_version": parent_version}, metrics,
                 {"srlm_lineage.json": Path(model) / "srlm_lineage.json"})
    version = model_registry.register_model(
        ctx.model_name, model if stored else model_uri, ctx.iteration, run_id=run_id, parent_version=parent_version or None,
        tags={"kfp_run_id": ctx.kfp_run_id}, metrics=metrics, lineage=lineage, upload_local=stored,
    )
    return {**metrics, "version": version, "wall_seconds": round(time.perf_counter() - started, 2)}


def promote(ctx: RunContext, *, config: Any, name: str, version: str | None = None) -> dict[str, Any]:
    """``srlm promote``: set ``challenger`` on a registered version (default: the newest) and move ``champion``
    to it when the promotion rule holds on the metrics its tags carry."""
    from srlm import model_registry

    return model_registry.promote(name, version, config)


def gate(ctx: RunContext, *, rule: Any, winrate: Any, version: str, model: str, judge_model: str, eft: str,
         report: str, run_report: str | None = None, prompts: str | None = None, work_dir: str | None = None
         ) -> dict[str, Any]:
    """The pipeline's promotion gate: ``challenger`` on the newest M(t); ``champion`` moves when the rule holds.

    When the current champion is neither the challenger nor its parent (a champion from an earlier
    pipeline run), the challenger first plays a head-to-head against it (judged by ``judge_model``)
    so the rule compares like with like. Writes a Markdown ``report`` of the decision and the run's HTML
    report (``run_report``: every M(t)'s numbers as plots, ``srlm.run_report``), and ends the pipeline's
    MLflow parent run.
    """
    if not ctx.tracking:
        off = "MLflow is disabled: nothing registered, nothing promoted, no numbers to report."
        Path(report).write_text(f"# Promotion\n\n{off}\n", encoding="utf-8")
        if run_report:
            Path(run_report).write_text(f"<!DOCTYPE html>\n<html><body><p>{off}</p></body></html>\n", encoding="utf-8")
        return {"promoted": 0.0, "skipped": 1.0}
    from srlm import model_registry, tracking
    from srlm.promotion import CHAMPION, promotion_report

    name = ctx.model_name
    stats: dict[str, Any] = {}
    fresh: dict[str, float] = {}
    with timed(stats):
        champion = model_registry.get_version(name, alias=CHAMPION)
        if champion is not None and champion["version"] not in (str(version), _parent_version(name, version)):
            fresh = _against_champion(winrate, model, champion, judge_model, eft, prompts, work_dir)
        decision = model_registry.promote(name, str(version), rule, metrics=fresh or None)
    Path(report).parent.mkdir(parents=True, exist_ok=True)
    Path(report).write_text(promotion_report(decision, fresh), encoding="utf-8")
    stats.update({"promoted": float(bool(decision["promoted"])), "compared_to_champion": float(bool(fresh)), **fresh})
    artifacts: dict[str, Any] = {"promotion.md": report}
    if run_report:
        from srlm import run_report as rr

        stats.update(rr.write(run_report, ctx.experiment, ctx.kfp_run_id, decision=decision,
                              title=f"Self-rewarding run {ctx.kfp_run_id}: {name}"))
        artifacts["run_report.html"] = run_report
    params = {"rule": rule.to_dict(), "challenger": decision["challenger"], "reason": decision["reason"],
              "champion_before": decision["champion_before"] or "", "champion_after": decision["champion_after"] or ""}
    finish(ctx.at(None), "gate", params, stats, artifacts)
    tracking.end_pipeline_run(ctx.experiment, ctx.kfp_run_id)
    return stats


def finalize(ctx: RunContext, *, status: Mapping[str, Any]) -> dict[str, Any]:
    """The pipeline's exit handler (runs however the run ended). ``status``: KFP's final status of the run's
    body (``state``, ``error_message``). A failed or cancelled run: its MLflow parent run ends FAILED (tags
    ``srlm.failed_stage``, ``srlm.error``: the stages that logged a failure, else KFP's message) and every model
    version it registered is tagged ``srlm.run_status=FAILED``, so neither the gate nor ``srlm promote`` take it."""
    from srlm import model_registry, tracking

    state = str(status.get("state") or "UNKNOWN")
    if state == "SUCCEEDED" or not ctx.tracking:
        return {"failed": 0.0}
    failed = tracking.failed_stages(ctx.experiment, ctx.kfp_run_id)
    named = "; ".join(f"{f['stage']}" + (f" (iteration {f['iteration']})" if f["iteration"] else "") for f in failed)
    error = failed[-1]["error"] if failed else str(status.get("error_message") or "")
    tracking.end_pipeline_run(ctx.experiment, ctx.kfp_run_id, "FAILED" if state != "CANCELLED" else "KILLED",
                              tags={"srlm.failed_stage": named or "unknown (no stage recorded a failure: see the KFP "
                                                                  "UI for the task that was killed)",
                                    "srlm.error": error, "srlm.final_state": state})
    versions = model_registry.mark_run_failed(ctx.model_name, ctx.kfp_run_id)
    log_.warning("KFP run %s ended %s at %s; versions %s tagged as from a failed run", ctx.kfp_run_id, state,
                named or "an unrecorded task", versions or "none")
    return {"failed": 1.0, "failed_versions": float(len(versions))}


def _parent_version(name: str, version: str) -> str | None:
    from srlm import model_registry

    found = model_registry.get_version(name, str(version))
    return found["tags"].get("parent_version") if found else None


def _against_champion(config: Any, model: str, champion: Mapping[str, Any], judge_model: str, eft_dir: str,
                      prompts: str | None, work_dir: str | None) -> dict[str, float]:
    from srlm import winrate as wr
    from srlm.promotion import head_to_head_metrics

    with tempfile.TemporaryDirectory(prefix="srlm-gate-", dir=work_dir) as tmp:
        champion_dir = _local_model(champion["source"], Path(tmp) / "champion")
        head_to_head = evaluation.eval_prompts(prompts, eft_dir, Path(tmp) / "prompts.jsonl")
        win = wr.run_winrate(config, model, champion_dir, judge_model, head_to_head, Path(tmp) / "vs-champion")
    return head_to_head_metrics(win, "champion")


def _local_model(source: str, dest: Path) -> Path:
    """A local directory for a registered model's source (downloaded through MLflow when remote)."""
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme in ("", "file"):
        path = Path(urllib.parse.unquote(parsed.path) if parsed.scheme == "file" else source)
        if not path.is_dir():
            raise SrlmError(f"champion model {source} is not a readable directory from this task")
        return path
    import mlflow.artifacts

    dest.mkdir(parents=True, exist_ok=True)
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dest)))
    except Exception as e:  # storage errors vary by backend
        raise SrlmError(f"champion model {source} cannot be downloaded: {type(e).__name__}: {e}") from None


def validate(ctx: RunContext, *, groups: Mapping[str, Any], base_model_kind: str = "tiny", eft_build: bool = False,
             iterations: int = 3, hardware: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Check everything that can be checked before any GPU work (``srlm.validation``); logs the check.

    ``groups`` holds every settings group and the ``mlflow`` settings, which validation checks with
    the rest (one error lists every problem), so ``ctx`` only brings the KFP run id.
    """
    from srlm import validation

    stats = validation.validate(groups, ctx.kfp_run_id, base_model_kind=base_model_kind, eft_build=eft_build,
                                iterations=iterations, hardware=hardware)
    tracked = RunContext.of(groups.get("mlflow"), ctx.kfp_run_id)
    params = {"base_model_kind": base_model_kind, "eft_build": eft_build, "iterations": iterations,
              "base_model_uri": stats["base_model_uri"], "chat_template": stats["chat_template"]}
    log(tracked, "validate", params, stats)
    return stats
