"""The judge of a benchmark: a model behind an OpenAI-compatible server (a vLLM server on the cluster,
its key in a Secret), or a local model directory run by the project's own generation backends.

``JudgeServerOptions`` is mixed into a benchmark's config (after ``GenerationOptions``, whose settings
are the answering model's and a local judge's); ``open_judge`` gives the generator and a name for the
judge that reports print beside every number.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from srlm.backends import make_generator
from srlm.config import setting
from srlm.errors import SrlmError
from srlm.generation import GenerationOptions
from srlm.secrets import redact_text


@dataclasses.dataclass
class JudgeServerOptions:
    judge_base_url: str = setting("", "the judge's OpenAI-compatible server up to /v1 (a vLLM server on the "
                                      "cluster); empty = a local judge model (the pipeline's fixed judge, M1)")
    judge_model: str = setting("", "the judge's model name on that server")
    judge_api_key_env: str = setting("OPENAI_API_KEY", "NAME of the environment variable holding the judge "
                                                       "server's key (a Secret on the cluster)")

    def check_judge_server(self, where: str) -> None:
        if self.judge_base_url and not self.judge_model:
            raise SrlmError(f"{where}.judge_model is empty: name the judge's model on the server at judge_base_url")

    def judge_options(self) -> GenerationOptions:
        """The judge's generation options: the judge server's, or the config's own for a local judge."""
        if not self.judge_base_url:
            return self  # type: ignore[return-value]  (the config is a GenerationOptions too)
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(GenerationOptions)}
        return GenerationOptions(**{**values, "backend": "openai", "base_url": self.judge_base_url,
                                    "served_model": self.judge_model, "api_key_env": self.judge_api_key_env})


def server_identity(config: Any) -> str:
    """The judge server as reports name it: its model at its URL (without a password in it)."""
    return f"{config.judge_model} at {redact_text(config.judge_base_url)}"


def open_judge(config: Any, local_model: str | Path | None, where: str) -> tuple[Any, str]:
    """The judge's generator and its name: the server's model at its URL, or the local model directory."""
    if config.judge_base_url:
        from srlm.openai_backend import OpenAIGenerator

        return OpenAIGenerator(config.judge_model, config.judge_options()), server_identity(config)
    if not local_model:
        raise SrlmError(f"{where}: no judge: set judge_base_url (a judge server) or give a local judge model")
    return make_generator(local_model, config.judge_options()), str(local_model)
