"""Training components: seed SFT (M0 -> M1, or the IFT-only SFT baseline) and a DPO round."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.images import image


@dsl.component(base_image=image("sft"), install_kfp_package=False)
def sft(
    training: dict, base_model: Input[Model], seed: Input[Dataset], eft: Input[Dataset], with_eft: bool,
    mlflow: dict, kfp_run_id: str, model: Output[Model], metrics: Output[Metrics], chat_template: str = "",
    model_volume: str = "",
):
    """Seed SFT on IFT + EFT data: M0 -> M1 (with_eft=False: the IFT-only SFT baseline); ``chat_template`` is
    M0's when it has none (M1 is saved with it); with a ``model_volume``, M1 is stored there (the artifact refers to it)."""
    from srlm import stages

    stats = stages.run_task("sft", metrics, training, mlflow, kfp_run_id, model=base_model.path, ift=seed.path,
                            eft=eft.path if with_eft else None, out=model.path, chat_template=chat_template,
                            model_volume=model_volume)
    model.metadata.update(stats.get("stored_model") or {})


@dsl.component(base_image=image("dpo"), install_kfp_package=False)
def dpo(
    training: dict, model: Input[Model], pairs: Input[Dataset], iteration: int, mlflow: dict, kfp_run_id: str,
    trained_model: Output[Model], metrics: Output[Metrics], model_volume: str = "",
):
    """One DPO round on the round's preference pairs: M(t-1) -> M(t), reference = M(t-1); with a ``model_volume``,
    M(t) is stored there (the artifact refers to it)."""
    from srlm import stages

    stats = stages.run_task("dpo", metrics, training, mlflow, kfp_run_id, iteration, model=model.path,
                            pairs=pairs.path, out=trained_model.path, model_volume=model_volume)
    trained_model.metadata.update(stats.get("stored_model") or {})
