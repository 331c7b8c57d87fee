"""Markdown helpers shared by the evaluation reports (a report is read by a person: KFP Markdown, MLflow)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from srlm.modeldir import read_lineage


def heading(level: int, text: str) -> str:
    """A Markdown heading; reports take their top level so one can be a section of another."""
    return f"{'#' * level} {text}"


def lineage_summary(model: str | Path) -> dict[str, Any]:
    try:
        lineage = read_lineage(model)
    except (OSError, ValueError):
        return {}
    return {k: lineage[k] for k in ("stage", "iteration", "parent") if k in lineage}


def lineage_text(lineage: dict[str, Any] | None) -> str:
    if not lineage:
        return ""
    parts = [f"{k} {lineage[k]}" for k in ("stage", "iteration") if lineage.get(k) is not None]
    return f" ({', '.join(parts)})" if parts else ""


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100.0 * value:.1f}"


def num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit].rstrip() + " […]"


def fence(text: str) -> str:
    """A fenced code block that survives backticks inside ``text``."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"
