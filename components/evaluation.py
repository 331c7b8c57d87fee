"""Evaluation component: reward-model metrics, head-to-head win rate against the previous model, verifier."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

from components.images import image


@dsl.component(base_image=image("evaluate"), install_kfp_package=False)
def evaluate(
    evaluation: dict, model: Input[Model], previous: Input[Model], judge_model: Input[Model], eft: Input[Dataset],
    seed: Input[Dataset], iteration: int, mlflow: dict, kfp_run_id: str,
    details: Output[Dataset], report: Output[Markdown], metrics: Output[Metrics], previous_chat_template: str = "",
    model_volume: str = "", judgements: Input[Dataset] = None,
):
    """M(t) as a reward model on the EFT eval split, M(t) vs M(t-1) judged by a fixed judge, (with a verifier
    set) its answers to held-out prompts checked by a program, the benchmarks named in evaluation.benchmarks,
    and the judge's drift against M(t-1)'s ``judgements`` of this round (none for M1)."""
    from srlm import stages

    stages.run_task("evaluate", metrics, evaluation, mlflow, kfp_run_id, iteration, model=model.path,
                    previous=previous.path, judge_model=judge_model.path, eft=eft.path, seed=seed.path,
                    out=details.path, report=report.path, previous_chat_template=previous_chat_template,
                    model_volume=model_volume, judgements=judgements.path if judgements else None)
