"""Presets: named settings files shipped with the package (``srlm/presets/<name>.yaml``).

A settings file has the shape of the pipeline's settings groups (``srlm.stages.GROUPS``)::

    base: tiny                 # optional: start from another preset (a shipped name or a file path)
    sampling:
      threads: 1               # group-level shared keys (threads, backend, dtype) apply to its configs
      candidates: {n: 4, max_new_tokens: 48}

A config class's values in a preset are its section (``sampling.candidates`` for SamplingConfig)
plus the group's shared keys. ``paper.yaml`` lists every setting at the paper's value, with its help
as a comment (written from the config classes: ``python -m srlm.presets write-paper``; a test
checks it is current); ``tiny`` and ``testbed`` list only what they change.

Copy one, edit it, then use it as ``srlm <stage> --config my.yaml`` (the stage reads its section),
``python -m pipelines.run_local --settings my.yaml``, or group by group as the pipeline's parameters.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from srlm.errors import SrlmError
from srlm.groups import SHARED_KEYS

META_KEYS = ("base",)


def directory() -> Path:
    return Path(str(resources.files("srlm") / "presets"))


def names() -> list[str]:
    """The shipped presets, ``paper`` first."""
    found = sorted(p.stem for p in directory().glob("*.yaml"))
    return sorted(found, key=lambda n: n != "paper")


def _read(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise SrlmError(f"{path}: not valid YAML ({e})") from None
    except OSError as e:
        raise SrlmError(f"{path}: cannot read ({e.strerror})") from None
    if not isinstance(data, dict):
        raise SrlmError(f"{path}: expected a mapping of settings groups, got {type(data).__name__}")
    return data


def is_settings_file(data: dict[str, Any]) -> bool:
    """Whether a YAML mapping is a settings file (groups), not one config's flat settings."""
    from srlm.stages import GROUPS

    return bool(data) and set(data) <= {*GROUPS, "mlflow", *META_KEYS}


def resolve(data: dict[str, Any], where: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """A settings file's groups with its ``base`` chain applied (each group's dicts merged key by key)."""
    base = data.get("base")
    groups = {k: v for k, v in data.items() if k not in META_KEYS}
    if not base:
        return groups
    if base in seen:
        raise SrlmError(f"{where}: presets form a loop ({' -> '.join((*seen, base))})")
    if base in names():
        parent = load(base)
    else:
        path = Path(base) if Path(base).is_absolute() else Path(where).parent / base
        parent = resolve(_read(path), str(path), (*seen, base))
    return merge(parent, groups)


def merge(lower: dict[str, Any], upper: dict[str, Any]) -> dict[str, Any]:
    """``upper`` over ``lower``: groups merged, a config's section merged setting by setting."""
    out = {group: dict(values) for group, values in lower.items()}
    for group, values in upper.items():
        if not isinstance(values, dict):
            raise SrlmError(f"settings group {group!r}: expected a mapping, got {values!r}")
        merged = out.setdefault(group, {})
        for key, value in values.items():
            merged[key] = {**merged[key], **value} if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return out


@functools.cache
def _load(name: str) -> dict[str, Any]:
    if name not in names():
        raise SrlmError(f"unknown preset {name!r}; choose from {', '.join(names())} (or pass a settings file)")
    path = directory() / f"{name}.yaml"
    return resolve(_read(path), str(path), (name,))


def load(name: str) -> dict[str, Any]:
    """Preset ``name``'s settings groups (a copy)."""
    return {group: dict(values) for group, values in _load(name).items()}


def location(cls: type) -> tuple[str, str] | None:
    """``(group, key)`` of a config class in the settings groups, or None for a class no stage reads."""
    from srlm.stages import GROUPS

    for group, keys in GROUPS.items():
        for key, known in keys.items():
            if known is cls:
                return group, key
    return None


def section(groups: dict[str, Any], cls: type, where: str) -> dict[str, Any]:
    """The values settings ``groups`` give config class ``cls``: the group's shared keys, then its own section."""
    found = location(cls)
    if found is None:
        raise SrlmError(f"{where}: {cls.__name__} has no section in a settings file (no stage reads it)")
    group, key = found
    values = groups.get(group) or {}
    own = values.get(key) or {}
    if not isinstance(own, dict):
        raise SrlmError(f"{where}: {group}.{key} must be a mapping of {cls.__name__} settings, got {own!r}")
    fields = {f.name for f in dataclasses.fields(cls)}
    return {**{k: values[k] for k in SHARED_KEYS if k in values and k in fields}, **own}


def values_for(name: str, cls: type) -> dict[str, Any]:
    """Preset ``name``'s values for config class ``cls``."""
    return section(_load(name), cls, f"preset {name!r}")


def settings_file(path: str | Path) -> dict[str, Any]:
    """A user's settings file as resolved groups (``base`` applied)."""
    data = _read(Path(path))
    if not is_settings_file(data):
        raise SrlmError(f"{path}: not a settings file: its top-level keys must be settings groups "
                        f"({', '.join(sorted(_group_names()))}) or base")
    return resolve(data, str(path))


def _group_names() -> list[str]:
    from srlm.stages import GROUPS

    return [*GROUPS, "mlflow"]


# ---- paper.yaml, written from the config classes' defaults -------------------------------------

def paper_text() -> str:
    """``paper.yaml``: every setting of every settings group at its default (the paper's value), with its help."""
    from srlm.stages import GROUPS

    lines = ["# The paper preset: every setting at the paper's value (SRLM_SPEC.md), or ours where the paper",
             "# gives none (the help says so). Written from the config classes by",
             "# `python -m srlm.presets write-paper`: do not edit; copy it and edit the copy.", ""]
    for group, keys in GROUPS.items():
        lines.append(f"{group}:")
        for key, cls in keys.items():
            lines.append(f"  {key}:  # {cls.__name__}")
            for f in dataclasses.fields(cls):
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
                value = yaml.safe_dump(default, default_flow_style=True, width=10_000).strip()
                value = value.removesuffix("\n...").removesuffix(" ...").strip()
                lines.append(f"    {f.name}: {value}  # {f.metadata.get('help', '')}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["write-paper"]:
        (directory() / "paper.yaml").write_text(paper_text(), encoding="utf-8")
        print(f"wrote {directory() / 'paper.yaml'}")
        return 0
    if len(args) == 2 and args[0] == "show":
        groups = load(args[1]) if args[1] in names() else settings_file(args[1])
        print(yaml.safe_dump(groups, sort_keys=False), end="")
        return 0
    print("usage: python -m srlm.presets write-paper | show NAME_OR_FILE", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
