"""The fit check: memory per GPU of each stage, estimated from the model's config before any GPU work.

Parameters are counted exactly from ``config.json``: by formula for the Llama-style families (the
validation image has no torch), else by transformers building the model on the meta device (no
weights, no memory); the tests check the formula against the meta-device count.

Training, per GPU (P parameters, N GPUs in all, bytes):

- model states, full-parameter AdamW (Rajbhandari et al. 2020, ZeRO, section 3.1: 16 bytes per
  parameter in mixed precision; HF Trainer's fp32 master weights 4 + fp32 gradients 4 + Adam's two
  moments 8 is the same 16): ``16 P`` with ``ddp``; ``16 P / N`` sharded by ``fsdp2`` or ``zero3``;
  ``zero3_offload`` keeps 16-bit weights and gradients on the GPU (``4 P / N``) and the fp32 master
  weights and moments in CPU memory (``12 P / nodes`` per node);
- the DPO reference: ``2 P`` (16-bit; sharded like the policy) unless its log-probs are precomputed
  before training (``precompute_ref_log_probs``, the paper preset), then nothing;
- activations (Korthikanti et al. 2022, "Reducing Activation Recomputation", section 4.1: a
  transformer layer stores ``34 s b h`` bytes in 16-bit with a fused attention kernel, which drops
  their ``5 a s^2 b`` attention-score term): with gradient checkpointing the L layer inputs
  (``2 s b h L``) plus one layer recomputed (``34 s b h``), else ``34 s b h L``; s = max_length,
  b = per_device_batch_size (twice for DPO: chosen and rejected go through together); doubled
  without mixed precision (fp32 activations);
- logits: ``8 s b V`` (fp32 logits and their gradient; with Llama 3's 128k vocabulary this is often
  the largest activation);
- LoRA instead of full-parameter training: the frozen base in 16 bits (``2 P``) plus 16 bytes per
  adapter parameter (``r (inputs + outputs)`` per adapted linear layer), no reference model (the
  base with adapters off is the reference);
- overhead: 10% of the above plus 2 GiB (CUDA context, NCCL buffers, allocator fragmentation).

Generation with vLLM, per GPU: 16-bit weights ``2 P / tp`` plus the KV cache of one sequence of the
context length (``2 L kv_heads head_dim * 2 bytes`` per token; vLLM refuses to start without it)
plus 2 GiB, within ``gpu_memory_utilization`` of the GPU.

These are estimates meant to refuse what cannot fit and to pass what fits with room; they are
checked against measured peaks where a GPU was available (README, "Scaling out").
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from srlm.errors import SrlmError

GIB = 1024**3
STRATEGIES = ("ddp", "fsdp2", "zero3", "zero3_offload")
SHARDED = ("fsdp2", "zero3", "zero3_offload")
OVERHEAD_SHARE, OVERHEAD_BYTES = 0.10, 2 * GIB
ACTIVATION_BYTES_PER_LAYER = 34  # x s b h, 16-bit, fused attention (Korthikanti et al. 2022)
LOGIT_BYTES = 8  # x s b V: fp32 logits and their gradient


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """What the estimate needs of a model: its exact parameter count and the sizes of its layers."""

    params: int
    layers: int
    hidden: int
    vocab: int
    kv_heads: int
    head_dim: int
    max_positions: int
    heads: int = 0
    intermediate: int = 0
    model_type: str = "llama"

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * 2  # K and V, 16-bit


def read_config(model: str | Path | dict[str, Any]) -> dict[str, Any]:
    """A model's ``config.json`` (a model directory, the file itself, or the dict)."""
    if isinstance(model, dict):
        return model
    path = Path(model)
    path = path / "config.json" if path.is_dir() else path
    if not path.is_file():
        raise SrlmError(f"{model}: no config.json to estimate the model's memory from")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SrlmError(f"{path}: not valid JSON ({e})") from None


def model_shape(model: str | Path | dict[str, Any]) -> ModelShape:
    """The shape a config describes: counted by formula for the Llama-style families (no torch needed: the
    validation image has none), else by building the model on the meta device."""
    config = read_config(model)
    if not config.get("model_type"):
        raise SrlmError(f"{model}: config.json has no model_type")
    text = config.get("text_config") or config
    try:
        heads = text["num_attention_heads"]
        hidden = text["hidden_size"]
        shape = dict(layers=text["num_hidden_layers"], hidden=hidden, vocab=text["vocab_size"],
                     kv_heads=text.get("num_key_value_heads") or heads, head_dim=text.get("head_dim") or hidden // heads,
                     max_positions=text.get("max_position_embeddings") or 0, heads=heads,
                     intermediate=text.get("intermediate_size") or 0, model_type=config["model_type"])
    except KeyError as e:
        raise SrlmError(f"{model}: config.json has no {e.args[0]}: cannot estimate the model's memory") from None
    params = llama_style_params(config) if config["model_type"] in LLAMA_STYLE else _meta_device_params(model, config)
    return ModelShape(params=params, **shape)


LLAMA_STYLE = ("llama", "mistral", "qwen2", "qwen3")  # decoder blocks: attention, gated MLP, RMSNorms


def llama_style_params(c: dict[str, Any]) -> int:
    """Embeddings (and an untied LM head), per layer q/k/v/o (biases in Qwen2), the gated MLP (3 h f), two RMSNorms
    (plus Qwen3's q/k norms), the final norm."""
    h, f, layers, vocab = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    heads = c["num_attention_heads"]
    kv, hd = c.get("num_key_value_heads") or heads, c.get("head_dim") or h // heads
    attention = 2 * h * heads * hd + 2 * h * kv * hd
    if c["model_type"] == "qwen2":  # biases on q, k and v
        attention += heads * hd + 2 * kv * hd
    elif c.get("attention_bias"):  # biases on q, k, v and o
        attention += heads * hd + 2 * kv * hd + h
    mlp = 3 * h * f + (2 * f + h if c.get("mlp_bias") else 0)
    norms = 2 * h + (2 * hd if c["model_type"] == "qwen3" else 0)
    untied = not c.get("tie_word_embeddings", False)
    return vocab * h * (2 if untied else 1) + layers * (attention + mlp + norms) + h


def lora_params(shape: ModelShape, r: int, targets: list[str]) -> int:
    """Trainable parameters of rank-``r`` adapters (``r x (inputs + outputs)`` per adapted linear layer) on the
    Llama-style projections named in ``targets`` (``all-linear``: all seven; the output head is never adapted)."""
    if shape.model_type not in LLAMA_STYLE:
        raise SrlmError(f"LoRA estimate for model_type {shape.model_type!r}: only {', '.join(LLAMA_STYLE)} are known")
    h, q, kv, f = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim, shape.intermediate
    linear = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
              "gate_proj": (h, f), "up_proj": (h, f), "down_proj": (f, h)}
    names = linear if list(targets) == ["all-linear"] else [t for t in targets if t in linear]
    return shape.layers * sum(r * sum(linear[n]) for n in names)


def _meta_device_params(model: Any, config: dict[str, Any]) -> int:
    try:
        import torch
        import transformers
    except ImportError:
        raise SrlmError(f"{model}: model_type {config['model_type']!r} is counted by building it on the meta device, "
                        "which needs torch and transformers: run `srlm plan` where they are installed") from None
    values = {k: v for k, v in config.items() if k != "model_type"}
    try:
        built_config = transformers.AutoConfig.for_model(config["model_type"], **values)
    except ValueError as e:
        raise SrlmError(f"{model}: transformers does not know model_type {config['model_type']!r} ({e})") from None
    with torch.device("meta"):
        built = transformers.AutoModelForCausalLM.from_config(built_config)
    return sum(p.numel() for p in built.parameters())  # tied weights are one parameter


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where training runs: nodes x GPUs per node, how the model states are spread, each GPU's memory."""

    nodes: int = 1
    gpus_per_node: int = 1
    strategy: str = "ddp"
    gpu_memory_gib: float = 80.0

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    def describe(self) -> str:
        return f"{self.nodes} node(s) x {self.gpus_per_node} GPU(s) of {self.gpu_memory_gib:g} GiB, {self.strategy}"


@dataclasses.dataclass(frozen=True)
class Estimate:
    """One stage's memory per GPU (parts in bytes) against what a GPU has."""

    stage: str
    parts: dict[str, float]
    capacity: float
    cpu_per_node: float = 0.0  # offloaded optimizer states

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    @property
    def fits(self) -> bool:
        return self.total <= self.capacity

    def summary(self) -> dict[str, Any]:
        out = {"stage": self.stage, "gib_per_gpu": round(self.total / GIB, 1), "capacity_gib": round(self.capacity / GIB, 1),
               "fits": self.fits, **{f"{k}_gib": round(v / GIB, 1) for k, v in self.parts.items()}}
        if self.cpu_per_node:
            out["cpu_gib_per_node"] = round(self.cpu_per_node / GIB, 1)
        return out


def training(shape: ModelShape, config: Any, layout: Layout, stage: str) -> Estimate:
    """SFT or DPO (``stage``) with a TrainingOptions ``config`` on ``layout``."""
    if layout.strategy not in STRATEGIES:
        raise SrlmError(f"unknown training strategy {layout.strategy!r}; choose from {', '.join(STRATEGIES)}")
    p, shard = shape.params, layout.gpus if layout.strategy in SHARDED else 1
    offload = layout.strategy == "zero3_offload"
    if getattr(config, "peft", "none") == "lora":  # a frozen 16-bit base; only the adapters train (no reference)
        adapters = lora_params(shape, config.lora_r, config.lora_target_modules)
        parts: dict[str, float] = {"frozen_weights": 2 * p / shard, "adapter_states": 16 * adapters / shard}
    else:
        parts = {"model_states": (4 if offload else 16) * p / shard}
        if stage == "dpo" and not getattr(config, "precompute_ref_log_probs", True):
            parts["reference"] = 2 * p / shard
    rows = config.per_device_batch_size * (2 if stage == "dpo" else 1)
    tokens = rows * config.max_length
    precision = 2 if config.mixed_precision == "no" else 1
    layer = ACTIVATION_BYTES_PER_LAYER * tokens * shape.hidden * precision
    if config.gradient_checkpointing:
        parts["activations"] = 2 * tokens * shape.hidden * shape.layers * precision + layer
    else:
        parts["activations"] = layer * shape.layers
    parts["logits"] = LOGIT_BYTES * tokens * shape.vocab
    parts["overhead"] = OVERHEAD_SHARE * sum(parts.values()) + OVERHEAD_BYTES
    cpu = 12 * p / layout.nodes if offload else 0.0
    return Estimate(stage, parts, layout.gpu_memory_gib * GIB, cpu)


def generation(shape: ModelShape, options: Any, gpu_memory_gib: float, stage: str = "generation") -> Estimate:
    """vLLM serving the model in 16 bits over ``tensor_parallel_size`` GPUs (GenerationOptions ``options``)."""
    tp = max(1, options.tensor_parallel_size)
    context = options.max_model_len or shape.max_positions or 4096
    parts = {"weights": 2 * shape.params / tp, "kv_cache_one_sequence": shape.kv_bytes_per_token * context / tp,
             "overhead": OVERHEAD_BYTES}
    return Estimate(stage, parts, options.gpu_memory_utilization * gpu_memory_gib * GIB)


def what_fits(shape: ModelShape, config: Any, layout: Layout, stage: str, max_gpus: int = 512) -> list[str]:
    """Settings near ``layout`` under which the stage fits (for the refusal message)."""
    found = []
    node = max(layout.gpus_per_node, 8)  # more GPUs in one node first, then whole nodes
    shapes = [(1, g) for g in range(layout.gpus_per_node, node + 1)] + [(n, node) for n in range(2, max_gpus // node + 1)]
    fitting = next(((n, g) for n, g in shapes if n * g >= layout.gpus and training(
        shape, config, dataclasses.replace(layout, strategy="fsdp2", nodes=n, gpus_per_node=g), stage).fits), None)
    if fitting:
        found.append(f"strategy=fsdp2 or zero3 on {fitting[0]} node(s) x {fitting[1]} GPU(s)")
    offload = training(shape, config, dataclasses.replace(layout, strategy="zero3_offload"), stage)
    if offload.fits and layout.strategy != "zero3_offload":
        found.append(f"strategy=zero3_offload on {layout.nodes} node(s) x {layout.gpus_per_node} GPU(s) "
                     f"(with {offload.cpu_per_node / GIB:.0f} GiB of CPU memory per node for the optimizer states)")
    lora = dataclasses.replace(config, peft="lora", strategy="ddp")
    if config.peft == "none" and shape.model_type in LLAMA_STYLE and training(
            shape, lora, dataclasses.replace(layout, strategy="ddp"), stage).fits:
        found.append(f"peft=lora (r={lora.lora_r}, adapters on {', '.join(lora.lora_target_modules)}) on "
                     f"{layout.nodes} node(s) x {layout.gpus_per_node} GPU(s)")
    if stage == "dpo" and not getattr(config, "precompute_ref_log_probs", True):
        if training(shape, dataclasses.replace(config, precompute_ref_log_probs=True), layout, stage).fits:
            found.append("precompute_ref_log_probs=true (no reference model in memory)")
    if config.per_device_batch_size > 1:
        steps = config.gradient_accumulation_steps * config.per_device_batch_size
        smaller = dataclasses.replace(config, per_device_batch_size=1, gradient_accumulation_steps=steps)
        if training(shape, smaller, layout, stage).fits:
            found.append(f"per_device_batch_size=1 with gradient_accumulation_steps={steps} (the same batch)")
    return found


def check_training(shape: ModelShape, config: Any, layout: Layout, stage: str, model: str = "the model") -> Estimate:
    """The estimate, or SrlmError giving the numbers and what would fit."""
    estimate = training(shape, config, layout, stage)
    if estimate.fits:
        return estimate
    parts = ", ".join(f"{k} {v / GIB:.1f}" for k, v in estimate.parts.items())
    options = what_fits(shape, config, layout, stage)
    raise SrlmError(
        f"{stage}: {model} ({shape.params / 1e9:.2f}B parameters) needs about {estimate.total / GIB:.1f} GiB per GPU "
        f"({parts}) on {layout.describe()}: it does not fit. "
        + ("What would fit: " + "; ".join(options) if options else "Nothing near this layout fits: use more GPUs")
    )


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of estimate summaries (``srlm plan``)."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    cells = [[str(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def plan(model: str | Path | dict[str, Any], layout: Layout, *, sft: Any, dpo: Any,
         generators: dict[str, Any]) -> tuple[ModelShape, list[Estimate]]:
    """Every stage's estimate: SFT and DPO on ``layout``, each generating stage (name -> GenerationOptions) with
    vLLM on GPUs of the same memory."""
    shape = model_shape(model)
    estimates = [training(shape, sft, layout, "sft"), training(shape, dpo, layout, "dpo")]
    estimates += [generation(shape, options, layout.gpu_memory_gib, name) for name, options in generators.items()]
    return shape, estimates


def refusals(shape: ModelShape, estimates: list[Estimate], layout: Layout, *, sft: Any, dpo: Any,
             generators: dict[str, Any], name: str = "the model") -> list[str]:
    """One message per stage of ``plan`` that does not fit, with the numbers and what would."""
    problems = []
    for estimate in estimates:
        if estimate.fits:
            continue
        if estimate.stage in ("sft", "dpo"):
            try:
                check_training(shape, sft if estimate.stage == "sft" else dpo, layout, estimate.stage, name)
            except SrlmError as e:
                problems.append(str(e))
            continue
        options = generators[estimate.stage]
        tp = next((t for t in (2, 4, 8, 16) if t > options.tensor_parallel_size and generation(
            shape, dataclasses.replace(options, tensor_parallel_size=t), layout.gpu_memory_gib).fits), None)
        problems.append(
            f"{estimate.stage}: vLLM needs about {estimate.total / GIB:.1f} GiB per GPU for {name} "
            f"({shape.params / 1e9:.2f}B parameters in 16 bits over tensor_parallel_size={options.tensor_parallel_size}, "
            f"plus one sequence's KV cache) but gets {estimate.capacity / GIB:.1f} GiB "
            f"(gpu_memory_utilization x {layout.gpu_memory_gib:g} GiB)"
            + (f": tensor_parallel_size={tp} would fit" if tp else ": nothing up to 16 GPUs fits"))
    return problems
