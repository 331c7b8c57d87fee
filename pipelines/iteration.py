"""One self-rewarding iteration as a sub-pipeline: M(t-1) -> M(t), evaluated and registered.

prompts -> candidates -> self-judging -> pairs -> DPO -> evaluation (RM metrics + win rate vs
M(t-1)) -> registration. The parent pipeline calls it once per DPO round, with the display name
"Iteration <t>"; its outputs are M(t) and its registry version (the next round's parent version).

With ``settings.shards`` K > 1, sampling and judging fan out: a ``dsl.ParallelFor`` over the K
shards runs one GPU task per shard, and a CPU task merges the collected shard files into the
file a single task would have written (``sample_and_judge``). K = 1 keeps one task each.
"""

from typing import Any, NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Model

import components as c
from pipelines.settings import PipelineSettings, configure, run_id


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
        model_volume: str,
    ) -> Outputs:
        run = {"mlflow": mlflow, "kfp_run_id": run_id(settings), "iteration": iteration}
        models = {"model_volume": model_volume}  # the tasks that read or write models
        prompts = c.prompts(sampling=sampling, model=model, seed=seed, **models, **run)
        configure(prompts, "prompts", settings, "Generate prompts")
        judgements = sample_and_judge(settings, model, prompts.outputs["prompts"], sampling, judging, run, models)
        pairs = c.pairs(judging=judging, judgements=judgements, **run)
        configure(pairs, "pairs", settings, "Build pairs")
        trained = c.dpo(training=training, model=model, pairs=pairs.outputs["pairs"], **models, **run)
        configure(trained, "dpo", settings, "DPO")
        new_model = trained.outputs["trained_model"]
        evaluated = c.evaluate(evaluation=evaluation, model=new_model, previous=model, judge_model=judge_model,
                               eft=eft, seed=seed, judgements=judgements, **models, **run)
        configure(evaluated, "evaluate", settings, "Evaluate")
        registered = c.register(model=new_model, evaluation=evaluated.outputs["details"],
                                parent_version=parent_version, **models, **run)
        configure(registered, "register", settings, "Register")
        return Outputs(model=new_model, version=registered.outputs["Output"])

    return iteration


def sample_and_judge(settings: PipelineSettings, model: Any, prompts: Any, sampling: Any, judging: Any,
                     run: dict[str, Any], models: dict[str, Any]) -> Any:
    """Candidates for ``prompts`` and their self-judgements; returns the judgements artifact.

    K = ``settings.shards``. K = 1: one sampling task, one judging task. K > 1: for each of the two
    steps, a ``dsl.ParallelFor`` over shards 0..K-1 (one task per shard, each with the step's GPU
    request) and a merge of the collected shard files. The merged files are identical for every K.
    """
    shards = settings.shards
    if shards == 1:
        sampled = c.sample(sampling=sampling, model=model, prompts=prompts, **models, **run)
        configure(sampled, "sample", settings, "Sample candidates")
        judged = c.judge(judging=judging, model=model, candidates=sampled.outputs["candidates"], **models, **run)
        configure(judged, "judge", settings, "Self-judge")
        return judged.outputs["judgements"]

    with dsl.ParallelFor(items=list(range(shards)), name=f"Sample candidates: {shards} shards") as k:
        sampled = c.sample(sampling=sampling, model=model, prompts=prompts, shard=k, shards=shards, **models,
                           **run)
        configure(sampled, "sample", settings, "Sample candidates (shard)")
    candidates = c.merge(stage="sample", shard_files=dsl.Collected(sampled.outputs["candidates"]), **run)
    configure(candidates, "merge", settings, "Merge candidate shards")

    with dsl.ParallelFor(items=list(range(shards)), name=f"Self-judge: {shards} shards") as k:
        judged = c.judge(judging=judging, model=model, candidates=candidates.outputs["merged"], shard=k,
                         shards=shards, **models, **run)
        configure(judged, "judge", settings, "Self-judge (shard)")
    judgements = c.merge(stage="judge", shard_files=dsl.Collected(judged.outputs["judgements"]), **run)
    configure(judgements, "merge", settings, "Merge judgement shards")
    return judgements.outputs["merged"]
