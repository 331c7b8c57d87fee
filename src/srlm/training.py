"""Training stages with TRL: seed SFT (M0 -> M1) and a DPO round (M(t) -> M(t+1)).

SFT trains on IFT conversations plus EFT judge examples (the rubric prompt filled with a
prompt and a reply -> the judgement ending with ``Score: N``), with the loss on assistant
tokens only. DPO trains on one round's (chosen, rejected) pairs with beta 0.1; the reference
is the model the round starts from, whose log-probabilities are computed once before training
(``precompute_ref_log_probs``: one model in memory, the same reference forward passes) or, if
that is switched off, from a second copy loaded from the same directory.

Both follow the paper's schedule: cosine decay from ``learning_rate`` to ``final_learning_rate``
(transformers' ``cosine_with_min_lr``), batch 16, dropout 0.1 set on the model config. Each
writes a complete Hugging Face directory (weights, tokenizer, chat template, lineage) atomically:
a failed run leaves nothing at ``out``. Heavy imports stay inside functions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from srlm import distributed, judge
from srlm.config import StageConfig, setting
from srlm.errors import SrlmError
from srlm.generation import load_tokenizer
from srlm.io import Record, atomic_path, file_digest, read_jsonl
from srlm.modeldir import check_model_dir, write_lineage
from srlm.numerics import set_threads
from srlm.stagelog import peak_memory

log = logging.getLogger(__name__)

# Config attributes that hold dropout probabilities in common causal-LM families
# (Llama/Qwen/Mistral/Gemma: attention_dropout; GPT-2: *_pdrop; OPT: dropout).
DROPOUT_ATTRS = ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop")
Precision = Literal["auto", "bf16", "fp16", "no"]
Strategy = Literal["ddp", "fsdp2", "zero3", "zero3_offload"]


@dataclasses.dataclass
class TrainingOptions:
    """Settings shared by SFT and DPO (mixed into their configs)."""

    per_device_batch_size: int = setting(4, "examples per device per forward pass")
    gradient_accumulation_steps: int = setting(
        4, "forward passes per optimizer step; batch = per_device_batch_size x this x devices (paper: 16)"
    )
    epochs: float = setting(1.0, "passes over the data, ignored when max_steps > 0 (ours: the paper gives no count)")
    max_steps: int = setting(0, "optimizer steps; 0 = run `epochs` epochs")
    max_length: int = setting(2048, "longest tokenized sequence (prompt + response); longer ones are cut at the end")
    warmup: float = setting(0.03, "linear warmup: a fraction of the steps if < 1, else a step count (paper: not given)")
    weight_decay: float = setting(0.0, "AdamW weight decay (paper: not given)")
    dropout: float = setting(0.1, "dropout set on the model config while training (paper: 0.1)")
    gradient_checkpointing: bool = setting(True, "recompute activations to save memory (about a fifth slower)")
    mixed_precision: Precision = setting("auto", "auto (bf16 on a GPU that supports it, none on CPU) | bf16 | fp16 | no")
    save_dtype: Literal["auto", "float32", "bfloat16", "float16"] = setting(
        "auto", "dtype of the saved weights; auto = the 16-bit type of the training precision (bf16 -> bfloat16, "
        "fp16 -> float16; float32 without mixed precision): half the size of fp32 master weights, what vLLM loads")
    logging_steps: int = setting(10, "log loss and metrics every N optimizer steps")
    checkpoint_steps: int = setting(
        100, "save a checkpoint (weights, optimizer, scheduler, RNG) every N optimizer steps; a retried or re-run "
        "stage resumes from the newest complete one (beside the output, or on the model volume); 0 = none. A "
        "checkpoint of full-parameter training holds about 16 bytes per parameter")
    seed: int = setting(0, "seed for initialisation, shuffling and dropout")
    threads: int = setting(0, "torch CPU threads; 0 = torch's default. Use 1 when tasks run side by side")
    gpus_per_node: int = setting(
        0, "training processes (one per GPU) under torchrun; 0 = every GPU the task has (one process on CPU)")
    strategy: Strategy = setting(
        "ddp", "how several processes share the model states: ddp (each holds all) | fsdp2 | zero3 (sharded) | "
        "zero3_offload (optimizer states in CPU memory); fsdp2 and zero3 need GPUs, zero3 DeepSpeed (in the training image)")
    peft: Literal["none", "lora"] = setting(
        "none", "none: full-parameter training (paper) | lora: low-rank adapters on a frozen 16-bit base (TRL's PEFT "
        "support; the DPO reference is the base with adapters off), merged into the weights when saved")
    lora_r: int = setting(16, "lora: adapter rank")
    lora_alpha: int = setting(32, "lora: scaling numerator (the update is scaled by alpha / r)")
    lora_dropout: float = setting(0.05, "lora: dropout on the adapters' input")
    lora_target_modules: list[str] = setting(["all-linear"], "lora: module names to adapt; all-linear = every linear "
                                             "layer but the output head")
    nodes: int = setting(1, "training nodes; more than 1 runs the stage as a Kubeflow Trainer TrainJob")
    launcher: Literal["auto", "pod", "trainjob"] = setting(
        "auto", "where training runs: pod (this task, gpus_per_node processes) | trainjob (a Kubeflow Trainer TrainJob "
        "of nodes x gpus_per_node processes) | auto (trainjob when nodes > 1)")
    shared_dir: str = setting(
        "", "trainjob: a directory every node sees (the RWX volume of manifests/trainer, e.g. /models): inputs not "
        "already under it are copied in, the trained model is copied out to the task's output")
    trainjob_image: str = setting("", "trainjob: the nodes' image; empty = the task's own ($SRLM_IMAGE)")
    trainjob_namespace: str = setting("", "trainjob: namespace; empty = the task's own (its service account's)")
    trainjob_timeout_hours: float = setting(48.0, "trainjob: fail (and delete the job) when it has not finished by then")

    def _check_common(self, name: str) -> None:
        lr, final = self.learning_rate, self.final_learning_rate  # type: ignore[attr-defined]
        if lr <= 0 or not 0 <= final <= lr:
            raise SrlmError(f"{name}: need learning_rate > 0 and 0 <= final_learning_rate <= learning_rate")
        if self.per_device_batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise SrlmError(f"{name}: per_device_batch_size and gradient_accumulation_steps must be >= 1")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise SrlmError(f"{name}: set epochs > 0 or max_steps > 0")
        if not 0 <= self.dropout < 1:
            raise SrlmError(f"{name}: dropout must be in [0, 1), got {self.dropout}")
        if self.max_length < 16:
            raise SrlmError(f"{name}: max_length must be >= 16, got {self.max_length}")
        if self.warmup < 0 or self.logging_steps < 1:
            raise SrlmError(f"{name}: warmup must be >= 0 and logging_steps >= 1")
        if self.checkpoint_steps < 0:
            raise SrlmError(f"{name}: checkpoint_steps must be >= 0 (0 = no checkpoints), got {self.checkpoint_steps}")
        if self.gpus_per_node < 0:
            raise SrlmError(f"{name}: gpus_per_node must be >= 0 (0 = every GPU the task has), got {self.gpus_per_node}")
        if self.peft == "lora" and self.strategy != "ddp":
            raise SrlmError(f"{name}: peft=lora runs with strategy ddp in this version (the merged model is saved from "
                            "rank 0's full copy); the fit check counts LoRA's 16-bit base")
        if self.peft == "lora" and (self.lora_r < 1 or self.lora_alpha < 1 or not self.lora_target_modules):
            raise SrlmError(f"{name}: lora needs lora_r >= 1, lora_alpha >= 1 and at least one target module")
        if self.nodes < 1:
            raise SrlmError(f"{name}: nodes must be >= 1, got {self.nodes}")
        if self.nodes > 1 and self.launcher == "pod":
            raise SrlmError(f"{name}: nodes={self.nodes} needs launcher trainjob (or auto): a pod is one node")
        if self.uses_trainjob() and not self.shared_dir:
            raise SrlmError(f"{name}: a TrainJob needs shared_dir, a directory every node sees (the RWX volume)")

    def uses_trainjob(self) -> bool:
        return self.launcher == "trainjob" or (self.launcher == "auto" and self.nodes > 1)


@dataclasses.dataclass
class SFTConfig(TrainingOptions, StageConfig):
    learning_rate: float = setting(5.5e-6, "peak learning rate (paper: 5.5e-6)")
    final_learning_rate: float = setting(1.1e-6, "learning rate at the end of the cosine decay (paper: 1.1e-6)")
    epochs: float = setting(3.0, "passes over IFT + EFT (ours; the paper keeps the best checkpoint instead)")
    assistant_only_loss: bool = setting(
        True, "loss on assistant tokens only (paper); needs generation/endgeneration markers in the chat template"
    )
    judge_template: str = setting(
        "", "judge prompt template file used to build EFT examples; empty = built-in rubric (use the judge's template)"
    )
    group_by_length: bool = setting(False, "batch examples of similar length together (less padding; less random)")

    def validate(self) -> None:
        self._check_common("SFT config")


@dataclasses.dataclass
class DPOConfig(TrainingOptions, StageConfig):
    learning_rate: float = setting(1e-6, "peak learning rate (paper: 1e-6)")
    final_learning_rate: float = setting(1e-7, "learning rate at the end of the cosine decay (paper: 1e-7)")
    beta: float = setting(0.1, "DPO beta: how far the policy may move from the reference (paper: 0.1)")
    loss_type: list[str] = setting(
        ["sigmoid"], "TRL DPO loss(es), e.g. sigmoid (DPO) or sigmoid,sft (DPO + NLL on chosen)"
    )
    precompute_ref_log_probs: bool = setting(
        True, "compute the reference log-probs once before training (one model in memory); off = load a second copy"
    )
    min_pairs: int = setting(1, "fail when the round has fewer pairs than this")

    def validate(self) -> None:
        self._check_common("DPO config")
        if self.beta <= 0:
            raise SrlmError(f"DPO config: beta must be > 0, got {self.beta}")
        if not self.loss_type:
            raise SrlmError("DPO config: loss_type needs at least one loss, e.g. sigmoid")
        if self.min_pairs < 1:
            raise SrlmError(f"DPO config: min_pairs must be >= 1, got {self.min_pairs}")


# ---------------------------------------------------------------- data


def sft_examples(ift: list[Record], eft: list[Record], template: str) -> list[dict[str, Any]]:
    """IFT conversations plus EFT judge examples, as TRL conversational rows ``{"messages": [...]}``."""
    rows = [{"messages": [{"role": m["role"], "content": m["content"]} for m in r["messages"]]} for r in ift]
    for r in eft:
        user = judge.fill_template(template, r["prompt"], r["response"])
        rows.append({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": r["judgement"]}]})
    return rows


def dpo_examples(pairs: list[Record]) -> list[dict[str, Any]]:
    """Pair records as TRL conversational preference rows (prompt = user turn, replies = assistant turns)."""
    return [
        {
            "prompt": [{"role": "user", "content": p["prompt"]}],
            "chosen": [{"role": "assistant", "content": p["chosen"]}],
            "rejected": [{"role": "assistant", "content": p["rejected"]}],
        }
        for p in pairs
    ]


def read_pairs(path: str | Path, min_pairs: int = 1) -> list[Record]:
    pairs = read_jsonl(path, "pair", allow_empty=True)
    if len(pairs) < min_pairs:
        raise SrlmError(
            f"{path}: {len(pairs)} preference pairs; DPO needs at least {min_pairs}. The round's judging gave too few "
            "(chosen, rejected) pairs: check the judge's parse failures and ties, or generate more prompts"
        )
    return pairs


# ---------------------------------------------------------------- model and trainer setup


def check_chat_template(tokenizer: Any, model: str | Path) -> str | None:
    """Raise SrlmError unless assistant-only loss can mask this template.

    A template with generation markers is used as is; for one without, TRL swaps in its own training version
    when it knows the template (Llama 3, Qwen, Gemma, ...). Anything else fails here, before a model loads.
    """
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    if has_generation_markers(tokenizer.chat_template):
        return None
    try:
        return get_training_chat_template(tokenizer)
    except ValueError:
        raise SrlmError(
            f"{model}: the chat template has no {{% generation %}} ... {{% endgeneration %}} markers around the "
            "assistant reply, so the SFT loss cannot be limited to response tokens. Add the markers to "
            "chat_template.jinja (see srlm.tiny_model.CHAT_TEMPLATE) or set assistant_only_loss=false"
        ) from None


def load_for_training(model: str | Path, dropout: float, dtype: str = "float32") -> tuple[Any, dict[str, Any]]:
    """Load the model (float32: the trained copy keeps fp32 master weights) with dropout set on its config; return it
    and the original dropout values."""
    from transformers import AutoConfig

    from srlm.generation import load_causal_lm

    model_config = AutoConfig.from_pretrained(str(model))
    original = {a: getattr(model_config, a) for a in DROPOUT_ATTRS if isinstance(getattr(model_config, a, None), float)}
    if not original and dropout:
        log.warning("%s: no dropout attribute (%s) in the model config; training without dropout", model, DROPOUT_ATTRS)
    loaded = load_causal_lm(model, dtype, **{a: dropout for a in original})
    return loaded, original


def resolve_precision(name: str) -> str:
    import torch

    if name == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return name


def _precision(name: str) -> dict[str, bool]:
    name = resolve_precision(name)
    return {"bf16": name == "bf16", "fp16": name == "fp16"}


def save_dtype(config: Any) -> str:
    """The dtype the trained weights are saved in (``save_dtype``, auto = the training precision's 16-bit type)."""
    return config.save_dtype if config.save_dtype != "auto" else compute_dtype(config)


def _policy_dtype(config: Any) -> str:
    """Full-parameter training keeps fp32 master weights; LoRA's frozen base stays in the 16-bit compute dtype."""
    return compute_dtype(config) if config.peft == "lora" else "float32"


def compute_dtype(config: Any) -> str:
    """The training precision's 16-bit dtype (float32 without mixed precision)."""
    return {"bf16": "bfloat16", "fp16": "float16"}.get(resolve_precision(config.mixed_precision), "float32")


def trainer_args(config: SFTConfig | DPOConfig, work_dir: str | Path) -> dict[str, Any]:
    """TrainingArguments shared by both stages: the paper's schedule, checkpoints every ``checkpoint_steps``, no
    trackers."""
    import torch

    return {
        "output_dir": str(work_dir),
        "learning_rate": config.learning_rate,
        "lr_scheduler_type": "cosine_with_min_lr",
        "lr_scheduler_kwargs": {"min_lr_rate": config.final_learning_rate / config.learning_rate},
        "warmup_steps": config.warmup,
        "weight_decay": config.weight_decay,
        "per_device_train_batch_size": config.per_device_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "num_train_epochs": config.epochs,
        "max_steps": config.max_steps if config.max_steps > 0 else -1,
        "max_length": config.max_length,
        "gradient_checkpointing": config.gradient_checkpointing,
        "logging_steps": config.logging_steps,
        "seed": config.seed,
        "data_seed": config.seed,
        "use_cpu": not torch.cuda.is_available(),
        "report_to": "none",
        **({"save_strategy": "steps", "save_steps": config.checkpoint_steps, "save_total_limit": 2}
           if config.checkpoint_steps else {"save_strategy": "no"}),  # 2: a kill while saving leaves the one before
        "eval_strategy": "no",
        "dataloader_num_workers": 0,
        **_precision(config.mixed_precision),
        **_strategy_args(config),
    }


def peft_config(config: SFTConfig | DPOConfig) -> Any:
    """peft's LoraConfig for ``peft: lora``, else None (full-parameter training)."""
    if config.peft != "lora":
        return None
    from peft import LoraConfig

    targets = list(config.lora_target_modules)
    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules="all-linear" if targets == ["all-linear"] else targets, task_type="CAUSAL_LM")


def _strategy_args(config: SFTConfig | DPOConfig) -> dict[str, Any]:
    """TrainingArguments for ``config.strategy``: accelerate turns them into its FSDP or DeepSpeed plugin."""
    import torch

    args: dict[str, Any] = {}
    if distributed.world_size() > 1:
        args["ddp_find_unused_parameters"] = False  # every parameter gets a gradient: skip DDP's extra graph walk
        if not torch.cuda.is_available():
            args["ddp_backend"] = "gloo"
    if config.strategy == "fsdp2":
        # FSDP2 checkpoints activations itself; transformers' gradient checkpointing would gather weights twice
        args.update(fsdp=True, gradient_checkpointing=False, fsdp_config={
            "version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "state_dict_type": "FULL_STATE_DICT",
            "reshard_after_forward": True, "cpu_ram_efficient_loading": True,
            "activation_checkpointing": config.gradient_checkpointing})
    elif config.strategy in ("zero3", "zero3_offload"):
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise SrlmError(f"training strategy {config.strategy} needs the deepspeed package (the training image "
                            "has it; elsewhere pip install deepspeed), or use fsdp2")
        args["deepspeed"] = str(distributed.DEEPSPEED_CONFIGS / f"{config.strategy}.json")
    return args


def build_sft_trainer(
    config: SFTConfig, model: str | Path, ift: str | Path, eft: str | Path | None, work_dir: str | Path,
    chat_template: str = "",
) -> Any:
    """Validate the inputs, load the model and return a ready TRL SFTTrainer (``run_sft`` trains it).

    ``chat_template`` (text) replaces the model's template: a base checkpoint has none; M1 is saved with it."""
    from trl import SFTConfig as TrlSFTConfig
    from trl import SFTTrainer

    check_model_dir(model, require_template=not chat_template)
    ift_records = read_jsonl(ift, "ift")
    eft_records = read_jsonl(eft, "eft") if eft else []
    rows = sft_examples(ift_records, eft_records, judge.load_template(config.judge_template or None))
    set_threads(config.threads)
    tokenizer = load_tokenizer(model, chat_template)
    if config.assistant_only_loss:
        check_chat_template(tokenizer, model)
    _warn_too_long(tokenizer, rows, config.max_length)
    policy, original_dropout = load_for_training(model, config.dropout, _policy_dtype(config))
    args = TrlSFTConfig(
        **trainer_args(config, work_dir),
        assistant_only_loss=config.assistant_only_loss,
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
    )
    trainer = SFTTrainer(model=policy, args=args, train_dataset=_dataset(rows, work_dir), processing_class=tokenizer,
                         peft_config=peft_config(config))
    trainer.srlm_original_dropout = original_dropout
    trainer.srlm_counts = {"ift_examples": len(ift_records), "eft_examples": len(eft_records)}
    return trainer


def build_dpo_trainer(config: DPOConfig, model: str | Path, pairs: str | Path, work_dir: str | Path) -> Any:
    """Validate the inputs (0 pairs fails before any model loads) and return a ready TRL DPOTrainer."""
    from trl import DPOConfig as TrlDPOConfig
    from trl import DPOTrainer

    check_model_dir(model)
    records = read_pairs(pairs, config.min_pairs)
    set_threads(config.threads)
    tokenizer = load_tokenizer(model)
    policy, original_dropout = load_for_training(model, config.dropout, _policy_dtype(config))
    # The reference is M(t) itself. Precomputed: its log-probs come from `policy` before training starts, in eval
    # mode (no dropout). Otherwise a second, separate copy from the same directory (TRL refuses the same object).
    # (Frozen, it needs no fp32 master copy: 16-bit under mixed precision, as the fit check counts it.)
    # With LoRA the reference is the policy with its adapters off: no second model either.
    separate = not config.precompute_ref_log_probs and config.peft == "none"
    ref = load_for_training(model, 0.0, compute_dtype(config))[0] if separate else None
    args = TrlDPOConfig(
        **trainer_args(config, work_dir),
        beta=config.beta,
        loss_type=list(config.loss_type),
        precompute_ref_log_probs=config.precompute_ref_log_probs,
        disable_dropout=False,  # dropout is the paper's 0.1 (config.dropout); set it to 0 to train without
    )
    trainer = DPOTrainer(
        model=policy, ref_model=ref, args=args, train_dataset=_dataset(dpo_examples(records), work_dir),
        processing_class=tokenizer, peft_config=peft_config(config),
    )
    trainer.srlm_original_dropout = original_dropout
    trainer.srlm_counts = {"pairs": len(records)}
    return trainer


def _dataset(rows: list[dict[str, Any]], work_dir: str | Path) -> Any:
    """The training rows as a dataset. Several processes read one file through a cache they all see: TRL's
    precomputed reference log-probs are cached next to the data, and in-memory datasets cache per process."""
    from datasets import Dataset, load_dataset

    if distributed.world_size() == 1:
        return Dataset.from_list(rows)
    from accelerate import PartialState

    path, state = Path(work_dir) / "rows.jsonl", PartialState()
    with state.main_process_first():  # rank 0 writes the file and builds the cache, then the others read it
        if state.is_main_process:
            with atomic_path(path) as tmp:
                tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return load_dataset("json", data_files=str(path), cache_dir=str(Path(work_dir) / "datasets"), split="train")


def _warn_too_long(tokenizer: Any, rows: list[dict[str, Any]], max_length: int) -> None:
    """Long rows are cut at the end, which drops an EFT judgement's score line: say so."""
    texts = [tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in rows]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    too_long = sum(n > max_length for n in lengths)
    if too_long:
        log.warning(
            "%d of %d SFT examples are longer than max_length=%d tokens (longest %d) and are cut at the end; "
            "cut EFT judgements lose their score line: raise max_length", too_long, len(rows), max_length, max(lengths)
        )


# ---------------------------------------------------------------- train, measure, save


def last_checkpoint(work: str | Path) -> tuple[str | None, int]:
    """The newest complete checkpoint in ``work`` (the trainer writes trainer_state.json last) and its step; (None,
    0) when there is none."""
    found = [(0, None)]
    for path in Path(work).glob("checkpoint-*"):
        try:
            state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # killed while saving it
        found.append((int(state["global_step"]), str(path)))
    step, path = max(found, key=lambda f: f[0])
    return path, step


def train(trainer: Any, extra_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """Run the trainer (from the newest complete checkpoint in its output dir, if any); return its metrics. A
    non-finite loss is an SrlmError (nothing gets saved)."""
    started = time.perf_counter()
    resume_from, resumed_step = last_checkpoint(trainer.args.output_dir)  # none in a fresh directory
    if resume_from:
        log.info("resuming from %s (step %d)", resume_from, resumed_step)
    result = trainer.train(resume_from_checkpoint=resume_from)
    seconds = time.perf_counter() - started
    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    metrics: dict[str, Any] = {
        "train_loss": result.training_loss,
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "steps": result.global_step,
        "resumed_from_step": resumed_step,
        "steps_trained_now": result.global_step - resumed_step,
        "examples": len(trainer.train_dataset),
        "epochs": trainer.state.epoch,
        "seconds": round(seconds, 2),
        "samples_per_second": result.metrics.get("train_samples_per_second"),
        **peak_memory(),
        **getattr(trainer, "srlm_counts", {}),
    }
    last = {k: v for h in history for k, v in h.items() if k in extra_keys}
    metrics.update({"final_" + k.replace("/", "_"): v for k, v in last.items()})
    if not all(math.isfinite(x) for x in [result.training_loss, *losses]):
        raise SrlmError(f"training diverged (loss {result.training_loss}); lower the learning rate")
    return metrics


def save(
    trainer: Any, out: str | Path, *, stage: str, parent: str | Path, data: dict[str, Any], config: Any, metrics: dict
) -> None:
    """Write weights, tokenizer, chat template and lineage to ``out`` in one atomic move (rank 0 only; with
    several processes every rank first takes part in gathering the full state dict)."""
    import torch

    accelerator = trainer.accelerator
    state = accelerator.get_state_dict(trainer.model) if accelerator.num_processes > 1 else None
    dtype = save_dtype(config)
    metrics["saved_dtype"] = dtype
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(trainer.model)
        if config.peft == "lora":  # every later stage loads a plain model: fold the adapters into the weights
            model, state = model.merge_and_unload(), None
        for name, value in getattr(trainer, "srlm_original_dropout", {}).items():
            setattr(model.config, name, value)  # dropout is a training setting, not part of the model
        model.config.use_cache = True
        model.to(getattr(torch, dtype))  # training is over: the fp32 master weights are not needed any more
        if state is not None:
            state = {k: v.to(getattr(torch, dtype)) for k, v in state.items()}
        with atomic_path(out, directory=True) as tmp:
            model.save_pretrained(tmp, state_dict=state)
            trainer.processing_class.save_pretrained(tmp)
            write_lineage(tmp, stage=stage, parent=parent, data=data, config=config.to_dict(), metrics=metrics)
            check_model_dir(tmp)
    accelerator.wait_for_everyone()


@contextlib.contextmanager
def _work_dir(config: SFTConfig | DPOConfig, request: dict[str, Any]) -> Iterator[str]:
    """Where the trainer writes: a temporary directory, or with checkpoints one that outlives a killed run (beside
    the output or on the model volume, ``srlm.resume``), removed once the model is saved. Checkpoints of other
    inputs or settings are removed first."""
    if not config.checkpoint_steps:
        with tempfile.TemporaryDirectory(prefix=f"srlm-{request['stage']}-") as work:
            yield work
        return
    import shutil

    from srlm import resume

    data = {k: file_digest(request[k]) for k in ("ift", "eft", "pairs") if request.get(k) and Path(request[k]).is_file()}
    made_from = resume.fingerprint(config=config.to_dict(), model=str(request["model"]), data=data,
                                   chat_template=request.get("chat_template", ""))
    work = resume.open_progress(resume.progress_dir(request["out"], request.get("progress_volume", ""), ".checkpoints"),
                                {"made_from": made_from})
    yield str(work)
    shutil.rmtree(work, ignore_errors=True)


def run_sft(
    config: SFTConfig,
    model: str | Path,
    ift: str | Path,
    out: str | Path,
    eft: str | Path | None = None,
    chat_template: str = "",
    progress_volume: str = "",
) -> dict[str, Any]:
    """Seed SFT: train ``model`` on IFT (+ EFT) conversations, loss on responses only; write M1 to ``out``
    (with ``chat_template`` as its template when given: a base checkpoint has none). Checkpoints go beside
    ``out`` or on ``progress_volume``."""
    request = {"stage": "sft", "model": model, "ift": ift, "eft": eft, "out": out, "chat_template": chat_template,
               "progress_volume": progress_volume}
    return _run(config, request)


DPO_LOG_KEYS = (
    "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected"
)


def run_dpo(
    config: DPOConfig, model: str | Path, pairs: str | Path, out: str | Path, progress_volume: str = ""
) -> dict[str, Any]:
    """One DPO round from M(t) (also the reference) on that round's pairs; write M(t+1) to ``out`` (checkpoints
    beside it or on ``progress_volume``)."""
    return _run(config, {"stage": "dpo", "model": model, "pairs": pairs, "out": out, "progress_volume": progress_volume})


def _run(config: SFTConfig | DPOConfig, request: dict[str, Any]) -> dict[str, Any]:
    """Train here, or on ``gpus_per_node`` processes under torchrun (each runs :func:`train_request`)."""
    request = {k: (str(v) if isinstance(v, Path) else v) for k, v in request.items()}
    if config.uses_trainjob() and not distributed.is_worker():
        metrics = _run_trainjob(config, request)
        log.info("%s done on a TrainJob: %s -> %s %s", request["stage"].upper(), request["model"], request["out"], metrics)
        return metrics
    nproc = distributed.processes(config)
    with _work_dir(config, request) as work:
        if nproc > 1 and not distributed.is_worker():
            metrics = distributed.launch({**request, "config": config.to_dict()}, work, nproc)
        else:
            metrics = _train(config, request, work)
    log.info("%s done: %s -> %s %s", request["stage"].upper(), request["model"], request["out"], metrics)
    return metrics


def _run_trainjob(config: SFTConfig | DPOConfig, request: dict[str, Any]) -> dict[str, Any]:
    """Train on a Kubeflow Trainer TrainJob: inputs staged under ``shared_dir``, the model copied back to ``out``."""
    import os
    import shutil

    from srlm import trainjob

    name = trainjob.job_name(str(Path(request["out"]).resolve()), request["stage"], None)
    shared = Path(config.shared_dir).resolve()
    work = shared / name
    work.mkdir(parents=True, exist_ok=True)
    staged = {k: _stage_in(v, shared, work / "inputs" / k) if k in ("model", "ift", "eft", "pairs") and v else v
              for k, v in request.items()}
    out = Path(request["out"]).resolve()
    staged["out"] = str(out if out.is_relative_to(shared) else work / "model")
    path = distributed.write_request(work, {**staged, "config": config.to_dict()})
    image = config.trainjob_image or os.environ.get("SRLM_IMAGE", "")
    if not image:
        raise SrlmError("trainjob: no image for the nodes: set training.trainjob_image (the pipeline sets $SRLM_IMAGE)")
    nproc = config.gpus_per_node or 1
    resources = {"limits": {"nvidia.com/gpu": nproc}} if config.gpus_per_node else None
    body = trainjob.manifest(name, str(path), image=image, nodes=config.nodes, nproc_per_node=nproc,
                             resources_per_node=resources)
    trainjob.run(body, config.trainjob_namespace or trainjob.own_namespace(), timeout_s=config.trainjob_timeout_hours * 3600)
    metrics = distributed.read_result(work, 0)
    if Path(staged["out"]) != out:
        with atomic_path(out, directory=True) as tmp:
            shutil.copytree(staged["out"], tmp, dirs_exist_ok=True)
    shutil.rmtree(work, ignore_errors=True)
    return metrics


def _stage_in(path: str, shared: Path, target: Path) -> str:
    """``path`` itself when every node sees it (under ``shared``), else a copy there."""
    import shutil

    source = Path(path).resolve()
    if source.is_relative_to(shared):
        return str(source)
    if target.exists():
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)
    return str(target)


def train_request(request: dict[str, Any], work: str | Path) -> dict[str, Any]:
    """A torchrun worker's part of a training request (``srlm.distributed``): the same code as one process."""
    cls = {"sft": SFTConfig, "dpo": DPOConfig}[request["stage"]]
    config = cls.from_dict(request["config"], where="training request")
    return _train(config, request, work)


def _train(config: SFTConfig | DPOConfig, request: dict[str, Any], work: str | Path) -> dict[str, Any]:
    model, out = request["model"], request["out"]
    if request["stage"] == "sft":
        ift, eft = request["ift"], request.get("eft")
        trainer = build_sft_trainer(config, model, ift, eft, work, request.get("chat_template", ""))
        metrics = train(trainer, extra_keys=("mean_token_accuracy",))
        data = {"ift": ift, **({"eft": eft} if eft else {})}
    else:
        trainer = build_dpo_trainer(config, model, request["pairs"], work)
        metrics = train(trainer, extra_keys=DPO_LOG_KEYS)
        data = {"pairs": request["pairs"]}
    metrics["processes"] = distributed.world_size()
    save(trainer, out, stage=request["stage"], parent=model, data=data, config=config, metrics=metrics)
    return metrics
