"""The seed part as a sub-pipeline: M0 -> M1, evaluated and registered.

seed data [-> SFT baseline (IFT only) -> EFT build] -> seed SFT on IFT + EFT = M1 -> evaluate M1
-> register M1. The root pipeline calls it once ("Seed: M1"); its outputs are M1, the seed and
EFT directories every round reads, and M1's registry version (the first round's parent).
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Model

import components as c
from pipelines.settings import PipelineSettings, configure, run_id


class Outputs(NamedTuple):
    model: Model
    seed: Dataset
    eft: Dataset
    version: str


def make_seed(settings: PipelineSettings):
    """The seed sub-pipeline with ``settings``' task configuration (EFT build or not, GPUs, env, caching)."""

    @dsl.pipeline(name="srlm-seed", description="Seed data, seed SFT (M0 -> M1), M1 evaluated and registered.")
    def seed(
        base_model: Input[Model],
        data: dict,
        training: dict,
        evaluation: dict,
        mlflow: dict,
        chat_template: str,
        model_volume: str,
    ) -> Outputs:
        run = {"mlflow": mlflow, "kfp_run_id": run_id(settings)}
        models = {"model_volume": model_volume}  # the tasks that read or write models
        seed_task = configure(c.seed(data=data, **run), "seed", settings, "Seed data")
        seed_dir = seed_task.outputs["seed"]
        eft = seed_dir
        if settings.eft_build:
            baseline = c.sft(training=training, base_model=base_model, seed=seed_dir, eft=seed_dir, with_eft=False,
                             chat_template=chat_template, **models, **run)
            configure(baseline, "sft", settings, "SFT baseline (IFT only)")
            built = c.build_eft(data=data, baseline=baseline.outputs["model"], seed=seed_dir, **models, **run)
            eft = configure(built, "build_eft", settings, "EFT build").outputs["eft"]

        m1_task = c.sft(training=training, base_model=base_model, seed=seed_dir, eft=eft, with_eft=True,
                        chat_template=chat_template, **models, **run)
        m1 = configure(m1_task, "sft", settings, "M1: seed SFT (IFT + EFT)").outputs["model"]
        evaluated = c.evaluate(evaluation=evaluation, model=m1, previous=base_model, judge_model=m1, eft=eft,
                               seed=seed_dir, iteration=1, previous_chat_template=chat_template, **models, **run)
        configure(evaluated, "evaluate", settings, "Evaluate M1")
        registered = c.register(model=m1, evaluation=evaluated.outputs["details"], iteration=1, parent_version="",
                                **models, **run)
        configure(registered, "register", settings, "Register M1")
        return Outputs(model=m1, seed=seed_dir, eft=eft, version=registered.outputs["Output"])

    return seed
