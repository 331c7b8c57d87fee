"""Pipeline steps: what each KFP component calls, with plain values in and flat metrics out.

Every step takes its settings *group* (a dict, as the pipeline parameter carries it), input and
output paths, and an ``mlflow`` settings dict; it builds the stage config, runs the stage, logs a
child run to MLflow (when enabled) and returns a flat ``{name: number}`` dict that the component
writes into its KFP ``Metrics`` output. No KFP import here: the components stay a few lines and
everything below is testable without a pipeline.

Settings groups (pipeline parameters). Each is a dict; a missing key keeps the preset's value::

    base_model  {"preset": "tiny", "tiny": {TinyModelConfig...}}          (tiny base model)
                {"uri": "s3://bucket/models/Llama-2-70b-hf"}               (a Hugging Face model directory)
    data        {"preset", "seed": {SeedConfig...}, "eft": {EFTConfig...}, "testbed": {TestbedConfig...},
                 "files": {"ift": path, "eft_train": path, "eft_eval": path, "eft_pool": path}}
    sampling    {"preset", "threads", "prompts": {PromptGenConfig...}, "candidates": {SamplingConfig...}}
    judging     {"preset", "threads", "judge": {JudgeConfig...}, "pairs": {PairsConfig...}}
    training    {"preset", "threads", "sft": {SFTConfig...}, "dpo": {DPOConfig...}}
    evaluation  {"preset", "threads", "rm": {RMEvalConfig...}, "winrate": {WinRateConfig...}, "verify": {VerifyConfig...},
                 "prompts": path (head-to-head prompts; default: the EFT eval prompts),
                 "promotion": {PromotionRule...}}
    mlflow      {"enabled": true, "experiment": "srlm", "model_name": "srlm",
                 "artifact_location": optional, "kfp_run_id": set by the component}

``preset`` (paper | tiny) applies to every config of the group; ``threads``, ``backend`` and
``dtype`` at group level apply to each of the group's configs that has that setting; a stage's
own dict wins. Settings given at run time replace the whole group dict (KFP does not merge), so
each group only needs what differs from its preset.

Artifacts: the seed data and the EFT data are directories (``ift.jsonl``, ``eft_train.jsonl``,
``eft_eval.jsonl``, or ``eft_pool.jsonl``); prompts, candidates, judgements and pairs are JSONL
files; models are Hugging Face directories with ``srlm_lineage.json``; an evaluation writes a
directory (``rm/``, ``winrate/``, ``summary.json``) and a Markdown report.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import logging
import shutil
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from srlm.config import StageConfig
from srlm.errors import SrlmError
from srlm.metrics import RM_METRICS, numeric_metrics

log = logging.getLogger(__name__)

# group -> {key: (module, config class)}
CONFIGS: dict[str, dict[str, tuple[str, str]]] = {
    "base_model": {"tiny": ("tiny_model", "TinyModelConfig")},
    "data": {"seed": ("seed_data", "SeedConfig"), "eft": ("eft", "EFTConfig"), "testbed": ("testbed", "TestbedConfig")},
    "sampling": {"prompts": ("prompts", "PromptGenConfig"), "candidates": ("sampling", "SamplingConfig")},
    "judging": {"judge": ("judge", "JudgeConfig"), "pairs": ("pairs", "PairsConfig")},
    "training": {"sft": ("training", "SFTConfig"), "dpo": ("training", "DPOConfig")},
    "evaluation": {"rm": ("evaluation", "RMEvalConfig"), "winrate": ("evaluation", "WinRateConfig"),
                   "verify": ("verifiers", "VerifyConfig"), "promotion": ("tracking", "PromotionRule")},
}
SHARED_KEYS = ("threads", "backend", "dtype")
EXTRA_KEYS = {"base_model": ("uri",), "data": ("files",), "evaluation": ("prompts",)}
MLFLOW_KEYS = ("enabled", "experiment", "model_name", "artifact_location", "kfp_run_id")
DATA_FILES = {"ift": "ift", "eft_train": "eft", "eft_eval": "eft_eval", "eft_pool": "eft_eval"}



# --------------------------------------------------------------------------- settings


def config_class(group: str, key: str) -> type[StageConfig]:
    module, name = CONFIGS[group][key]
    return getattr(importlib.import_module(f"srlm.{module}"), name)


def check_group(name: str, group: Mapping[str, Any] | None) -> dict[str, Any]:
    """The group as a dict; SrlmError naming the group for anything that is not a known key."""
    if group is None:
        return {}
    if not isinstance(group, Mapping):
        raise SrlmError(f"{name}: expected a mapping of settings, got {type(group).__name__} {group!r}")
    known = {"preset", *SHARED_KEYS, *CONFIGS.get(name, {}), *EXTRA_KEYS.get(name, ())}
    unknown = sorted(set(group) - known)
    if unknown:
        raise SrlmError(f"{name}: unknown key(s) {unknown}; known: {sorted(known)}")
    return dict(group)


def stage_config(group_name: str, group: Mapping[str, Any] | None, key: str) -> Any:
    """Build ``key``'s config of a settings group: its preset, then shared keys, then its own dict."""
    group = check_group(group_name, group)
    cls = config_class(group_name, key)
    own = group.get(key) or {}
    if not isinstance(own, Mapping):
        raise SrlmError(f"{group_name}.{key}: expected a mapping of {cls.__name__} settings, got {own!r}")
    fields = {f.name for f in dataclasses.fields(cls)}
    shared = {k: group[k] for k in SHARED_KEYS if k in group and k in fields}
    preset = group.get("preset") or None
    if preset and preset != "paper" and preset not in cls.PRESETS:
        preset = None  # a config without that preset keeps its defaults (e.g. PromotionRule)
    try:
        return cls.load(preset, **{**shared, **own})
    except SrlmError as e:
        raise SrlmError(f"{group_name}.{key}: {e}") from None


def _params(config: Any, **paths: Any) -> dict[str, Any]:
    return {**config.to_dict(), **{f"path.{k}": str(v) for k, v in paths.items() if v is not None}}


# --------------------------------------------------------------------------- metrics and MLflow


def to_kfp(metrics_artifact: Any, values: Mapping[str, Any]) -> None:
    """Write the numeric entries of ``values`` into a KFP ``Metrics`` artifact (sorted, for a stable UI)."""
    for key, value in sorted(numeric_metrics(values).items()):
        metrics_artifact.log_metric(key, value)


def mlflow_enabled(mlflow: Mapping[str, Any] | None) -> bool:
    return bool(mlflow) and bool(mlflow.get("enabled", True))


def _mlflow(mlflow: Mapping[str, Any] | None) -> dict[str, Any]:
    settings = check_mlflow(mlflow)
    if not settings.get("kfp_run_id"):
        raise SrlmError("mlflow.kfp_run_id is empty: the component passes the KFP run id")
    return settings


def check_mlflow(mlflow: Mapping[str, Any] | None) -> dict[str, Any]:
    if mlflow is None:
        return {"enabled": False}
    if not isinstance(mlflow, Mapping):
        raise SrlmError(f"mlflow: expected a mapping of settings, got {mlflow!r}")
    unknown = sorted(set(mlflow) - set(MLFLOW_KEYS))
    if unknown:
        raise SrlmError(f"mlflow: unknown key(s) {unknown}; known: {list(MLFLOW_KEYS)}")
    settings = {"enabled": True, "experiment": "srlm", "model_name": "srlm", **mlflow}
    if settings["enabled"]:
        for key in ("experiment", "model_name"):
            if not str(settings.get(key) or "").strip():
                raise SrlmError(f"mlflow.{key} is empty")
    return settings


def log_stage(
    mlflow: Mapping[str, Any] | None,
    stage: str,
    params: Mapping[str, Any],
    metrics: Mapping[str, Any],
    artifacts: Mapping[str, str | Path] | None = None,
    iteration: int | None = None,
) -> str | None:
    """Log one stage as a child run of the pipeline run (when MLflow is enabled); its run id."""
    if not mlflow_enabled(mlflow):
        return None
    from srlm import tracking

    settings = _mlflow(mlflow)
    files = {name: str(path) for name, path in (artifacts or {}).items() if path and Path(path).exists()}
    return tracking.log_stage(
        settings["experiment"], settings["kfp_run_id"], stage, dict(params), dict(metrics), files or None, iteration
    )


@contextlib.contextmanager
def _timed(stats: dict[str, Any]) -> Iterator[None]:
    started = time.perf_counter()
    yield
    stats["wall_seconds"] = round(time.perf_counter() - started, 2)


@dataclasses.dataclass(frozen=True)
class Head:
    """An artifact made of the first ``lines`` lines of a JSONL file (a sample of a large output)."""

    path: str | Path
    lines: int

    def write(self, dest: Path) -> Path | None:
        if not Path(self.path).is_file():
            return None
        with Path(self.path).open(encoding="utf-8") as f:
            dest.write_text("".join(line for _, line in zip(range(self.lines), f)), encoding="utf-8")
        return dest


def _finish(
    mlflow: Mapping[str, Any] | None,
    stage: str,
    params: Mapping[str, Any],
    stats: Mapping[str, Any],
    artifacts: Mapping[str, str | Path | Head | None] | None = None,
    iteration: int | None = None,
) -> dict[str, float]:
    """Log the stage (params, numeric stats, small artifacts) and return its flat metrics."""
    metrics = numeric_metrics(stats)
    if mlflow_enabled(mlflow):
        with tempfile.TemporaryDirectory(prefix="srlm-artifacts-") as tmp:
            files: dict[str, str | Path] = {}
            for name, spec in (artifacts or {}).items():
                path = spec.write(Path(tmp) / Path(name).name) if isinstance(spec, Head) else spec
                if path is not None:
                    files[name] = path
            log_stage(mlflow, stage, params, metrics, files, iteration)
    return metrics


# --------------------------------------------------------------------------- data


def _data_files(data: Mapping[str, Any]) -> dict[str, str]:
    files = data.get("files") or {}
    if not isinstance(files, Mapping):
        raise SrlmError(f"data.files: expected a mapping of name -> path, got {files!r}")
    unknown = sorted(set(files) - set(DATA_FILES))
    if unknown:
        raise SrlmError(f"data.files: unknown file name(s) {unknown}; known: {list(DATA_FILES)}")
    return {k: str(v) for k, v in files.items() if v}


def tiny_model(base_model: Mapping[str, Any], out: str, mlflow: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Build the tiny Llama-style base model (M0) locally."""
    from srlm import tiny_model as tm

    config = stage_config("base_model", base_model, "tiny")
    stats: dict[str, Any] = {}
    with _timed(stats):
        stats.update(tm.run(config, out))
    return _finish(mlflow, "tiny_model", _params(config, out=out), stats, iteration=0)


def seed_data(data: Mapping[str, Any], out: str, mlflow: Mapping[str, Any] | None = None) -> dict[str, float]:
    """Write the seed directory: the bundled set or OpenAssistant data, or the user's own files.

    With ``data.files.ift`` the user's files are the seed data (each validated, copied in);
    otherwise the seed stage writes its parts and any ``eft_*`` files given replace theirs.
    """
    from srlm import seed_data as sd
    from srlm.io import atomic_path, check_output_free, read_jsonl, write_jsonl

    data = check_group("data", data)
    files = _data_files(data)
    config = stage_config("data", data, "seed")
    given = {name: read_jsonl(path, DATA_FILES[name]) for name, path in files.items()}  # validated before writing
    stats: dict[str, Any] = {"user_files": len(given)}
    with _timed(stats):
        check_output_free(out)
        with atomic_path(out, directory=True) as tmp:
            if "ift" not in given:
                stats.update(sd.run(config, tmp / "seed", testbed=stage_config("data", data, "testbed")))
                for part in (tmp / "seed").iterdir():
                    part.rename(tmp / part.name)
                (tmp / "seed").rmdir()
            for name, records in given.items():
                stats[name] = write_jsonl(tmp / f"{name}.jsonl", records, DATA_FILES[name])
    return _finish(mlflow, "seed_data", _params(config, out=out, **files), stats)


def build_eft(
    data: Mapping[str, Any], model: str, seed_dir: str, out: str, mlflow: Mapping[str, Any] | None = None
) -> dict[str, float]:
    """EFT data: the SFT baseline ``model`` judges the seed's EFT pool (skipped when the seed has EFT data)."""
    from srlm import eft

    config = stage_config("data", data, "eft")
    seed = Path(seed_dir)
    stats: dict[str, Any] = {}
    with _timed(stats):
        if (seed / "eft_train.jsonl").is_file() and (seed / "eft_eval.jsonl").is_file():
            Path(out).mkdir(parents=True, exist_ok=True)
            for name in ("eft_train.jsonl", "eft_eval.jsonl"):
                shutil.copyfile(seed / name, Path(out) / name)
            stats["skipped"] = 1
            log.info("EFT build skipped: %s already holds eft_train.jsonl and eft_eval.jsonl", seed)
        else:
            pool = seed / "eft_pool.jsonl"
            if not pool.is_file():
                raise SrlmError(f"{seed}: no eft_pool.jsonl (and no eft_train/eft_eval.jsonl) to build EFT data from")
            stats.update(eft.run(config, model, pool, out))
            stats["skipped"] = 0
    return _finish(mlflow, "build_eft", _params(config, model=model, seed=seed_dir, out=out), stats, iteration=0)


# --------------------------------------------------------------------------- training


def sft(
    training: Mapping[str, Any],
    model: str,
    seed_dir: str,
    eft_dir: str,
    out: str,
    with_eft: bool = True,
    mlflow: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """Seed SFT on IFT (+ EFT): M0 -> M1; ``with_eft=False`` trains the SFT baseline (IFT only)."""
    from srlm import training as tr

    config = stage_config("training", training, "sft")
    eft = Path(eft_dir) / "eft_train.jsonl" if with_eft else None
    if eft is not None and not eft.is_file():
        raise SrlmError(f"{eft_dir}: no eft_train.jsonl for seed SFT on IFT + EFT")
    ift = Path(seed_dir) / "ift.jsonl"
    stats: dict[str, Any] = {}
    with _timed(stats):
        stats.update(tr.run_sft(config, model=model, ift=ift, eft=eft, out=out))
    stage = "sft" if with_eft else "sft_baseline"
    return _finish(mlflow, stage, _params(config, model=model, ift=ift, eft=eft, out=out), stats,
                   iteration=1 if with_eft else 0)


def dpo(
    training: Mapping[str, Any], model: str, pairs: str, out: str, iteration: int, mlflow: Mapping[str, Any] | None = None
) -> dict[str, float]:
    """One DPO round: M(t-1) (also the reference) -> M(t) on that round's pairs."""
    from srlm import training as tr

    config = stage_config("training", training, "dpo")
    stats: dict[str, Any] = {}
    with _timed(stats):
        stats.update(tr.run_dpo(config, model, pairs, out))
    return _finish(mlflow, "dpo", _params(config, model=model, pairs=pairs, out=out), stats, iteration=iteration)


# --------------------------------------------------------------------------- one round's data


def generate_prompts(
    sampling: Mapping[str, Any], model: str, seed_dir: str, out: str, iteration: int,
    mlflow: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """M(t-1) writes new prompts, Self-Instruct style, few-shot from the seed IFT prompts."""
    from srlm import prompts

    config = stage_config("sampling", sampling, "prompts")
    seeds = Path(seed_dir) / "ift.jsonl"
    stats: dict[str, Any] = {}
    with _timed(stats):
        if config.source == "file":
            source = Path(config.file or Path(seed_dir) / "prompts.jsonl")
            stats.update(prompts.from_file(config, source, iteration, out))
        else:
            stats.update(prompts.run(config, model, out, seed_prompts=seeds))
    return _finish(mlflow, "prompts", _params(config, model=model, seed_prompts=seeds, out=out), stats,
                   {"prompts_sample.jsonl": Head(out, 20)}, iteration)


def sample(
    sampling: Mapping[str, Any], model: str, prompts: str, out: str, iteration: int,
    mlflow: Mapping[str, Any] | None = None, shard: int = 0, shards: int = 1,
) -> dict[str, float]:
    """M(t-1) samples N candidate replies per prompt; with ``shards`` > 1, shard ``shard`` of them (see ``merge``)."""
    from srlm import sampling as sm

    config = stage_config("sampling", sampling, "candidates")
    part = _shard(shard, shards)
    stats: dict[str, Any] = {}
    with _timed(stats):
        stats.update(sm.run(config, model, prompts, out, shard=part))
    params = _params(config, model=model, prompts=prompts, out=out)
    if part:
        return _finish(mlflow, "sample_shard", {**params, "shard": shard, "shards": shards}, stats, iteration=iteration)
    return _finish(mlflow, "sample", params, stats, {"candidates_sample.jsonl": Head(out, 5)}, iteration)


def judge(
    judging: Mapping[str, Any], model: str, candidates: str, out: str, iteration: int,
    mlflow: Mapping[str, Any] | None = None, shard: int = 0, shards: int = 1,
) -> dict[str, float]:
    """M(t-1) judges every candidate with the rubric (its own reward model); with ``shards`` > 1, shard ``shard``."""
    from srlm import judge as jd

    config = stage_config("judging", judging, "judge")
    part = _shard(shard, shards)
    stats: dict[str, Any] = {}
    with _timed(stats):
        stats.update(jd.run(config, model, candidates, out, shard=part))
    params = _params(config, model=model, candidates=candidates, out=out)
    if part:
        return _finish(mlflow, "judge_shard", {**params, "shard": shard, "shards": shards}, stats, iteration=iteration)
    return _finish(mlflow, "judge", params, stats, {"judgements_sample.jsonl": Head(out, 3)}, iteration)


# kind -> (module with merge_shards, the stage the merged output stands for, lines of its sample artifact)
MERGES = {"candidates": ("sampling", "sample", 5), "judgements": ("judge", "judge", 3)}


def merge(
    kind: str, shard_paths: list[str], out: str, iteration: int, mlflow: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """The K shard files of a sharded ``sample`` or ``judge`` (``kind`` candidates | judgements) as one file.

    The merged file and its stats are those of the unsharded stage, whatever K; it is logged as
    that stage (``sample`` / ``judge``), the shard tasks as ``sample_shard`` / ``judge_shard``.
    """
    from srlm.shards import shard_paths_param

    if kind not in MERGES:
        raise SrlmError(f"merge: unknown kind {kind!r}; known: {', '.join(MERGES)}")
    module, stage, lines = MERGES[kind]
    merge_shards = importlib.import_module(f"srlm.{module}").merge_shards
    stats: dict[str, Any] = {}
    with _timed(stats):
        stats.update(merge_shards(list(shard_paths), out))
    params = {"shards": len(shard_paths), **shard_paths_param(shard_paths), "path.out": str(out)}
    return _finish(mlflow, stage, params, stats, {f"{kind}_sample.jsonl": Head(out, lines)}, iteration)


def _shard(shard: int, shards: int) -> tuple[int, int] | None:
    """``(shard, shards)`` for a sharded step, None for the plain one (``shards`` = 1)."""
    from srlm.generation import check_shard

    k, total = check_shard((shard, shards))
    return (k, total) if total > 1 else None


def pairs(
    judging: Mapping[str, Any], judgements: str, out: str, iteration: int, mlflow: Mapping[str, Any] | None = None
) -> dict[str, float]:
    """Preference pairs: best vs worst mean score per prompt, ties dropped."""
    from srlm import pairs as pr

    config = stage_config("judging", judging, "pairs")
    stats: dict[str, Any] = {}
    with _timed(stats):
        stats.update(pr.run(config, judgements, out))
    return _finish(mlflow, "pairs", _params(config, judgements=judgements, out=out), stats,
                   {"pairs_sample.jsonl": Head(out, 20)}, iteration)


# --------------------------------------------------------------------------- evaluation


def eval_prompts(evaluation: Mapping[str, Any], eft_dir: str, out: str | Path) -> Path:
    """The head-to-head prompts: ``evaluation.prompts`` if set, else the held-out EFT eval prompts."""
    from srlm.io import read_jsonl, read_prompts, write_jsonl

    given = check_group("evaluation", evaluation).get("prompts")
    out = Path(out)
    if given:
        rows = read_prompts(given)
    else:
        items = read_jsonl(Path(eft_dir) / "eft_eval.jsonl", "eft_eval")
        rows = [{"id": str(item.get("id", f"eval-{i:04d}")), "prompt": item["prompt"]} for i, item in enumerate(items)]
    write_jsonl(out, rows, "prompt")
    return out


def evaluate(
    evaluation: Mapping[str, Any],
    model: str,
    previous: str,
    judge_model: str,
    eft_dir: str,
    out_dir: str,
    report: str,
    iteration: int,
    mlflow: Mapping[str, Any] | None = None,
    seed_dir: str | None = None,
) -> dict[str, float]:
    """M(t) as a reward model (EFT eval split) and head-to-head against M(t-1) (judged by ``judge_model``);
    with ``evaluation.verify.verifier`` set, also its answers checked by that verifier (``verifiers.run_verify``).

    Writes ``out_dir/rm/``, ``out_dir/winrate/``, ``out_dir/verify/`` (with a verifier),
    ``out_dir/summary.json`` (the key metrics that registration puts on the model version) and one
    Markdown ``report``.
    """
    from srlm import evaluation as ev
    from srlm import verifiers as vf
    from srlm.io import write_json
    from srlm.tracking import head_to_head_metrics

    rm_config = stage_config("evaluation", evaluation, "rm")
    win_config = stage_config("evaluation", evaluation, "winrate")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stats: dict[str, Any] = {}
    with _timed(stats):
        prompts = eval_prompts(evaluation, eft_dir, out / "prompts.jsonl")
        rm = ev.run_rm(rm_config, model, Path(eft_dir) / "eft_eval.jsonl", out / "rm")
        win = ev.run_winrate(win_config, model, previous, judge_model, prompts, out / "winrate")
        verify_config = stage_config("evaluation", evaluation, "verify")
        verified = None
        if verify_config.verifier:
            verify_prompts = vf.verify_prompts_path(verify_config, seed_dir)
            verified = vf.run_verify(verify_config, model, verify_prompts, out / "verify")
    summary: dict[str, Any] = {k: rm[k] for k in RM_METRICS if rm.get(k) is not None}
    summary["judge_parse_failure_rate"] = rm["judge_parse_failure_rate"]
    summary.update(head_to_head_metrics(win, "previous"))
    summary["mean_length"] = win["mean_length_a"]
    summary["mean_length_previous"] = win["mean_length_b"]
    if verified is not None:
        summary.update(verify_summary(verified))
    write_json(out / "summary.json", summary)
    text = (
        f"# Evaluation of M{iteration}\n\n"
        f"Head-to-head against the previous model M{iteration - 1} and reward-model metrics on the EFT eval split.\n\n"
        + (out / "winrate" / "report.md").read_text(encoding="utf-8").replace("# Head-to-head", "## Head-to-head", 1)
        + "\n\n"
        + (out / "rm" / "report.md").read_text(encoding="utf-8").replace("# Reward-model", "## Reward-model", 1)
    )
    if verified is not None:
        text += "\n\n" + (out / "verify" / "report.md").read_text(encoding="utf-8").replace("# Verifier", "## Verifier", 1)
    Path(report).parent.mkdir(parents=True, exist_ok=True)
    Path(report).write_text(text, encoding="utf-8")
    stats.update(summary)
    stats.update({"rm": rm, "winrate": win, **({"verify": verified} if verified is not None else {})})
    params = {
        "rm": rm_config.to_dict(), "winrate": win_config.to_dict(),
        "path.model": model, "path.previous": previous, "path.judge_model": judge_model, "path.prompts": str(prompts),
    }
    artifacts = {"report.md": report, "rm_metrics.json": out / "rm" / "metrics.json",
                 "winrate_metrics.json": out / "winrate" / "metrics.json", "summary.json": out / "summary.json"}
    if verified is not None:
        params["verify"] = verify_config.to_dict()
        artifacts["verify_metrics.json"] = out / "verify" / "metrics.json"
    return _finish(mlflow, "evaluate", params, stats, artifacts, iteration)


def verify_summary(verified: Mapping[str, Any]) -> dict[str, float]:
    """The verifier's headline numbers for summary.json and the model version's tags."""
    summary = {"verify_satisfied": verified["satisfied"], "verify_stderr": verified["stderr"],
               "verify_mean_length_words": verified["mean_length_words"]}
    summary.update({f"verify_satisfied_{kind}": m["satisfied"] for kind, m in verified["by_kind"].items()})
    if verified.get("judge"):
        summary["verify_judge_accuracy"] = verified["judge"]["accuracy"]
        summary["verify_judge_balanced_accuracy"] = verified["judge"]["balanced_accuracy"]
    return summary


# --------------------------------------------------------------------------- registry


def register(
    mlflow: Mapping[str, Any] | None,
    model_dir: str,
    model_uri: str,
    eval_dir: str,
    iteration: int,
    parent_version: str = "",
) -> dict[str, Any]:
    """Register M(t) by reference (its artifact URI) with lineage tags and key metrics; alias ``iter-<t>``.

    Returns the key metrics plus ``version`` (a string; "" when MLflow is disabled).
    """
    from srlm.modeldir import check_model_dir, read_lineage

    check_model_dir(model_dir)
    lineage = read_lineage(model_dir)
    summary_file = Path(eval_dir) / "summary.json"
    if not summary_file.is_file():
        raise SrlmError(f"{eval_dir}: no summary.json from the evaluation step")
    metrics = json.loads(summary_file.read_text(encoding="utf-8"))
    lineage_metrics = lineage.get("metrics") or {}
    for key in ("pairs", "train_loss", "final_loss"):
        if isinstance(lineage_metrics.get(key), (int, float)):
            metrics[key] = lineage_metrics[key]
    if not mlflow_enabled(mlflow):
        return {**metrics, "version": ""}
    from srlm import tracking

    settings = _mlflow(mlflow)
    started = time.perf_counter()
    tags = {"kfp_run_id": settings["kfp_run_id"]}
    run_id = log_stage(settings, "register", {"model_uri": model_uri, "parent_version": parent_version}, metrics,
                       {"srlm_lineage.json": Path(model_dir) / "srlm_lineage.json"}, iteration)
    version = tracking.register_model(
        settings["model_name"], model_uri, iteration, run_id=run_id, parent_version=parent_version or None,
        tags=tags, metrics=metrics, lineage=lineage,
    )
    return {**metrics, "version": version, "wall_seconds": round(time.perf_counter() - started, 2)}


def promotion_rule(evaluation: Mapping[str, Any] | None) -> Any:
    return stage_config("evaluation", evaluation, "promotion")


def promote_gate(
    evaluation: Mapping[str, Any],
    mlflow: Mapping[str, Any] | None,
    version: str,
    model: str,
    judge_model: str,
    eft_dir: str,
    report: str,
    work_dir: str | None = None,
) -> dict[str, Any]:
    """Set ``challenger`` on the newest M(t) and move ``champion`` when the promotion rule holds.

    When the current champion is neither the challenger nor its parent (a champion from an earlier
    pipeline run), the challenger first plays a head-to-head against it (judged by ``judge_model``)
    so the rule compares like with like. Writes a Markdown ``report`` of the decision.
    """
    rule = promotion_rule(evaluation)
    if not mlflow_enabled(mlflow):
        Path(report).write_text("# Promotion\n\nMLflow is disabled: nothing registered, nothing promoted.\n", encoding="utf-8")
        return {"promoted": 0.0, "skipped": 1.0}
    from srlm import tracking

    settings = _mlflow(mlflow)
    name = settings["model_name"]
    stats: dict[str, Any] = {}
    fresh: dict[str, float] = {}
    with _timed(stats):
        champion = current_champion(name)
        if champion is not None and champion["version"] not in (str(version), version_parent(name, version)):
            fresh = _against_champion(evaluation, model, champion, judge_model, eft_dir, work_dir)
        decision = tracking.promote(name, str(version), rule, metrics=fresh or None)
    Path(report).parent.mkdir(parents=True, exist_ok=True)
    Path(report).write_text(promotion_report(decision, fresh), encoding="utf-8")
    stats.update({"promoted": float(bool(decision["promoted"])), "compared_to_champion": float(bool(fresh)), **fresh})
    params = {"rule": rule.to_dict(), "challenger": decision["challenger"], "reason": decision["reason"],
              "champion_before": decision["champion_before"] or "", "champion_after": decision["champion_after"] or ""}
    metrics = _finish(settings, "promote", params, stats, {"promotion.md": report})
    tracking.end_pipeline_run(settings["experiment"], settings["kfp_run_id"])
    return metrics


def current_champion(name: str) -> dict[str, Any] | None:
    """``{version, source, tags, ...}`` of the ``champion`` alias of ``name``, or None."""
    from srlm import tracking

    return tracking.get_version(name, alias=tracking.CHAMPION)


def version_parent(name: str, version: str) -> str | None:
    from srlm import tracking

    found = tracking.get_version(name, str(version))
    return found["tags"].get("parent_version") if found else None


def _against_champion(
    evaluation: Mapping[str, Any], model: str, champion: Mapping[str, Any], judge_model: str, eft_dir: str,
    work_dir: str | None,
) -> dict[str, float]:
    from srlm import evaluation as ev
    from srlm.tracking import head_to_head_metrics

    config = stage_config("evaluation", evaluation, "winrate")
    with tempfile.TemporaryDirectory(prefix="srlm-gate-", dir=work_dir) as tmp:
        champion_dir = _local_model(champion["source"], Path(tmp) / "champion")
        prompts = eval_prompts(evaluation, eft_dir, Path(tmp) / "prompts.jsonl")
        win = ev.run_winrate(config, model, champion_dir, judge_model, prompts, Path(tmp) / "vs-champion")
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


def promotion_report(decision: Mapping[str, Any], fresh: Mapping[str, float]) -> str:
    lines = [
        "# Promotion gate",
        "",
        f"- Model: `{decision['name']}`",
        f"- Challenger: version {decision['challenger']}",
        f"- Champion before: {decision['champion_before'] or 'none'}; after: {decision['champion_after'] or 'none'}",
        f"- Promoted: **{'yes' if decision['promoted'] else 'no'}**",
        f"- Reason: {decision['reason']}",
        "",
        "Rule: " + ", ".join(f"{k} = {v!r}" for k, v in decision["rule"].items()),
    ]
    if fresh:
        lines += ["", "Head-to-head against the champion (measured by this gate): "
                  + ", ".join(f"{k} {v:.3f}" for k, v in sorted(fresh.items()))]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- validation


def validate(
    base_model: Mapping[str, Any],
    data: Mapping[str, Any],
    sampling: Mapping[str, Any],
    judging: Mapping[str, Any],
    training: Mapping[str, Any],
    evaluation: Mapping[str, Any],
    mlflow: Mapping[str, Any] | None,
    base_model_kind: str = "tiny",
    eft_build: bool = False,
    iterations: int = 3,
) -> dict[str, Any]:
    """Check everything that can be checked before any GPU work; one SrlmError listing every problem.

    Settings groups load into their configs; data files and templates are readable; the judge
    template is the same for EFT training, self-judging and RM evaluation; the base model is
    there; MLflow answers (then the experiment and the pipeline's parent run are created); the
    promotion rule is valid and, when a champion exists, has the metrics it needs on it.
    Returns counts plus ``base_model_uri`` (for the importer; "" for the tiny model).
    """
    started = time.perf_counter()
    problems: list[str] = []
    checks = 0

    def check(fn: Any, *args: Any) -> Any:
        nonlocal checks
        checks += 1
        try:
            return fn(*args)
        except SrlmError as e:
            problems.append(str(e))
        except (OSError, ValueError, TypeError) as e:
            problems.append(f"{type(e).__name__}: {e}")
        return None

    groups = {"base_model": base_model, "data": data, "sampling": sampling, "judging": judging,
              "training": training, "evaluation": evaluation}
    configs: dict[str, Any] = {}
    for group_name, group in groups.items():
        if check(check_group, group_name, group) is None:
            continue
        for key in CONFIGS[group_name]:
            if group_name == "base_model" and base_model_kind != "tiny":
                continue
            if group_name == "data" and key == "eft" and not eft_build:
                continue
            configs[f"{group_name}.{key}"] = check(stage_config, group_name, group, key)

    uri = ""
    if base_model_kind == "tiny":
        pass
    elif base_model_kind == "hf":
        uri = str((base_model or {}).get("uri") or "").strip() if isinstance(base_model, Mapping) else ""
        if not uri:
            problems.append("base_model.uri is empty: give the Hugging Face model directory (s3://..., a mounted path)")
        else:
            check(_check_model_uri, uri)
    else:
        problems.append(f"unknown base model kind {base_model_kind!r} (compile-time setting: tiny | hf)")

    if isinstance(data, Mapping) and configs.get("data.seed") is not None:
        check(_check_data, data, configs["data.seed"], eft_build)
    if isinstance(evaluation, Mapping) and evaluation.get("prompts"):
        from srlm.io import read_prompts

        check(read_prompts, evaluation["prompts"])
    check(_check_templates, configs)
    if iterations < 1:
        problems.append(f"iterations must be >= 1 (compile-time setting), got {iterations}")

    rule = configs.get("evaluation.promotion")
    settings = check(check_mlflow, mlflow)
    if settings and settings.get("enabled"):
        if check(_check_mlflow_store, settings, groups) is not None and rule is not None:
            check(_check_rule_against_champion, settings["model_name"], rule)
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise SrlmError(f"validation found {len(problems)} problem(s) before any training or generation:\n{listing}")
    log.info("validation passed: %d checks", checks)
    stats = {"checks": checks, "problems": 0, "wall_seconds": round(time.perf_counter() - started, 2)}
    params = {"base_model_kind": base_model_kind, "eft_build": eft_build, "iterations": iterations, "base_model_uri": uri}
    if settings and settings.get("enabled"):
        log_stage(settings, "validate", params, stats)
    return {**stats, "base_model_uri": uri}


def _check_model_uri(uri: str) -> None:
    from srlm.modeldir import check_model_dir

    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme in ("", "file"):
        check_model_dir(urllib.parse.unquote(parsed.path) if parsed.scheme == "file" else uri)
    elif parsed.scheme not in ("s3", "gs", "minio", "oci", "https", "http"):
        raise SrlmError(f"base_model.uri {uri!r}: unsupported scheme {parsed.scheme!r} (use s3://, gs://, minio://, oci:// or a path)")


def _check_data(data: Mapping[str, Any], seed_config: Any, eft_build: bool) -> None:
    from srlm.io import read_jsonl

    files = _data_files(data)
    for name, path in files.items():
        read_jsonl(path, DATA_FILES[name])  # readable and valid, with file:line on the first bad record
    if "ift" not in files:
        source = seed_config.source
        if source not in ("bundled", "testbed") and not _looks_like_hub_id(source) and not Path(source).exists():
            raise SrlmError(f"data.seed.source {source!r}: no such file or directory (and not a hub id like OpenAssistant/oasst1)")
    has_eft = {"eft_train", "eft_eval"} <= set(files) or ("ift" not in files and seed_config.source in ("bundled", "testbed"))
    if not eft_build and not has_eft:
        raise SrlmError(
            "no EFT data: the seed source gives an EFT pool only; compile the pipeline with the EFT build "
            "(eft_build: true) or give data.files.eft_train and data.files.eft_eval"
        )
    if eft_build and not has_eft and "ift" in files and "eft_pool" not in files:
        raise SrlmError("data.files gives IFT data but neither eft_pool nor eft_train + eft_eval")


def _looks_like_hub_id(source: str) -> bool:
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "/")) and not Path(source).suffix


def _check_templates(configs: Mapping[str, Any]) -> None:
    """The rubric the model is trained to judge with (EFT) is the one it judges with and is evaluated with."""
    from srlm.judge import load_template

    used = {
        "training.sft.judge_template": getattr(configs.get("training.sft"), "judge_template", None),
        "judging.judge.template": getattr(configs.get("judging.judge"), "template", None),
        "evaluation.rm.template": getattr(configs.get("evaluation.rm"), "template", None),
    }
    verify = configs.get("evaluation.verify")
    if verify is not None and verify.verifier and verify.judge:
        used["evaluation.verify.judge_template"] = verify.judge_template
    if configs.get("data.eft") is not None:
        used["data.eft.template"] = configs["data.eft"].template
    used = {k: v for k, v in used.items() if v is not None}
    for value in set(used.values()):
        if value:
            load_template(value)
    if len(set(used.values())) > 1:
        shown = ", ".join(f"{k}={v or '(built-in)'}" for k, v in used.items())
        raise SrlmError(f"the judge template differs between stages ({shown}); the model judges with the rubric it was trained on: use one")


def _check_mlflow_store(settings: Mapping[str, Any], groups: Mapping[str, Any]) -> bool:
    from srlm import tracking

    tracking.check_reachable()
    tracking.ensure_experiment(settings["experiment"], settings.get("artifact_location") or None)
    if settings.get("kfp_run_id"):
        tracking.pipeline_run(settings["experiment"], settings["kfp_run_id"], params=dict(groups))
    return True


def _check_rule_against_champion(name: str, rule: Any) -> None:
    """A champion that lacks the RM metric the rule compares makes the gate fail at the end: say so now."""
    champion = current_champion(name)
    if champion is None or not rule.rm_metric or not rule.require_metrics:
        return
    key = f"metric.{rule.rm_metric}"
    if key not in champion["tags"]:
        raise SrlmError(
            f"promotion rule cannot be evaluated: champion {name} version {champion['version']} has no {key} tag "
            f"(rm_metric={rule.rm_metric!r}); set evaluation.promotion.rm_metric to one it has, '' to skip the RM check, "
            "or require_metrics=false"
        )
