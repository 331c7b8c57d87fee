"""Evaluation component: reward-model metrics, head-to-head win rate against the previous model, verifier."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

from components.images import image


@dsl.component(base_image=image("evaluate"), install_kfp_package=False)
def evaluate(
    evaluation: dict, model: Input[Model], previous: Input[Model], judge_model: Input[Model], eft: Input[Dataset],
    seed: Input[Dataset], iteration: int, mlflow: dict, kfp_run_id: str,
    details: Output[Dataset], report: Output[Markdown], metrics: Output[Metrics],
):
    """M(t) as a reward model on the EFT eval split, M(t) vs M(t-1) judged by a fixed judge, and (with a
    verifier set) its answers to held-out prompts checked by a program."""
    from srlm import steps

    stats = steps.evaluate(evaluation, model.path, previous.path, judge_model.path, eft.path, details.path,
                           report.path, iteration, {**mlflow, "kfp_run_id": kfp_run_id}, seed_dir=seed.path)
    steps.to_kfp(metrics, stats)
