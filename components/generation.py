"""One round's data: prompt generation, candidate sampling, self-judging and preference pairs.

Sampling and judging can fan out: with ``shards`` K > 1 a task does shard ``shard`` of the work
and writes a shard file; ``merge_shards`` takes the K shard files (``dsl.Collected`` of a
``dsl.ParallelFor``) and writes the output the unsharded task would have written.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.images import image


@dsl.component(base_image=image("prompts"), install_kfp_package=False)
def generate_prompts(
    sampling: dict, model: Input[Model], seed: Input[Dataset], iteration: int, mlflow: dict, kfp_run_id: str,
    prompts: Output[Dataset], metrics: Output[Metrics],
):
    """M(t-1) writes new prompts, Self-Instruct style (few-shot from the seed prompts, ROUGE-L filter)."""
    from srlm import steps

    stats = steps.generate_prompts(sampling, model.path, seed.path, prompts.path, iteration,
                                   {**mlflow, "kfp_run_id": kfp_run_id})
    steps.to_kfp(metrics, stats)


@dsl.component(base_image=image("sample"), install_kfp_package=False)
def sample_candidates(
    sampling: dict, model: Input[Model], prompts: Input[Dataset], iteration: int, mlflow: dict, kfp_run_id: str,
    candidates: Output[Dataset], metrics: Output[Metrics], shard: int = 0, shards: int = 1,
):
    """M(t-1) samples N candidate replies per prompt (with shards > 1: shard ``shard``'s prompts, a shard file)."""
    from srlm import steps

    stats = steps.sample(sampling, model.path, prompts.path, candidates.path, iteration,
                         {**mlflow, "kfp_run_id": kfp_run_id}, shard=shard, shards=shards)
    steps.to_kfp(metrics, stats)


@dsl.component(base_image=image("judge"), install_kfp_package=False)
def judge_candidates(
    judging: dict, model: Input[Model], candidates: Input[Dataset], iteration: int, mlflow: dict, kfp_run_id: str,
    judgements: Output[Dataset], metrics: Output[Metrics], shard: int = 0, shards: int = 1,
):
    """M(t-1) judges every candidate with the additive 5-point rubric (with shards > 1: shard ``shard``'s replies)."""
    from srlm import steps

    stats = steps.judge(judging, model.path, candidates.path, judgements.path, iteration,
                        {**mlflow, "kfp_run_id": kfp_run_id}, shard=shard, shards=shards)
    steps.to_kfp(metrics, stats)


@dsl.component(base_image=image("pairs"), install_kfp_package=False)
def build_pairs(
    judging: dict, judgements: Input[Dataset], iteration: int, mlflow: dict, kfp_run_id: str,
    pairs: Output[Dataset], metrics: Output[Metrics],
):
    """Preference pairs: highest vs lowest mean score per prompt, ties dropped."""
    from srlm import steps

    stats = steps.pairs(judging, judgements.path, pairs.path, iteration, {**mlflow, "kfp_run_id": kfp_run_id})
    steps.to_kfp(metrics, stats)


@dsl.component(base_image=image("pairs"), install_kfp_package=False)
def merge_shards(
    kind: str, shard_files: Input[list[Dataset]], iteration: int, mlflow: dict, kfp_run_id: str,
    merged: Output[Dataset], metrics: Output[Metrics],
):
    """The K shard files of a fanned-out sampling (kind candidates) or judging (judgements) task, as one file."""
    from srlm import steps

    stats = steps.merge(kind, [f.path for f in shard_files], merged.path, iteration,
                        {**mlflow, "kfp_run_id": kfp_run_id})
    steps.to_kfp(metrics, stats)
