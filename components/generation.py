"""One round's data: prompt generation, candidate sampling, self-judging and preference pairs.

Sampling and judging can fan out: with ``shards`` K > 1 a task does shard ``shard`` of the work
and writes a shard file; ``merge`` takes the K shard files (``dsl.Collected`` of a
``dsl.ParallelFor``) and writes the output the unsharded task would have written.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.images import image


@dsl.component(base_image=image("prompts"), install_kfp_package=False)
def prompts(
    sampling: dict, model: Input[Model], seed: Input[Dataset], iteration: int, mlflow: dict, kfp_run_id: str,
    prompts: Output[Dataset], metrics: Output[Metrics], model_volume: str = "",
):
    """M(t-1) writes new prompts, Self-Instruct style (few-shot from the seed prompts, ROUGE-L filter)."""
    from srlm import stages

    stages.run_task("prompts", metrics, sampling, mlflow, kfp_run_id, iteration, model=model.path,
                    seed_prompts=seed.path, out=prompts.path, model_volume=model_volume)


@dsl.component(base_image=image("sample"), install_kfp_package=False)
def sample(
    sampling: dict, model: Input[Model], prompts: Input[Dataset], iteration: int, mlflow: dict, kfp_run_id: str,
    candidates: Output[Dataset], metrics: Output[Metrics], shard: int = 0, shards: int = 1, model_volume: str = "",
):
    """M(t-1) samples N candidate replies per prompt (with shards > 1: shard ``shard``'s prompts, a shard file)."""
    from srlm import stages

    stages.run_task("sample", metrics, sampling, mlflow, kfp_run_id, iteration, model=model.path,
                    prompts=prompts.path, out=candidates.path, shard=shard, shards=shards,
                    model_volume=model_volume)


@dsl.component(base_image=image("judge"), install_kfp_package=False)
def judge(
    judging: dict, model: Input[Model], candidates: Input[Dataset], iteration: int, mlflow: dict, kfp_run_id: str,
    judgements: Output[Dataset], metrics: Output[Metrics], shard: int = 0, shards: int = 1, model_volume: str = "",
):
    """M(t-1) judges every candidate with the additive 5-point rubric (with shards > 1: shard ``shard``'s replies)."""
    from srlm import stages

    stages.run_task("judge", metrics, judging, mlflow, kfp_run_id, iteration, model=model.path,
                    candidates=candidates.path, out=judgements.path, shard=shard, shards=shards,
                    model_volume=model_volume)


@dsl.component(base_image=image("merge"), install_kfp_package=False)
def merge(
    stage: str, shard_files: Input[list[Dataset]], iteration: int, mlflow: dict, kfp_run_id: str,
    merged: Output[Dataset], metrics: Output[Metrics],
):
    """The K shard files of a fanned-out sampling (stage sample) or judging (judge) task, as one file."""
    from srlm import stages

    stages.run_task("merge", metrics, None, mlflow, kfp_run_id, iteration, stage=stage,
                    shard_files=[f.path for f in shard_files], out=merged.path)


@dsl.component(base_image=image("pairs"), install_kfp_package=False)
def pairs(
    judging: dict, judgements: Input[Dataset], iteration: int, mlflow: dict, kfp_run_id: str,
    pairs: Output[Dataset], metrics: Output[Metrics],
):
    """Preference pairs: highest vs lowest mean score per prompt, ties dropped."""
    from srlm import stages

    stages.run_task("pairs", metrics, judging, mlflow, kfp_run_id, iteration, judgements=judgements.path,
                    out=pairs.path)
