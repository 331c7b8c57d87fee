"""One self-rewarding iteration as a sub-pipeline: M(t-1) -> M(t), evaluated and registered.

prompts -> candidates -> self-judging -> pairs -> DPO -> evaluation (RM metrics + win rate vs
M(t-1)) -> registration. The parent pipeline calls it once per DPO round, with the display name
"Iteration <t>"; its outputs are M(t) and its registry version (the next round's parent version).
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Model

import components as c
from pipelines.settings import PipelineSettings, configure


class Outputs(NamedTuple):
    model: Model
    version: str


def make_iteration(settings: PipelineSettings):
    """The iteration sub-pipeline with ``settings``' task configuration (GPUs, tolerations, env, caching)."""

    @dsl.pipeline(name="srlm-iteration", description="One self-rewarding round: M(t-1) -> M(t), evaluated and registered.")
    def iteration(
        model: Input[Model],
        judge_model: Input[Model],
        seed: Input[Dataset],
        eft: Input[Dataset],
        sampling: dict,
        judging: dict,
        training: dict,
        evaluation: dict,
        mlflow: dict,
        iteration: int,
        parent_version: str,
    ) -> Outputs:
        run = {"mlflow": mlflow, "kfp_run_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER, "iteration": iteration}
        prompts = c.generate_prompts(sampling=sampling, model=model, seed=seed, **run)
        configure(prompts, "prompts", settings, "Generate prompts")
        candidates = c.sample_candidates(sampling=sampling, model=model, prompts=prompts.outputs["prompts"], **run)
        configure(candidates, "sample", settings, "Sample candidates")
        judged = c.judge_candidates(judging=judging, model=model, candidates=candidates.outputs["candidates"], **run)
        configure(judged, "judge", settings, "Self-judge")
        pairs = c.build_pairs(judging=judging, judgements=judged.outputs["judgements"], **run)
        configure(pairs, "pairs", settings, "Build pairs")
        trained = c.dpo(training=training, model=model, pairs=pairs.outputs["pairs"], **run)
        configure(trained, "dpo", settings, "DPO")
        new_model = trained.outputs["trained_model"]
        evaluated = c.evaluate(evaluation=evaluation, model=new_model, previous=model, judge_model=judge_model,
                               eft=eft, **run)
        configure(evaluated, "evaluate", settings, "Evaluate")
        registered = c.register_model(model=new_model, evaluation_details=evaluated.outputs["details"],
                                      parent_version=parent_version, **run)
        configure(registered, "register", settings, "Register")
        return Outputs(model=new_model, version=registered.outputs["Output"])

    return iteration
