"""A tiny Llama-style model built locally (no hub download): the embedded default's M0.

The tokenizer is a byte-level BPE trained on the bundled seed text and the judge rubric; the
chat template marks assistant turns with ``{% generation %}`` so TRL can put the SFT loss on
the response tokens only. Weights are random (seeded): the numbers such a model produces say
nothing about quality, they prove the wiring.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

from srlm.config import StageConfig, setting
from srlm.io import atomic_path
from srlm.modeldir import write_lineage

BOS, EOS, PAD = "<|begin|>", "<|end|>", "<|pad|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


@dataclasses.dataclass
class TinyModelConfig(StageConfig):
    vocab_size: int = setting(2048, "BPE vocabulary size")
    hidden_size: int = setting(128, "model width")
    num_layers: int = setting(4, "transformer layers")
    num_heads: int = setting(4, "attention heads")
    intermediate_size: int = setting(384, "MLP width")
    max_positions: int = setting(2048, "longest sequence (judge prompts carry the whole rubric)")
    seed: int = setting(0, "seed for the weights")
    corpus: Literal["bundled", "testbed"] = setting("bundled", "text the tokenizer learns from: bundled (the seed set) or testbed")



def training_text(corpus: str = "bundled") -> list[str]:
    """The text the tokenizer learns from: the judge rubric plus the bundled seed data or testbed text."""
    from srlm import seed_data
    from srlm.judge import DEFAULT_TEMPLATE, SHORT_TEMPLATE

    texts = [DEFAULT_TEMPLATE]
    if corpus == "testbed":
        from srlm import testbed

        # The judge template is in every judge prompt: weighted so its words become whole tokens.
        return texts + [SHORT_TEMPLATE] * 40 + testbed.corpus()
    for example in seed_data.bundled("ift"):
        texts.extend(m["content"] for m in example["messages"])
    for example in seed_data.bundled("eft_train"):
        texts.extend([example["prompt"], example["response"], example["judgement"]])
    for item in seed_data.bundled("eft_eval"):
        texts.extend([item["prompt"], *item["replies"]])
    return texts


def build_tokenizer(vocab_size: int, corpus: str = "bundled") -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS, *ROLE_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_text(corpus), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build(config: TinyModelConfig) -> tuple[Any, Any]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(config.vocab_size, config.corpus)
    torch.manual_seed(config.seed)
    model_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        max_position_embeddings=config.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(model_config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def run(config: TinyModelConfig, out: str | Path) -> dict[str, Any]:
    """Write a complete Hugging Face model directory (weights, tokenizer, chat template, lineage)."""
    model, tokenizer = build(config)
    with atomic_path(out, directory=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_lineage(tmp, stage="tiny-model", parent=None, config=config.to_dict())
    params = sum(p.numel() for p in model.parameters())
    return {"parameters": params, "vocab_size": len(tokenizer), "out": str(out)}
