"""Data components: the tiny base model, the seed data and the (optional) EFT build."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.images import image


@dsl.component(base_image=image("tiny_model"), install_kfp_package=False)
def tiny_model(
    base_model: dict, mlflow: dict, kfp_run_id: str, model: Output[Model], metrics: Output[Metrics], model_volume: str = "",
):
    """Build the tiny Llama-style base model M0 locally (BPE tokenizer trained on the seed text); with a
    ``model_volume``, stored there (the artifact refers to it)."""
    from srlm import stages

    stats = stages.run_task("tiny_model", metrics, base_model, mlflow, kfp_run_id, out=model.path,
                            model_volume=model_volume)
    model.metadata.update(stats.get("stored_model") or {})


@dsl.component(base_image=image("seed"), install_kfp_package=False)
def seed(data: dict, mlflow: dict, kfp_run_id: str, seed: Output[Dataset], metrics: Output[Metrics]):
    """Seed data directory: IFT + EFT (bundled, testbed), IFT + EFT pool (OpenAssistant), or the user's files."""
    from srlm import stages

    stages.run_task("seed", metrics, data, mlflow, kfp_run_id, out=seed.path)


@dsl.component(base_image=image("build_eft"), install_kfp_package=False)
def build_eft(
    data: dict, baseline: Input[Model], seed: Input[Dataset], mlflow: dict, kfp_run_id: str,
    eft: Output[Dataset], metrics: Output[Metrics], model_volume: str = "",
):
    """EFT data: the SFT baseline judges the pool; judgements that agree with human ranks are kept."""
    from srlm import stages

    stages.run_task("build_eft", metrics, data, mlflow, kfp_run_id, model=baseline.path, pool=seed.path, out=eft.path,
                    model_volume=model_volume)
