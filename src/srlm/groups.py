"""Settings groups: the pipeline's run-time parameters, one dict per group, resolved into stage configs.

    sampling = {"preset": "tiny", "threads": 1, "candidates": {"n": 4}}

``preset`` applies to every config of the group; the shared keys (``threads``, ``backend``,
``dtype``, the GPUs and nodes: :data:`SHARED_KEYS`) at group level apply to each of the group's
configs that has that setting; a config's own dict wins. Which keys a group has comes from the stage registry (``srlm.stages.GROUPS``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from srlm.config import StageConfig
from srlm.errors import SrlmError

# Group-level keys that apply to every config of the group that has the setting: the engine, and the hardware
# (the same GPUs and nodes for SFT and DPO, the same tensor parallelism for every generating stage).
SHARED_KEYS = ("threads", "backend", "dtype", "tensor_parallel_size", "gpu_memory_utilization", "nodes",
               "gpus_per_node", "strategy", "launcher", "shared_dir", "trainjob_image", "trainjob_namespace",
               "trainjob_timeout_hours")


def check_group(name: str, group: Mapping[str, Any] | None, keys: Mapping[str, Any] | tuple[str, ...]) -> dict[str, Any]:
    """The group as a dict; SrlmError naming the group for anything that is not one of ``keys``."""
    if group is None:
        return {}
    if not isinstance(group, Mapping):
        raise SrlmError(f"{name}: expected a mapping of settings, got {type(group).__name__} {group!r}")
    known = {"preset", *SHARED_KEYS, *keys}
    unknown = sorted(set(group) - known)
    if unknown:
        raise SrlmError(f"{name}: unknown key(s) {unknown}; known: {sorted(known)}")
    return dict(group)


def stage_config(group_name: str, group: Mapping[str, Any], key: str, cls: type[StageConfig]) -> Any:
    """Build ``key``'s config of a (checked) settings group: its preset, then shared keys, then its own dict."""
    own = group.get(key) or {}
    if not isinstance(own, Mapping):
        raise SrlmError(f"{group_name}.{key}: expected a mapping of {cls.__name__} settings, got {own!r}")
    fields = {f.name for f in dataclasses.fields(cls)}
    shared = {k: group[k] for k in SHARED_KEYS if k in group and k in fields}
    try:
        return cls.load(group.get("preset") or None, **{**shared, **own})
    except SrlmError as e:
        raise SrlmError(f"{group_name}.{key}: {e}") from None
