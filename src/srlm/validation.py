"""Validation: everything that can be checked before any GPU work, reported as one error listing every problem.

Settings groups load into their stages' configs (``srlm.stages``); data files and templates are
readable; the judge template is the same for EFT training, self-judging and RM evaluation; the
base model is there; MLflow answers (then the experiment and the pipeline's parent run are
created); the promotion rule is valid and, when a champion exists, has the metrics it needs.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from srlm.context import check_mlflow
from srlm.errors import SrlmError

log = logging.getLogger(__name__)

BASE_MODEL_KINDS = ("tiny", "hf")


def validate(groups: Mapping[str, Any], kfp_run_id: str = "", *, base_model_kind: str = "tiny",
             eft_build: bool = False, iterations: int = 3, hardware: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Check the pipeline's settings ``groups`` (every settings group plus ``mlflow``); SrlmError listing
    every problem. Returns counts plus ``base_model_uri`` (for the importer; "" for the tiny model).

    ``hardware`` is what the compiled pipeline gives each GPU task kind, ``{"training": {"gpus": 1,
    "gpu_memory_mib": 70000}, "generation": {...}}``: with it, a local base model gets the fit check."""
    from srlm import stages

    started = time.perf_counter()
    problems: list[str] = []
    checks = 0

    def check(fn: Callable[..., Any], *args: Any) -> Any:
        nonlocal checks
        checks += 1
        try:
            return fn(*args)
        except SrlmError as e:
            problems.append(str(e))
        except (OSError, ValueError, TypeError) as e:
            problems.append(f"{type(e).__name__}: {e}")
        return None

    configs: dict[str, Any] = {}
    for group_name, keys in stages.GROUPS.items():
        group = groups.get(group_name)
        if check(stages.check_group, group_name, group) is None:
            continue
        for key in keys:
            if group_name == "base_model" and base_model_kind != "tiny":
                continue
            if group_name == "data" and key == "eft" and not eft_build:
                continue
            configs[f"{group_name}.{key}"] = check(stages.group_config, group_name, group, key)

    uri, template = "", ""
    if base_model_kind == "hf":
        base_model = groups.get("base_model")
        base_model = base_model if isinstance(base_model, Mapping) else {}
        uri = str(base_model.get("uri") or "").strip()
        if not uri:
            problems.append("base_model.uri is empty: give the Hugging Face model directory (s3://..., a mounted path)")
        else:
            template = check(_check_base_model, uri, str(base_model.get("chat_template") or "auto")) or ""
            if hardware and urllib.parse.urlparse(uri).scheme in ("", "file"):
                check(_check_fit, urllib.parse.urlparse(uri).path, configs, hardware)
    elif base_model_kind not in BASE_MODEL_KINDS:
        problems.append(f"unknown base model kind {base_model_kind!r} (compile-time setting: tiny | hf)")

    data, evaluation = groups.get("data"), groups.get("evaluation")
    if isinstance(data, Mapping) and configs.get("data.seed") is not None:
        check(_check_data, data, configs["data.seed"], eft_build)
    if isinstance(evaluation, Mapping) and evaluation.get("prompts"):
        from srlm.io import read_prompts

        check(read_prompts, evaluation["prompts"])
    if isinstance(evaluation, Mapping):
        check(_check_benchmarks, evaluation.get("benchmarks"), configs)
    check(_check_templates, configs)
    if iterations < 1:
        problems.append(f"iterations must be >= 1 (compile-time setting), got {iterations}")

    rule = configs.get("evaluation.promotion")
    settings = check(check_mlflow, groups.get("mlflow"))
    if settings and settings.get("enabled"):
        group_settings = {name: groups.get(name) for name in stages.GROUPS}
        if check(_check_mlflow_store, settings, kfp_run_id, group_settings) is not None and rule is not None:
            check(_check_rule_against_champion, settings["model_name"], rule)
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise SrlmError(f"validation found {len(problems)} problem(s) before any training or generation:\n{listing}")
    log.info("validation passed: %d checks", checks)
    return {"checks": checks, "problems": 0, "wall_seconds": round(time.perf_counter() - started, 2),
            "base_model_uri": uri, "chat_template": template}


def _check_base_model(uri: str, chat_template: str) -> str:
    """A readable base model directory (when local) and the chat template the stages give M0: its text, or ""
    to keep the model's own. A remote model is checked by the stage that loads it."""
    from srlm import chat_templates
    from srlm.modeldir import check_model_dir

    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = urllib.parse.unquote(parsed.path) if parsed.scheme == "file" else uri
        check_model_dir(path, require_template=False)
        return chat_templates.resolve(chat_template, path)
    if parsed.scheme not in ("s3", "gs", "minio", "oci", "https", "http"):
        raise SrlmError(f"base_model.uri {uri!r}: unsupported scheme {parsed.scheme!r} (use s3://, gs://, minio://, oci:// or a path)")
    return chat_templates.resolve(chat_template, None)


def _check_fit(model: str, configs: Mapping[str, Any], hardware: Mapping[str, Any]) -> None:
    """Every training and generating stage fits the GPUs its task gets (``srlm.fit``), before hours of GPU time.
    A remote base model is estimated by hand: ``srlm plan --model <its config.json>``."""
    from srlm import fit

    if not (Path(model) / "config.json").is_file():
        return  # check_model_dir has said what is missing
    shape, problems = fit.model_shape(model), []
    training, generation = hardware.get("training") or {}, hardware.get("generation") or {}
    gpus = int(training.get("gpus") or 1)  # KFP hands numbers in a dict over as floats
    if training.get("gpu_memory_mib"):
        for stage in ("sft", "dpo"):
            config = configs.get(f"training.{stage}")
            if config is None:
                continue
            if config.uses_trainjob():  # the TrainJob's nodes, not this task, hold the GPUs
                nodes, per_node = config.nodes, max(1, config.gpus_per_node)
            elif config.gpus_per_node > gpus:
                problems.append(f"training.{stage}.gpus_per_node={config.gpus_per_node} but the compiled pipeline gives "
                                f"training tasks {gpus} GPU(s): compile with --set 'gpus={{\"training\": "
                                f"{config.gpus_per_node}}}' or set 0 (every GPU the task has)")
                continue
            else:
                nodes, per_node = 1, config.gpus_per_node or gpus
            layout = fit.Layout(nodes, per_node, config.strategy, training["gpu_memory_mib"] / 1024)
            try:
                fit.check_training(shape, config, layout, stage, model)
            except SrlmError as e:
                problems.append(str(e))
    if generation.get("gpu_memory_mib"):
        generators = {name: configs[key] for name, key in (("prompts", "sampling.prompts"), ("sample", "sampling.candidates"),
                                                           ("judge", "judging.judge"))
                      if configs.get(key) is not None and configs[key].backend != "openai"}
        generation_gpus = int(generation.get("gpus") or 1)
        for name, options in generators.items():
            if options.tensor_parallel_size > generation_gpus:
                problems.append(f"{name}: tensor_parallel_size={options.tensor_parallel_size} but the compiled pipeline "
                                f"gives generation tasks {generation_gpus} GPU(s): compile with --set 'gpus="
                                f"{{\"generation\": {options.tensor_parallel_size}}}'")
        layout = fit.Layout(gpu_memory_gib=generation["gpu_memory_mib"] / 1024)
        estimates = [fit.generation(shape, options, layout.gpu_memory_gib, name) for name, options in generators.items()]
        problems += fit.refusals(shape, estimates, layout, sft=None, dpo=None, generators=generators, name=model)
    if problems:
        raise SrlmError("the fit check (srlm plan) refuses this configuration: " + "; ".join(problems))


def _check_data(data: Mapping[str, Any], seed_config: Any, eft_build: bool) -> None:
    from srlm.io import read_jsonl
    from srlm.steps import DATA_FILES, check_data_files

    files = check_data_files(data.get("files"))
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


def _check_benchmarks(names: Any, configs: Mapping[str, Any]) -> None:
    """Each benchmark named in evaluation.benchmarks reads its files now (not after training); a promotion
    rule's benchmark_metric names one of them."""
    from srlm.benchmarks import BENCHMARKS, benchmark_of_metric, check_benchmarks

    names = check_benchmarks(names)
    for name in names:
        if configs.get(f"evaluation.{name}") is not None:
            BENCHMARKS[name].check(configs[f"evaluation.{name}"])
    rule = configs.get("evaluation.promotion")
    needed = benchmark_of_metric(rule.benchmark_metric) if rule is not None and rule.benchmark_metric else None
    if needed and needed not in names:
        raise SrlmError(f"evaluation.promotion.benchmark_metric={rule.benchmark_metric!r} needs {needed} in "
                        f"evaluation.benchmarks (now {names})")


def _check_mlflow_store(settings: Mapping[str, Any], kfp_run_id: str, groups: Mapping[str, Any]) -> bool:
    from srlm import tracking

    tracking.check_reachable()
    tracking.ensure_experiment(settings["experiment"], settings.get("artifact_location") or None)
    if kfp_run_id:
        tracking.pipeline_run(settings["experiment"], kfp_run_id, params=dict(groups))
    return True


def _check_rule_against_champion(name: str, rule: Any) -> None:
    """A champion that lacks the RM metric the rule compares makes the gate fail at the end: say so now."""
    from srlm.model_registry import get_version
    from srlm.promotion import CHAMPION, METRIC_TAG_PREFIX

    champion = get_version(name, alias=CHAMPION)
    if champion is None or not rule.require_metrics:
        return
    for setting, metric in (("rm_metric", rule.rm_metric), ("benchmark_metric", rule.benchmark_metric)):
        key = f"{METRIC_TAG_PREFIX}{metric}"
        if metric and key not in champion["tags"]:
            raise SrlmError(
                f"promotion rule cannot be evaluated: champion {name} version {champion['version']} has no {key} tag "
                f"({setting}={metric!r}); set evaluation.promotion.{setting} to one it has, '' to skip the check, "
                "or require_metrics=false"
            )
