"""Data components: the tiny base model, the seed data and the (optional) EFT build."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.images import image


@dsl.component(base_image=image("tiny_model"), install_kfp_package=False)
def tiny_model(base_model: dict, mlflow: dict, kfp_run_id: str, model: Output[Model], metrics: Output[Metrics]):
    """Build the tiny Llama-style base model M0 locally (BPE tokenizer trained on the seed text)."""
    from srlm import steps

    steps.to_kfp(metrics, steps.tiny_model(base_model, model.path, {**mlflow, "kfp_run_id": kfp_run_id}))


@dsl.component(base_image=image("seed"), install_kfp_package=False)
def seed_data(data: dict, mlflow: dict, kfp_run_id: str, seed: Output[Dataset], metrics: Output[Metrics]):
    """Seed data directory: IFT + EFT (bundled), IFT + EFT pool (OpenAssistant), or the user's files."""
    from srlm import steps

    steps.to_kfp(metrics, steps.seed_data(data, seed.path, {**mlflow, "kfp_run_id": kfp_run_id}))


@dsl.component(base_image=image("eft"), install_kfp_package=False)
def build_eft(
    data: dict, baseline: Input[Model], seed: Input[Dataset], mlflow: dict, kfp_run_id: str,
    eft: Output[Dataset], metrics: Output[Metrics],
):
    """EFT data: the SFT baseline judges the pool; judgements that agree with human ranks are kept."""
    from srlm import steps

    stats = steps.build_eft(data, baseline.path, seed.path, eft.path, {**mlflow, "kfp_run_id": kfp_run_id})
    steps.to_kfp(metrics, stats)
