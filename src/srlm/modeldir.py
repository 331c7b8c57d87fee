"""Model directories: a Hugging Face ``save_pretrained`` folder plus a lineage file.

Every stage that takes a model checks the directory first, so a missing tokenizer or chat
template is reported as one clear line instead of a deep transformers traceback.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

from srlm.errors import SrlmError
from srlm.io import file_digest, write_json

LINEAGE_FILE = "srlm_lineage.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def check_model_dir(path: str | Path, require_template: bool = True) -> Path:
    """Raise SrlmError unless ``path`` holds a config, weights, a tokenizer and (unless the caller brings one,
    ``require_template=False``) a chat template."""
    path = Path(path)
    if not path.is_dir():
        raise SrlmError(f"{path}: model directory not found")
    if not (path / "config.json").is_file():
        raise SrlmError(f"{path}: not a Hugging Face model directory (no config.json)")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise SrlmError(f"{path}: model directory has no weights (*.safetensors)")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise SrlmError(f"{path}: model directory has no tokenizer (expected tokenizer.json); save the tokenizer with the model")
    if require_template and not has_chat_template(path):
        raise SrlmError(f"{path}: tokenizer has no chat template (chat_template.jinja); the stages format prompts with "
                        "it. A base checkpoint: set base_model.chat_template (llama-2, llama-3, chatml, a .jinja file)")
    return path


def has_chat_template(path: Path) -> bool:
    if (path / "chat_template.jinja").is_file():
        return True
    config = path / "tokenizer_config.json"
    if config.is_file():
        try:
            return bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template"))
        except json.JSONDecodeError:
            return False
    return False


def read_lineage(path: str | Path) -> dict[str, Any]:
    """The model's lineage, or {} for a model that did not come from this project."""
    lineage = Path(path) / LINEAGE_FILE
    if not lineage.is_file():
        return {}
    return json.loads(lineage.read_text(encoding="utf-8"))


def write_lineage(
    model_dir: str | Path,
    *,
    stage: str,
    parent: str | Path | None,
    data: dict[str, str | Path] | None = None,
    config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Record where a model came from: its parent, the digests of its data, its settings."""
    parent_lineage = read_lineage(parent) if parent else {}
    lineage = {
        "stage": stage,
        "iteration": parent_lineage.get("iteration", 0) + 1 if stage in ("sft", "dpo") else parent_lineage.get("iteration", 0),
        "parent": str(parent) if parent else None,
        "parent_iteration": parent_lineage.get("iteration"),
        "data_digests": {name: file_digest(p) for name, p in (data or {}).items()},
        "config": config or {},
        "metrics": metrics or {},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(Path(model_dir) / LINEAGE_FILE, lineage)
    return lineage
