"""The stage registry: one entry per stage, the one place a stage is named and described.

A :class:`Stage` holds real references, not strings: its step function (``srlm.steps``), the config
classes it reads from its pipeline settings group, its paths and values, its image family, what
its task asks of the cluster and whether KFP may cache it. Everything else derives from here:

- the CLI's commands (``srlm <command>``, the name with ``-``; stages with ``cli=True``);
- the components' calls (:func:`run_task`) and the pipeline's task settings (``pipelines/settings.py``);
- the settings groups and their keys (:data:`GROUPS`), which validation checks;
- the image list (``images/images.json``, checked against :data:`STAGES` by the tests);
- the test tables.

A new stage: its module (library code and its step) and test, one entry here, one component, one
line of ``images/images.json`` (``python -m srlm.stages images images/images.json``).

One name everywhere: component, step, CLI command, task kind, image, MLflow child run. (A shard
task of ``sample``/``judge`` logs as ``<name>_shard``; the merge logs the merged output under the
stage's own name.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from srlm import steps, storage
from srlm.alpaca_eval import AlpacaEvalConfig
from srlm.context import RunContext
from srlm.eft import EFTConfig
from srlm.errors import SrlmError
from srlm.groups import check_group as _check_group
from srlm.groups import stage_config
from srlm.ifeval import IFEvalConfig
from srlm.io import check_output_free
from srlm.judge import JudgeConfig
from srlm.judge_agreement import JudgeAgreementConfig
from srlm.mt_bench import MTBenchConfig
from srlm.pairs import PairsConfig
from srlm.promotion import PromotionRule
from srlm.prompts import PromptGenConfig
from srlm.rm_eval import RMEvalConfig
from srlm.sampling import SamplingConfig
from srlm.seed_data import SeedConfig
from srlm.stagelog import to_kfp
from srlm.testbed import TestbedConfig
from srlm.tiny_model import TinyModelConfig
from srlm.training import DPOConfig, SFTConfig
from srlm.verifiers import VerifyConfig
from srlm.winrate import WinRateConfig

FAMILIES = ("light", "generation", "training")  # image families: no torch | vLLM | TRL (both with CUDA torch)
RESOURCES = ("cpu", "generation", "training", "evaluation")  # what a task asks of the cluster


@dataclasses.dataclass(frozen=True)
class Param:
    """A path or value a stage takes (a CLI flag ``--<name>``; a keyword of its step)."""

    name: str
    help: str
    required: bool = True
    type: type = str
    many: bool = False  # a list (``--name A B C``)


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    help: str
    step: Callable[..., dict[str, Any]]
    group: str | None = None  # the pipeline settings group its configs come from
    configs: Mapping[str, tuple[str, type]] = dataclasses.field(default_factory=dict)  # step keyword -> (key, class)
    extras: tuple[str, ...] = ()  # group keys handed to the step as they are (data.files, evaluation.prompts)
    params: tuple[Param, ...] = ()
    outputs: tuple[str, ...] = ("out",)  # params that are outputs: refused when they exist (unless overwrite)
    family: str | None = None  # image family; None: a CLI tool, not a pipeline task
    resources: str = "cpu"
    cached: bool = False  # deterministic given its inputs and seeds: KFP may reuse its outputs (not: side effects)
    cli: bool = True
    iteration: bool = False  # the CLI takes --iteration (the step reads ctx.iteration)
    models: tuple[str, ...] = ()  # params that are model directories (or references to a stored one, srlm.storage)
    follow_refs: bool = True  # False: the step follows the references itself (register uploads a stored model)
    writes_model: bool = False  # its ``out`` is a model: with a model volume it is stored there (srlm.storage)
    resumable: bool = False  # saves its progress (chunks, checkpoints: srlm.resume) on the model volume, if any

    @property
    def command(self) -> str:
        return self.name.replace("_", "-")

    @property
    def uses_models(self) -> bool:
        """Reads or writes model directories: its task needs the model volume, when there is one."""
        return bool(self.models) or self.writes_model

    @property
    def config_class(self) -> type | None:
        """The config the CLI builds from flags (``--preset``, ``--config``, one flag per setting)."""
        return self.configs["config"][1] if "config" in self.configs else None

    def configure(self, group: Mapping[str, Any] | None) -> dict[str, Any]:
        """The step's settings keywords from a pipeline settings group (preset, shared keys, own dicts)."""
        if self.group is None:
            return {}
        checked = check_group(self.group, group)
        settings = {kw: stage_config(self.group, checked, key, cls) for kw, (key, cls) in self.configs.items()}
        settings.update({key: checked[key] for key in self.extras if checked.get(key)})
        return settings

    def run(self, ctx: RunContext, settings: Mapping[str, Any], *, overwrite: bool = False,
            model_volume: str = "", **values: Any) -> dict[str, Any]:
        """The one adapter: refuse existing outputs (unless ``overwrite``), follow model references, then the
        step. ``model_volume``: the shared volume a model this stage makes is stored on ("" = in ``out``)."""
        for name in self.outputs:
            if values.get(name):
                check_output_free(values[name], overwrite)
        for name in self.models if self.follow_refs else ():
            if values.get(name):
                values[name] = storage.resolve(values[name])
        if self.resumable:
            values["progress_volume"] = model_volume
        if not (self.writes_model and model_volume):
            return self.step(ctx, **settings, **values)
        ref = values["out"]
        target = storage.prepare(storage.stored_dir(ref, model_volume, self.name, ctx.kfp_run_id))
        stats = self.step(ctx, **settings, **{**values, "out": str(target)})
        return {**stats, "stored_model": storage.write_ref(ref, target, self.name)}


MODEL = Param("model", "model directory (Hugging Face save_pretrained folder with tokenizer and chat template)")
SHARDING = (Param("shard", "this task's shard k (0 <= k < shards)", False, int),
            Param("shards", "K: the work is split over K tasks (1 = all of it)", False, int))

STAGES: dict[str, Stage] = {stage.name: stage for stage in (
    Stage("validate", "check settings, data, judge templates, MLflow and the promotion rule before any GPU work",
          steps.validate, outputs=(), family="light", cli=False),
    Stage("tiny_model", "build the tiny Llama-style model and its BPE tokenizer locally (M0 of the embedded default)",
          steps.tiny_model, "base_model", {"config": ("tiny", TinyModelConfig)},
          params=(Param("out", "directory to write the model to"),), family="training", cached=True,
          writes_model=True),
    Stage("seed", "write seed data: the bundled seed set, the testbed, or IFT + EFT pool from OpenAssistant data",
          steps.seed, "data", {"config": ("seed", SeedConfig), "testbed": ("testbed", TestbedConfig)}, ("files",),
          params=(Param("out", "directory for ift.jsonl and eft_train/eft_eval.jsonl (bundled) or eft_pool.jsonl "
                               "(OpenAssistant)"),), family="light", cached=True),
    Stage("build_eft", "build judge (EFT) data: the SFT baseline judges the pool, judgements that agree with human "
                       "ranks are kept", steps.build_eft, "data", {"config": ("eft", EFTConfig)},
          params=(Param("model", "the SFT baseline (judge) model directory"),
                  Param("pool", "EFT candidate pool JSONL (from `srlm seed` on OpenAssistant data), or a seed directory"),
                  Param("out", "directory for eft_train.jsonl and eft_eval.jsonl")),
          family="generation", resources="generation", cached=True, models=("model",)),
    Stage("sft", "seed SFT on IFT (+ EFT) data: M0 -> M1 (without EFT: the SFT baseline)",
          steps.sft, "training", {"config": ("sft", SFTConfig)},
          params=(MODEL, Param("ift", "IFT JSONL (or a seed directory)"),
                  Param("eft", "EFT training JSONL or directory (optional)", False),
                  Param("out", "directory for the trained model"),
                  Param("chat_template", "the base model's chat template when it has none: llama-2, llama-3, chatml, "
                                         "a .jinja file or the text (saved with M1)", False)),
          family="training", resources="training", cached=True, models=("model",), writes_model=True, resumable=True),
    Stage("prompts", "generate new prompts, Self-Instruct style, with ROUGE-L and keyword filters",
          steps.prompts, "sampling", {"config": ("prompts", PromptGenConfig)},
          params=(MODEL, Param("seed_prompts", "IFT JSONL (or seed directory) whose first user turns are the seed "
                                               "prompts (default: bundled)", False),
                  Param("out", "prompts JSONL to write")),
          family="generation", resources="generation", iteration=True, cached=True, models=("model",),
          resumable=True),
    Stage("sample", "sample N candidate replies per prompt", steps.sample, "sampling",
          {"config": ("candidates", SamplingConfig)},
          params=(MODEL, Param("prompts", "prompts JSONL ({id, prompt} or {instruction})"),
                  Param("out", "candidates JSONL to write"), *SHARDING),
          family="generation", resources="generation", cached=True, models=("model",), resumable=True),
    Stage("judge", "self-judge every candidate with the additive 5-point rubric", steps.judge, "judging",
          {"config": ("judge", JudgeConfig)},
          params=(MODEL, Param("candidates", "candidates JSONL"), Param("out", "judgements JSONL to write"), *SHARDING),
          family="generation", resources="generation", cached=True, models=("model",), resumable=True),
    Stage("merge", "join the K shard files of a fanned-out sampling or judging step into the unsharded output",
          steps.merge, params=(Param("stage", "the sharded stage: sample or judge"),
                               Param("shard_files", "the K shard files", many=True), Param("out", "the merged file")),
          family="light", cli=False, cached=True),
    Stage("pairs", "build preference pairs: highest vs lowest mean score, ties dropped", steps.pairs, "judging",
          {"config": ("pairs", PairsConfig)},
          params=(Param("judgements", "judgements JSONL"), Param("out", "preference pairs JSONL to write")),
          family="light", cached=True),
    Stage("dpo", "one DPO round: M(t) -> M(t+1), reference = M(t)", steps.dpo, "training",
          {"config": ("dpo", DPOConfig)},
          params=(MODEL, Param("pairs", "preference pairs JSONL"), Param("out", "directory for the trained model")),
          family="training", resources="training", cached=True, models=("model",), writes_model=True,
          resumable=True),
    Stage("evaluate", "M(t) as a reward model, head to head against M(t-1), checked by a verifier, and on the "
                      "benchmarks named in evaluation.benchmarks (AlpacaEval, MT-Bench, IFEval)",
          steps.evaluate, "evaluation",
          {"rm": ("rm", RMEvalConfig), "winrate": ("winrate", WinRateConfig), "verify": ("verify", VerifyConfig),
           "alpaca_eval": ("alpaca_eval", AlpacaEvalConfig), "mt_bench": ("mt_bench", MTBenchConfig),
           "ifeval": ("ifeval", IFEvalConfig), "agreement": ("judge_agreement", JudgeAgreementConfig)},
          ("prompts", "benchmarks"), outputs=("out", "report"), family="generation", resources="evaluation", cli=False, cached=True,
          models=("model", "previous", "judge_model")),
    Stage("register", "register M(t) in the MLflow registry by reference (a model on the run's model volume: copied "
                      "to MLflow's artifact store) with lineage tags, key metrics, alias iter-<t>",
          steps.register, outputs=(), family="light", cli=False, models=("model",), follow_refs=False),
    Stage("finalize", "the run's exit handler: a failed run's MLflow parent run ends FAILED naming the failed "
                      "stage, and the versions it registered are tagged so (never promoted)", steps.finalize,
          outputs=(), family="light", cli=False),
    Stage("gate", "promotion gate: challenger on the newest M(t); champion moves when the rule holds (may play it "
                  "against an older champion)", steps.gate, "evaluation",
          {"rule": ("promotion", PromotionRule), "winrate": ("winrate", WinRateConfig)}, ("prompts",),
          outputs=("report", "run_report"), family="generation", resources="evaluation", cli=False,
          models=("model", "judge_model")),
    # CLI tools over the library (not pipeline tasks)
    Stage("eval_rm", "reward-model metrics: pairwise accuracy, 5-best, exact match, Spearman, Kendall tau",
          steps.eval_rm, "evaluation", {"config": ("rm", RMEvalConfig)},
          params=(MODEL, Param("eft_eval", "EFT eval JSONL (prompts with ranked replies)"),
                  Param("out", "report directory")), models=("model",)),
    Stage("winrate", "head-to-head win rate of A vs B, each pair judged in both orders", steps.winrate, "evaluation",
          {"config": ("winrate", WinRateConfig)},
          params=(Param("model_a", "model A directory"), Param("model_b", "model B directory"),
                  Param("judge_model", "judge model directory (keep it fixed across iterations, e.g. M1)"),
                  Param("prompts", "prompts JSONL"), Param("out", "report directory")),
          models=("model_a", "model_b", "judge_model")),
    Stage("alpaca_eval", "AlpacaEval-style win rate, discrete and length-controlled, against reference outputs "
                         "(judge: a server's logprobs, or a local model in both orders)", steps.alpaca_eval,
          "evaluation", {"config": ("alpaca_eval", AlpacaEvalConfig)},
          params=(MODEL, Param("out", "report directory"),
                  Param("local_judge", "a local judge model directory (without judge_base_url)", False),
                  Param("generator_name", "name recorded in model_outputs.json", False)),
          models=("model", "local_judge")),
    Stage("mt_bench", "MT-Bench: two-turn answers graded 1-10 by a judge, per turn and per category",
          steps.mt_bench, "evaluation", {"config": ("mt_bench", MTBenchConfig)},
          params=(MODEL, Param("out", "report directory"),
                  Param("local_judge", "a local judge model directory (without judge_base_url)", False)),
          models=("model", "local_judge")),
    Stage("ifeval", "IFEval: prompt- and instruction-level accuracy, strict and loose, checked by lm-eval's verifiers",
          steps.ifeval, "evaluation", {"config": ("ifeval", IFEvalConfig)},
          params=(MODEL, Param("out", "report directory")), models=("model",)),
    Stage("export_alpaca", "write a model's answers in AlpacaEval's model_outputs.json format", steps.export_alpaca,
          "evaluation", {"config": ("winrate", WinRateConfig)},
          params=(MODEL, Param("prompts", "prompts JSONL (e.g. AlpacaEval instructions)"),
                  Param("out", "model_outputs.json to write"),
                  Param("generator_name", "name recorded in the 'generator' field", False)), models=("model",)),
    Stage("promote", "set `challenger` on a registered model version; move `champion` to it when the promotion rule "
                     "holds", steps.promote, "evaluation", {"config": ("promotion", PromotionRule)},
          params=(Param("name", "registered model name in MLflow (tracking URI from MLFLOW_TRACKING_URI)"),
                  Param("version", "model version to consider (default: the newest)", False)), outputs=()),
)}

TASKS = {name: stage for name, stage in STAGES.items() if stage.family is not None}  # the pipeline's stages
# The base model importer's key: not a stage's (the pipeline imports base_model.uri with dsl.importer).
IMPORTER_KEYS = {"base_model": ("uri", "chat_template")}


# The pipeline's settings groups, in the order of its parameters (and of validation's report).
GROUP_ORDER = ("base_model", "data", "sampling", "judging", "training", "evaluation")


def _groups() -> dict[str, dict[str, type]]:
    groups: dict[str, dict[str, type]] = {name: {} for name in GROUP_ORDER}
    for stage in STAGES.values():
        if stage.group:
            groups[stage.group].update({key: cls for key, cls in stage.configs.values()})
    return groups


# group -> {key: config class}: every settings group of the pipeline and the configs in it.
GROUPS: dict[str, dict[str, type]] = _groups()
_EXTRAS = {group: {key for s in STAGES.values() if s.group == group for key in s.extras} | set(IMPORTER_KEYS.get(group, ()))
           for group in GROUPS}


def check_group(name: str, group: Mapping[str, Any] | None) -> dict[str, Any]:
    """Settings group ``name`` as a dict; SrlmError for a key no stage reads."""
    if name not in GROUPS:
        raise SrlmError(f"unknown settings group {name!r}; known: {', '.join(GROUPS)}")
    return _check_group(name, group, (*GROUPS[name], *sorted(_EXTRAS[name])))


def group_config(group_name: str, group: Mapping[str, Any] | None, key: str) -> Any:
    """``key``'s config of settings group ``group_name`` (e.g. ``sampling``, ``candidates``)."""
    return stage_config(group_name, check_group(group_name, group), key, GROUPS[group_name][key])


def run_stage(name: str, group: Mapping[str, Any] | None = None, ctx: RunContext | None = None, *,
              overwrite: bool = False, **values: Any) -> dict[str, Any]:
    """Stage ``name`` with its configs from settings ``group`` (as the pipeline passes it), in ``ctx``."""
    stage = STAGES[name]
    return stage.run(ctx or RunContext(), stage.configure(group), overwrite=overwrite, **values)


def run_task(name: str, metrics: Any, group: Mapping[str, Any] | None, mlflow: Mapping[str, Any] | None,
             kfp_run_id: str, iteration: int | None = None, **values: Any) -> dict[str, Any]:
    """What a component does: stage ``name`` with its settings group, in the run's context; its statistics
    go into the KFP ``Metrics`` artifact ``metrics``. In a KFP task a bad input ends the task with its one-line
    message, not a traceback through the executor (:func:`one_line_errors`)."""
    one_line_errors(name)
    ctx = RunContext.of(mlflow, kfp_run_id, iteration)
    try:
        stats = run_stage(name, group, ctx, **values)
    except Exception as error:
        record_failure(ctx, name, error)
        raise
    to_kfp(metrics, stats)
    return stats


def record_failure(ctx: RunContext, stage: str, error: BaseException) -> None:
    """A failed stage leaves a FAILED run in MLflow (best effort: MLflow may be what failed)."""
    if not ctx.tracking or stage == "validate":  # validate's failure is about MLflow and settings: nothing to log
        return
    import logging

    from srlm import tracking

    try:
        tracking.log_stage_failure(ctx.experiment, ctx.kfp_run_id, stage, error, ctx.iteration)
    except Exception as e:  # noqa: BLE001 (the stage's own error is the one to report)
        logging.getLogger(__name__).warning("could not record the failure of %s in MLflow: %s", stage, e)


def one_line_errors(stage: str) -> None:
    """An uncaught SrlmError (a bad input, said clearly) ends this process with its message on one line and exit
    code 1; any other exception keeps its traceback. Set only where nobody else chose a hook (a KFP task)."""
    import sys

    if sys.excepthook is not sys.__excepthook__:
        return

    def hook(kind: type[BaseException], error: BaseException, tb: Any) -> None:
        if issubclass(kind, SrlmError):
            print(f"srlm {stage}: {error}", file=sys.stderr, flush=True)
        else:
            sys.__excepthook__(kind, error, tb)

    sys.excepthook = hook


def image_names() -> dict[str, Any]:
    """The stage part of ``images/images.json``: an image per pipeline stage, its family and what it runs."""
    return {
        "images": {name: "srlm-" + name.replace("_", "-") for name in TASKS},
        "stages": {name: {"family": stage.family, "description": stage.help} for name, stage in TASKS.items()},
    }


def write_images_json(path: str) -> None:
    """Rewrite the stage entries of ``images/images.json`` from the registry (registry, tag, base and
    services stay as they are)."""
    import json
    from pathlib import Path

    spec = json.loads(Path(path).read_text(encoding="utf-8"))
    derived = image_names()
    spec["images"] = {"base": spec["images"]["base"], **derived["images"]}
    spec["stages"] = derived["stages"]
    Path(path).write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] != ["images"] or len(sys.argv) != 3:
        sys.exit("usage: python -m srlm.stages images images/images.json   (rewrite its stages from the registry)")
    write_images_json(sys.argv[2])
