"""The self-rewarding pipeline, unrolled over the iterations at compile time.

    validate -> base model (tiny builder, or an importer of a Hugging Face model directory)
             -> Seed: M1 (pipelines/seed.py: seed data [-> SFT baseline -> EFT build] -> seed SFT
                -> evaluate M1 -> register M1)
             -> Iteration 2 -> Iteration 3 -> ... (pipelines/iteration.py, one sub-DAG per DPO round)
             -> promotion gate
    all inside the run's exit handler: "Close the run" (finalize) runs however the body ends, and closes
    a failed run (MLflow parent run FAILED, naming the failed stage; its model versions tagged as failed)

The validation step comes first and everything else depends on it, so bad settings, unreadable
data, an unreachable MLflow or a promotion rule that cannot be evaluated fail before any GPU
work. Run-time parameters are the settings groups of ``srlm.stages.GROUPS`` plus ``mlflow``
(one dict each); the number of iterations, the base model kind, the EFT build, GPUs,
tolerations and the MLflow URI are compile-time settings (``pipelines/settings.py``).
"""

import copy
from typing import Any

from kfp import dsl
from kfp.dsl import Model

import components as c
from pipelines.iteration import make_iteration
from pipelines.seed import make_seed
from pipelines.settings import CLUSTER, PipelineSettings, configure, run_id


def make_pipeline(settings: PipelineSettings = CLUSTER):
    """The pipeline function for ``settings`` (defaults of its parameters: ``settings.defaults``)."""
    seed_pipeline = make_seed(settings)
    iteration_pipeline = make_iteration(settings)
    d = copy.deepcopy(settings.defaults)

    @dsl.pipeline(name=settings.name, description=settings.description, pipeline_config=settings.pipeline_config())
    def self_rewarding(
        base_model: dict = d["base_model"],
        data: dict = d["data"],
        sampling: dict = d["sampling"],
        judging: dict = d["judging"],
        training: dict = d["training"],
        evaluation: dict = d["evaluation"],
        mlflow: dict = d["mlflow"],
    ):
        """Self-Rewarding Language Models: seed SFT (M1), then DPO rounds on self-judged pairs (M2, M3, ...).

        Each settings group is a dict: ``preset`` (paper, tiny or testbed: src/srlm/presets/), the shared
        ``threads`` / ``backend`` / ``dtype``, and one dict per config with only the settings you change
        (src/srlm/presets/paper.yaml lists them all). KFP replaces a whole group: pass every key you set.

        Args:
            base_model: The base model M0. {"uri": "s3://models/Llama-2-70b-hf", "chat_template": "auto"} imports a
                Hugging Face model directory (object store or mounted path); chat_template is the template a base
                checkpoint gets (auto: its own, else by family; llama-2 | llama-3 | chatml | a file | the text).
                The tiny pipeline builds one: {"preset", "tiny": {...}}.
            data: Seed data and EFT build. {"preset", "seed": {"source": "OpenAssistant/oasst1" | path | "bundled"
                | "testbed", "ift_count"}, "eft": {...}, "testbed": {...}, "files": {"ift", "eft_train", "eft_eval",
                "eft_pool": path}}.
            sampling: Prompt generation and candidate sampling. {"preset", "threads", "backend", "dtype",
                "prompts": {"num_prompts", "source": "generate" | "file", ...}, "candidates": {"n", "temperature",
                "top_p", "max_new_tokens", ...}}.
            judging: Self-judging and pair building. {"preset", "threads", "backend", "dtype", "judge": {"samples",
                "template", "scorer": "model" | "random", ...}, "pairs": {"min_margin", "verifier", ...}}.
            training: Seed SFT and DPO. {"preset", "threads", "sft": {"learning_rate", "max_steps", ...},
                "dpo": {"beta", "learning_rate", "epochs", ...}}.
            evaluation: Evaluation of every M(t) and the promotion rule. {"preset", "threads", "backend", "dtype",
                "rm": {...}, "winrate": {"method": "pairwise" | "rubric", ...}, "verify": {"verifier", ...},
                "promotion": {"metric", "min_win_rate", "rm_metric", "rm_tolerance"}, "prompts": path}.
            mlflow: MLflow tracking. {"enabled", "experiment", "model_name", "artifact_location"}; the tracking URI
                is a compile-time setting (MLFLOW_TRACKING_URI on every task).
        """
        run = {"mlflow": mlflow, "kfp_run_id": run_id(settings)}
        closing = c.finalize(**run)  # runs however the body ends: a failed run is closed and its versions tagged
        configure(closing, "finalize", settings, "Close the run")
        with dsl.ExitHandler(closing, name="Self-rewarding run"):
            body(settings, seed_pipeline, iteration_pipeline, run, base_model, data, sampling, judging, training,
                 evaluation, mlflow)

    return self_rewarding


def body(settings: PipelineSettings, seed_pipeline: Any, iteration_pipeline: Any, run: dict, base_model: Any,
         data: Any, sampling: Any, judging: Any, training: Any, evaluation: Any, mlflow: Any) -> None:
    """validate -> M0 -> Seed: M1 -> Iteration 2..T -> gate (inside the run's exit handler)."""
    volume = settings.model_volume()  # where models are stored ("" = in their artifacts)
    checked = c.validate(base_model=base_model, data=data, sampling=sampling, judging=judging, training=training,
                         evaluation=evaluation, base_model_kind=settings.base_model, eft_build=settings.eft_build,
                         iterations=settings.iterations, hardware=settings.hardware(), **run)
    configure(checked, "validate", settings, "Validate inputs and settings")

    if settings.base_model == "tiny":
        base_task = c.tiny_model(base_model=base_model, model_volume=volume, **run).after(checked)
        configure(base_task, "tiny_model", settings, "M0: build the tiny model")
        base = base_task.outputs["model"]
    else:
        base_task = dsl.importer(artifact_uri=checked.outputs["base_model_uri"], artifact_class=Model, reimport=False,
                                 download_to_workspace=settings.model_storage == "workspace")
        base_task.set_display_name("M0: import the base model")
        base = base_task.output

    seeded = seed_pipeline(base_model=base, data=data, training=training, evaluation=evaluation, mlflow=mlflow,
                           chat_template=checked.outputs["chat_template"], model_volume=volume)
    seeded.set_display_name("Seed: M1").after(checked)
    m1, seed, eft = seeded.outputs["model"], seeded.outputs["seed"], seeded.outputs["eft"]

    model, version = m1, seeded.outputs["version"]
    for t in range(2, settings.iterations + 1):
        step = iteration_pipeline(model=model, judge_model=m1, seed=seed, eft=eft, sampling=sampling,
                                  judging=judging, training=training, evaluation=evaluation, mlflow=mlflow,
                                  iteration=t, parent_version=version, model_volume=volume)
        step.set_display_name(f"Iteration {t}")
        model, version = step.outputs["model"], step.outputs["version"]

    gate = c.gate(evaluation=evaluation, model=model, judge_model=m1, eft=eft, version=version, model_volume=volume,
                  **run)
    configure(gate, "gate", settings, "Promotion gate")


self_rewarding = make_pipeline(CLUSTER)
