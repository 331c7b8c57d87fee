"""Text generation behind one interface, so every stage is indifferent to the engine.

``generate(prompts, n, temperature, top_p, max_new_tokens, seed)`` takes chat prompts (a
string is one user turn) and returns, per prompt, ``n`` completions. The transformers backend
is the CPU default: one loaded model reused for all calls, left padding, prompts sorted by
length so a batch wastes little padding. vLLM and an OpenAI-compatible endpoint plug in at
``make_generator`` (the seam for later backends).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Protocol

from srlm.config import setting
from srlm.errors import SrlmError
from srlm.modeldir import check_model_dir

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]
Prompt = str | Messages
BACKENDS = ("auto", "transformers")


@dataclasses.dataclass
class GenerationOptions:
    """Engine settings shared by every stage that generates (mixed into their configs)."""

    backend: str = setting("auto", "generation engine: auto | transformers")
    batch_size: int = setting(64, "prompts per forward batch (transformers backend)")
    threads: int = setting(0, "torch CPU threads; 0 = torch's default. Use 1 when tasks run side by side")
    dtype: str = setting("auto", "weights dtype: auto | float32 | bfloat16 | float16")
    seed: int = setting(0, "random seed for sampling")


class Generator(Protocol):
    def generate(
        self,
        prompts: list[Prompt],
        n: int = 1,
        temperature: float = 0.7,
        top_p: float = 0.9,
        max_new_tokens: int = 256,
        seed: int = 0,
        desc: str = "generating",
        shard: tuple[int, int] = (0, 1),
    ) -> list[list[str] | None]: ...


@dataclasses.dataclass
class GenerationStats:
    prompts: int = 0
    completions: int = 0
    new_tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0


def as_messages(prompt: Prompt) -> Messages:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    """``(k, K)``: this call produces shard ``k`` of ``K`` (0 <= k < K)."""
    try:
        k, total = (int(v) for v in shard)
    except (TypeError, ValueError):
        raise SrlmError(f"shard must be a pair (k, K), got {shard!r}") from None
    if total < 1 or not 0 <= k < total:
        raise SrlmError(f"shard {shard!r} is out of range: need K >= 1 and 0 <= k < K")
    return k, total


def set_threads(threads: int) -> None:
    if threads and threads > 0:
        import torch

        torch.set_num_threads(threads)


def resolve_dtype(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.float32 if not torch.cuda.is_available() else torch.bfloat16
    try:
        return getattr(torch, name)
    except AttributeError:
        raise SrlmError(f"unknown dtype {name!r}; use auto, float32, bfloat16 or float16") from None


def load_tokenizer(model_dir: str | Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(check_model_dir(model_dir)))


def load_causal_lm(model_dir: str | Path, dtype: str = "auto", **config_overrides: Any) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        str(check_model_dir(model_dir)), dtype=resolve_dtype(dtype), **config_overrides
    )


class TransformersGenerator:
    """Batched sampling with Hugging Face transformers (CPU or a single GPU)."""

    def __init__(self, model_dir: str | Path, options: GenerationOptions | None = None):
        import torch

        self.options = options or GenerationOptions()
        set_threads(self.options.threads)
        self.model_dir = Path(model_dir)
        self.tokenizer = load_tokenizer(model_dir)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = load_causal_lm(model_dir, self.options.dtype).to(self.device).eval()
        self.stats = GenerationStats()

    def render(self, prompt: Prompt) -> str:
        return self.tokenizer.apply_chat_template(as_messages(prompt), tokenize=False, add_generation_prompt=True)

    def generate(
        self,
        prompts: list[Prompt],
        n: int = 1,
        temperature: float = 0.7,
        top_p: float = 0.9,
        max_new_tokens: int = 256,
        seed: int = 0,
        desc: str = "generating",
        shard: tuple[int, int] = (0, 1),
    ) -> list[list[str] | None]:
        """Per prompt, ``n`` replies. With ``shard=(k, K)`` only the global batches ``b`` with
        ``b % K == k`` are generated (the others' entries are ``None``); batches are cut from the
        length-sorted prompts exactly as for ``K = 1`` and seeded by their global position, so the
        union over ``k`` equals the unsharded output."""
        import torch
        from tqdm.auto import tqdm

        k, total = check_shard(shard)
        texts = [self.render(p) for p in prompts]
        encoded = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
        # Each batch holds batch_size sequences in total (prompts x n samples).
        per_batch = max(1, self.options.batch_size // max(n, 1))
        starts = [s for s in range(0, len(order), per_batch) if (s // per_batch) % total == k]
        results: list[list[str] | None] = [None for _ in texts]
        started = time.perf_counter()
        done = 0
        with tqdm(total=sum(len(order[s : s + per_batch]) for s in starts), desc=desc, unit="prompt", leave=False) as bar:
            for start in starts:
                idx = order[start : start + per_batch]
                for i in idx:
                    results[i] = []
                batch = self.tokenizer.pad({"input_ids": [encoded[i] for i in idx]}, return_tensors="pt")
                batch = {k: v.to(self.device) for k, v in batch.items()}
                torch.manual_seed(seed + start)
                sampling = temperature > 0
                # Greedy decoding gives n identical replies: compute one, repeat it.
                per_prompt = n if sampling else 1
                with torch.inference_mode():
                    out = self.model.generate(
                        **batch,
                        do_sample=sampling,
                        temperature=temperature if sampling else None,
                        top_p=top_p if sampling else None,
                        top_k=0 if sampling else None,
                        max_new_tokens=max_new_tokens,
                        num_return_sequences=per_prompt,
                        pad_token_id=self.tokenizer.pad_token_id,
                        eos_token_id=self.tokenizer.eos_token_id,
                    )
                new = out[:, batch["input_ids"].shape[1] :]
                for row, tokens in enumerate(new):
                    length = _completion_length(tokens, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id)
                    self.stats.new_tokens += length
                    text = self.tokenizer.decode(tokens[:length], skip_special_tokens=True).strip()
                    results[idx[row // per_prompt]].extend([text] * (n // per_prompt))
                bar.update(len(idx))
                done += len(idx)
        self.stats.prompts += done
        self.stats.completions += done * n
        self.stats.seconds += time.perf_counter() - started
        return results


def _completion_length(tokens: Any, eos_id: int | None, pad_id: int | None) -> int:
    """Tokens up to (not including) the first EOS; padding after it is not output."""
    ids = tokens.tolist()
    for stop in (eos_id, pad_id):
        if stop is not None and stop in ids:
            ids = ids[: ids.index(stop)]
    return len(ids)


def make_generator(model_dir: str | Path, options: GenerationOptions | None = None) -> Generator:
    """Pick the backend: ``auto`` is transformers until a faster engine is installed and usable."""
    options = options or GenerationOptions()
    if options.backend not in BACKENDS:
        raise SrlmError(f"unknown generation backend {options.backend!r}; choose from {', '.join(BACKENDS)}")
    return TransformersGenerator(model_dir, options)
