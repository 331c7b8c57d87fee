"""Chat templates for base checkpoints, which ship none (Llama-2-70b-hf, Meta-Llama-3-8B, ...).

Every stage formats prompts with the model's chat template, and SFT puts its loss on the assistant
turns only, which needs a template with ``{% generation %}`` markers. A base model gets one from
the ``base_model.chat_template`` setting, applied when M0 is loaded (SFT saves it with M1, so every
later model carries it):

- ``auto`` (default): the model's own template if it has one; else ``llama-3`` when its vocabulary
  has ``<|start_header_id|>``, ``chatml`` when it has ``<|im_start|>``, ``llama-2`` for a Llama or
  Mistral model; else an error saying what to set;
- a name below, a ``.jinja`` file, or the template text itself.
"""

from __future__ import annotations

import json
from pathlib import Path

from srlm.errors import SrlmError

LLAMA_2 = (
    "{%- set ns = namespace(system='') -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{%- set ns.system = message['content'] -%}"
    "{%- elif message['role'] == 'user' -%}"
    "{{ bos_token }}[INST] {% if ns.system %}<<SYS>>\n{{ ns.system }}\n<</SYS>>\n\n{% set ns.system = '' %}{% endif %}"
    "{{ message['content'] }} [/INST]"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ ' ' }}{% generation %}{{ message['content'] }}{{ eos_token }}{% endgeneration %}"
    "{%- endif -%}"
    "{%- endfor -%}"
)
LLAMA_3 = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] | trim }}<|eot_id|>{% endgeneration %}"
    "{% else %}{{ message['content'] | trim }}<|eot_id|>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
CHATML = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] }}<|im_end|>{% endgeneration %}"
    "{% else %}{{ message['content'] }}<|im_end|>{% endif %}{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
NAMED = {"llama-2": LLAMA_2, "llama-3": LLAMA_3, "chatml": CHATML}
LLAMA_2_FAMILIES = ("llama", "mistral")


def resolve(value: str, model_dir: str | Path | None = None) -> str:
    """The template text ``value`` stands for, or "" when the model's own template is to be kept.

    SrlmError when ``auto`` finds neither a template in the model nor a family it knows."""
    value = (value or "auto").strip()
    if value in NAMED:
        return NAMED[value]
    if "{%" in value or "{{" in value:
        return value
    if value != "auto":
        path = Path(value)
        if not path.is_file():
            raise SrlmError(f"chat template {value!r}: not one of {', '.join(['auto', *NAMED])}, a .jinja file or "
                            "template text")
        return path.read_text(encoding="utf-8")
    if model_dir is None:
        return ""
    from srlm.modeldir import has_chat_template

    model_dir = Path(model_dir)
    if has_chat_template(model_dir):
        return ""
    guessed = guess(model_dir)
    if guessed is None:
        raise SrlmError(f"{model_dir}: the model has no chat template and its family is not one srlm knows: set "
                        f"base_model.chat_template to {', '.join(NAMED)}, a .jinja file or the template text")
    return NAMED[guessed]


def guess(model_dir: Path) -> str | None:
    """The named template that fits a template-less model, from its vocabulary and model type."""
    vocab = ""
    tokenizer = model_dir / "tokenizer.json"
    if tokenizer.is_file():
        vocab = tokenizer.read_text(encoding="utf-8", errors="replace")
    if "<|start_header_id|>" in vocab:
        return "llama-3"
    if "<|im_start|>" in vocab:
        return "chatml"
    config = model_dir / "config.json"
    model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type") if config.is_file() else None
    return "llama-2" if model_type in LLAMA_2_FAMILIES else None
