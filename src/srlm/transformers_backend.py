"""The transformers backend: batched ``generate`` with one loaded model reused for every call.

Prompts are rendered with the model's chat template, sorted by length and cut into batches of
``batch_size`` sequences (prompts x n samples), left-padded; each batch is seeded by its global
position, so a shard (``b % K == k`` of the global batches) draws exactly what the full run draws.
"""

from __future__ import annotations

import time
from pathlib import Path

from srlm.generation import (
    GenerationOptions,
    GenerationStats,
    Prompt,
    check_shard,
    completion_length,
    load_causal_lm,
    load_tokenizer,
    prompt_token_ids,
    release_memory,
    render_prompt,
    stop_token_ids,
)
from srlm.numerics import set_threads


class TransformersGenerator:
    """Batched sampling with Hugging Face transformers (CPU or a single GPU)."""

    def __init__(self, model_dir: str | Path, options: GenerationOptions | None = None, chat_template: str = ""):
        import torch

        self.options = options or GenerationOptions()
        set_threads(self.options.threads)
        self.model_dir = Path(model_dir)
        self.tokenizer = load_tokenizer(model_dir, chat_template)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = load_causal_lm(model_dir, self.options.dtype).to(self.device).eval()
        self.stop_ids = stop_token_ids(self.tokenizer, self.model.generation_config)
        self.stats = GenerationStats()

    def close(self) -> None:
        """Drop the weights and return their memory (the object may outlive this call)."""
        self.model = None
        release_memory()

    def render(self, prompt: Prompt) -> str:
        return render_prompt(self.tokenizer, prompt)

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
        from tqdm.auto import tqdm

        mine, total = check_shard(shard)
        encoded = [prompt_token_ids(self.tokenizer, p) for p in prompts]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        # Each batch holds batch_size sequences in total (prompts x n samples).
        per_batch = max(1, self.options.batch_size // max(n, 1))
        batches = [(s, order[s : s + per_batch]) for s in range(0, len(order), per_batch)]
        batches = [(s, idx) for b, (s, idx) in enumerate(batches) if b % total == mine]
        results: list[list[str] | None] = [None for _ in encoded]
        started = time.perf_counter()
        with tqdm(total=sum(len(idx) for _, idx in batches), desc=desc, unit="prompt", leave=False) as bar:
            for start, idx in batches:
                # Seeded by the batch's global start, so a shard draws what the full run draws.
                replies = self._generate_batch([encoded[i] for i in idx], n, temperature, top_p, max_new_tokens, seed + start)
                for i, texts in zip(idx, replies):
                    results[i] = texts
                bar.update(len(idx))
        done = sum(len(idx) for _, idx in batches)
        self.stats.prompts += done
        self.stats.completions += done * n
        self.stats.seconds += time.perf_counter() - started
        return results

    def _generate_batch(
        self, ids: list[list[int]], n: int, temperature: float, top_p: float, max_new_tokens: int, seed: int
    ) -> list[list[str]]:
        import torch

        batch = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt")
        batch = {key: value.to(self.device) for key, value in batch.items()}
        torch.manual_seed(seed)
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
                eos_token_id=self.stop_ids,
            )
        replies: list[list[str]] = [[] for _ in ids]
        for row, tokens in enumerate(out[:, batch["input_ids"].shape[1] :]):
            length = completion_length(tokens, self.stop_ids, self.tokenizer.pad_token_id)
            self.stats.new_tokens += length
            self.stats.sequences += 1
            self.stats.stopped += length < len(tokens)
            text = self.tokenizer.decode(tokens[:length], skip_special_tokens=True).strip()
            replies[row // per_prompt].extend([text] * (n // per_prompt))
        return replies
