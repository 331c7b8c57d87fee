"""The self-rewarding pipeline, unrolled over the iterations at compile time.

    validate -> base model (tiny builder, or an importer of a Hugging Face model directory)
             -> seed data [-> SFT baseline -> EFT build] -> seed SFT = M1 -> evaluate M1 -> register M1
             -> Iteration 2 -> Iteration 3 -> ... (pipelines/iteration.py, one sub-DAG per DPO round)
             -> promotion gate

The validation step comes first and everything else depends on it, so bad settings, unreadable
data, an unreachable MLflow or a promotion rule that cannot be evaluated fail before any GPU
work. Run-time parameters are the settings groups of ``srlm.steps`` (one dict each); the number
of iterations, the base model kind, the EFT build, GPUs, tolerations and the MLflow URI are
compile-time settings (``pipelines/settings.py``).
"""


import copy

from kfp import dsl
from kfp.dsl import Model

import components as c
from pipelines.iteration import make_iteration
from pipelines.settings import CLUSTER, PipelineSettings, configure


def make_pipeline(settings: PipelineSettings = CLUSTER):
    """The pipeline function for ``settings`` (defaults of its parameters: ``settings.defaults``)."""
    iteration_pipeline = make_iteration(settings)
    d = copy.deepcopy(settings.defaults)

    @dsl.pipeline(name=settings.name, description=settings.description)
    def self_rewarding(
        base_model: dict = d["base_model"],
        data: dict = d["data"],
        sampling: dict = d["sampling"],
        judging: dict = d["judging"],
        training: dict = d["training"],
        evaluation: dict = d["evaluation"],
        mlflow: dict = d["mlflow"],
    ):
        run = {"mlflow": mlflow, "kfp_run_id": dsl.PIPELINE_JOB_ID_PLACEHOLDER}
        checked = c.validate(base_model=base_model, data=data, sampling=sampling, judging=judging, training=training,
                             evaluation=evaluation, base_model_kind=settings.base_model, eft_build=settings.eft_build,
                             iterations=settings.iterations, **run)
        configure(checked, "validate", settings, "Validate inputs and settings")

        if settings.base_model == "tiny":
            base_task = c.tiny_model(base_model=base_model, **run).after(checked)
            configure(base_task, "tiny_model", settings, "M0: build the tiny model")
            base = base_task.outputs["model"]
        else:
            base_task = dsl.importer(artifact_uri=checked.outputs["Output"], artifact_class=Model, reimport=False)
            base_task.set_display_name("M0: import the base model")
            base = base_task.output

        seed_task = c.seed_data(data=data, **run).after(checked)
        configure(seed_task, "seed_data", settings, "Seed data")
        seed = seed_task.outputs["seed"]
        eft = seed
        if settings.eft_build:
            baseline = c.seed_sft(training=training, base_model=base, seed=seed, eft=seed, with_eft=False, **run)
            configure(baseline, "sft", settings, "SFT baseline (IFT only)")
            built = c.build_eft(data=data, baseline=baseline.outputs["model"], seed=seed, **run)
            configure(built, "build_eft", settings, "EFT build")
            eft = built.outputs["eft"]

        m1_task = c.seed_sft(training=training, base_model=base, seed=seed, eft=eft, with_eft=True, **run)
        configure(m1_task, "sft", settings, "M1: seed SFT (IFT + EFT)")
        m1 = m1_task.outputs["model"]
        evaluated = c.evaluate(evaluation=evaluation, model=m1, previous=base, judge_model=m1, eft=eft, seed=seed,
                               iteration=1, **run)
        configure(evaluated, "evaluate", settings, "Evaluate M1")
        registered = c.register_model(model=m1, evaluation_details=evaluated.outputs["details"], iteration=1,
                                      parent_version="", **run)
        configure(registered, "register", settings, "Register M1")

        model, version = m1, registered.outputs["Output"]
        for t in range(2, settings.iterations + 1):
            step = iteration_pipeline(model=model, judge_model=m1, seed=seed, eft=eft, sampling=sampling,
                                      judging=judging, training=training, evaluation=evaluation, mlflow=mlflow,
                                      iteration=t, parent_version=version)
            step.set_display_name(f"Iteration {t}")
            model, version = step.outputs["model"], step.outputs["version"]

        gate = c.promote_gate(evaluation=evaluation, model=model, judge_model=m1, eft=eft, version=version, **run)
        configure(gate, "promote", settings, "Promotion gate")

    return self_rewarding


self_rewarding = make_pipeline(CLUSTER)
