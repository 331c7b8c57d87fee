"""Image references for the components: one file, ``images/images.json``, read at compile time.

``image("sample")`` is ``<registry>/<images.sample>:<tag>``. ``SRLM_REGISTRY`` and ``SRLM_TAG``
override the file's registry and tag (set them before importing ``components``; the Makefile's
image targets read the same file).
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

IMAGES_FILE = Path(__file__).resolve().parent.parent / "images" / "images.json"
ENV_REGISTRY = "SRLM_REGISTRY"
ENV_TAG = "SRLM_TAG"


@functools.cache
def _spec(path: str) -> dict[str, Any]:
    spec = json.loads(Path(path).read_text(encoding="utf-8"))
    for key in ("registry", "tag", "images"):
        if key not in spec:
            raise ValueError(f"{path}: missing {key!r}")
    return spec


def images_spec(path: str | Path = IMAGES_FILE) -> dict[str, Any]:
    return _spec(str(path))


def image(stage: str, path: str | Path = IMAGES_FILE) -> str:
    """The full image reference of ``stage`` (a key of ``images`` in images.json)."""
    spec = images_spec(path)
    if stage not in spec["images"]:
        raise KeyError(f"{path}: no image for stage {stage!r}; stages: {sorted(spec['images'])}")
    registry = (os.environ.get(ENV_REGISTRY) or spec["registry"]).rstrip("/")
    tag = os.environ.get(ENV_TAG) or spec["tag"]
    return f"{registry}/{spec['images'][stage]}:{tag}"
