"""Metric names and the one flattener that turns a stage's statistics into metrics.

Stage statistics are nested dicts; KFP ``Metrics``, MLflow metrics and model-version tags take
flat ``{name: number}``: :func:`numeric_metrics` keeps the finite numbers (bools, text, None,
lists, NaN and infinities are dropped), joins nested keys with ``.`` and skips the ``run`` and
``settings`` sections (at any depth) that reports carry for people.
"""

from __future__ import annotations

import math
import re
import typing
from collections.abc import Mapping
from typing import Any, Literal

# The reward-model metrics (SRLM_SPEC.md, "Evaluation"): on the EFT eval split, higher is better.
RMMetric = Literal["pairwise_accuracy", "five_best", "exact_match", "spearman", "kendall_tau"]
RM_METRICS: tuple[str, ...] = typing.get_args(RMMetric)
# Head-to-head win rates of a challenger: wins / prompts, and (wins + ties/2) / prompts.
WinMetric = Literal["win_rate", "adjusted_win_rate"]
WIN_METRICS: tuple[str, ...] = typing.get_args(WinMetric)
SKIPPED_SECTIONS = ("run", "settings")

_BAD_KEY_CHARS = re.compile(r"[^\w.\- /:]")


def flatten(data: Mapping[str, Any], prefix: str = "", skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; sections named in ``skip`` are left out at any depth."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in skip:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}.", skip))
        else:
            flat[name] = value
    return flat


def metric_key(name: str) -> str:
    """A name MLflow accepts as a metric, param or tag key."""
    return _BAD_KEY_CHARS.sub("_", str(name))[:250]


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def numeric_metrics(stats: Mapping[str, Any] | None) -> dict[str, float]:
    """The finite numeric leaves of ``stats``, flattened (see the module docstring)."""
    flat = flatten(stats or {}, skip=SKIPPED_SECTIONS)
    return {metric_key(k): float(v) for k, v in flat.items() if is_number(v) and math.isfinite(v)}
