"""Validation, model registration and the promotion gate (MLflow)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Model, Output

from components.images import image


@dsl.component(base_image=image("validate"), install_kfp_package=False)
def validate(
    base_model: dict, data: dict, sampling: dict, judging: dict, training: dict, evaluation: dict, mlflow: dict,
    kfp_run_id: str, base_model_kind: str, eft_build: bool, iterations: int, hardware: dict, metrics: Output[Metrics],
) -> NamedTuple("Checked", [("base_model_uri", str), ("chat_template", str)]):
    """Check settings, data, templates, MLflow, the promotion rule and (``hardware``: the GPUs each task kind gets)
    that every stage fits its GPUs, before any GPU work; the base model URI (for the importer) and the chat
    template M0 gets ("" = its own).

    The output type is spelled inline: KFP ships only this function's source to the container."""
    from srlm import stages

    groups = dict(base_model=base_model, data=data, sampling=sampling, judging=judging, training=training,
                  evaluation=evaluation, mlflow=mlflow)
    stats = stages.run_task("validate", metrics, None, None, kfp_run_id, groups=groups,
                            base_model_kind=base_model_kind, eft_build=eft_build, iterations=iterations,
                            hardware=hardware)
    return stats["base_model_uri"], stats["chat_template"]


@dsl.component(base_image=image("register"), install_kfp_package=False)
def register(
    model: Input[Model], evaluation: Input[Dataset], iteration: int, parent_version: str, mlflow: dict,
    kfp_run_id: str, metrics: Output[Metrics], model_volume: str = "",
) -> str:
    """Register M(t) by reference in the MLflow registry (lineage tags, key metrics, alias iter-<t>); the version."""
    from srlm import stages

    return stages.run_task("register", metrics, None, mlflow, kfp_run_id, iteration, model=model.path,
                           model_uri=model.uri, evaluation=evaluation.path, parent_version=parent_version,
                           model_volume=model_volume)["version"]


@dsl.component(base_image=image("gate"), install_kfp_package=False)
def gate(
    evaluation: dict, model: Input[Model], judge_model: Input[Model], eft: Input[Dataset], version: str,
    mlflow: dict, kfp_run_id: str, report: Output[Markdown], run_report: Output[HTML], metrics: Output[Metrics],
    model_volume: str = "",
):
    """Set challenger on the newest M(t); move champion only when the promotion rule holds; the run's report
    (every M(t)'s numbers as plots, one self-contained HTML page)."""
    from srlm import stages

    stages.run_task("gate", metrics, evaluation, mlflow, kfp_run_id, version=version, model=model.path,
                    judge_model=judge_model.path, eft=eft.path, report=report.path, run_report=run_report.path,
                    model_volume=model_volume)


@dsl.component(base_image=image("finalize"), install_kfp_package=False)
def finalize(mlflow: dict, kfp_run_id: str, status: dsl.PipelineTaskFinalStatus, metrics: Output[Metrics]):
    """The run's exit handler: when the run failed, its MLflow parent run ends FAILED naming the failed stage and
    the model versions it registered are tagged so (never promoted)."""
    from srlm import stages

    stages.run_task("finalize", metrics, None, mlflow, kfp_run_id,
                    status={"state": status.state, "error_message": status.error_message})
