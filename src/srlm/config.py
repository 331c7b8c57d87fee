"""One config dataclass per stage: the Python API, the YAML file and the CLI flags are the same thing.

Defaults are the paper's (the ``paper`` preset). Presets are settings files shipped with the
package (``srlm.presets``: ``paper``, ``tiny`` makes CPU runs take minutes, ``testbed``). Values
are applied in this order: defaults < preset < YAML file < explicit overrides (CLI flags or keyword
arguments). A YAML file is either one config's flat settings or a settings file with groups (a
copied preset), from which the config reads its own section.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from srlm.errors import SrlmError

C = TypeVar("C", bound="StageConfig")


def setting(default: Any, help: str) -> Any:
    """A config field with its help text (shown by ``srlm <stage> --help``)."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass
class StageConfig:
    @classmethod
    def preset_names(cls) -> list[str]:
        from srlm import presets

        return presets.names()

    @classmethod
    def load(
        cls: type[C],
        preset: str | None = None,
        yaml_path: str | Path | None = None,
        **overrides: Any,
    ) -> C:
        values: dict[str, Any] = {}
        if preset and preset != "paper":  # paper: the defaults (paper.yaml lists them)
            from srlm import presets

            values.update(presets.values_for(preset, cls))
        if yaml_path:
            values.update(_read_yaml(yaml_path, cls))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values)

    @classmethod
    def from_dict(cls: type[C], values: dict[str, Any], where: str = "config") -> C:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise SrlmError(f"{where}: unknown setting(s) {unknown} for {cls.__name__}; known: {sorted(names)}")
        hints = typing.get_type_hints(cls)
        coerced = {k: _coerce(v, hints[k], f"{where}: {k}") for k, v in values.items()}
        config = cls(**coerced)
        check_ranges(config, where)
        config.validate()
        return config

    def validate(self) -> None:
        """Stage configs override this to reject inconsistent settings with a clear message."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self: C, **changes: Any) -> C:
        return self.from_dict({**self.to_dict(), **changes})


def _read_yaml(path: str | Path, cls: type) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise SrlmError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise SrlmError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise SrlmError(f"{path}: expected a mapping of settings for {cls.__name__}")
    from srlm import presets

    if presets.is_settings_file(data):
        return presets.section(presets.resolve(data, str(path)), cls, str(path))
    return data


def _in_range(name: str) -> tuple[float, float, bool] | None:
    """(low, high, low is allowed) for a setting whose name says what it is; None: no range by name."""
    if name == "temperature" or name.endswith("_temperature"):
        return 0.0, math.inf, True  # 0 = greedy
    if name == "top_p" or name.endswith("_top_p"):
        return 0.0, 1.0, False
    if name.endswith(("_fraction", "_utilization", "_share")):
        return 0.0, 1.0, True
    return None


def check_ranges(config: Any, where: str = "config") -> None:
    """Every number is finite; temperatures >= 0; top-p in (0, 1]; fractions and shares in [0, 1]."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if not isinstance(value, float) or isinstance(value, bool):
            continue
        if not math.isfinite(value):
            raise SrlmError(f"{where}: {f.name} must be a finite number, not {value}")
        bounds = _in_range(f.name)
        if bounds is None:
            continue
        low, high, low_ok = bounds
        if not ((value >= low if low_ok else value > low) and value <= high):
            shown = f"[{low:g}, {high:g}]" if low_ok else f"({low:g}, {high:g}]"
            shown = ">= 0" if high == math.inf else shown
            raise SrlmError(f"{where}: {f.name} must be {shown}, not {value}")


def literal_choices(hint: Any) -> tuple[Any, ...] | None:
    """The allowed values of a ``Literal[...]`` type (or a union of them), else None."""
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        parts = [literal_choices(a) for a in typing.get_args(hint)]
        if parts and all(p is not None for p in parts):
            return tuple(v for p in parts for v in p)  # type: ignore[union-attr]
    return None


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Turn YAML/CLI values into the field's type (str '0.7' -> float, 'true' -> bool, ...)."""
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if value is None:
        return None
    choices = literal_choices(hint)
    if choices is not None:
        if value not in choices:
            raise SrlmError(f"{where}: {value!r} is not allowed; choose from {', '.join(map(repr, choices))}")
        return value
    if origin in (typing.Union, types.UnionType) and args:
        return _coerce(value, args[0], where)
    if hint in (bool, int, float, str) and isinstance(value, (list, tuple, dict, set)):
        kind = "a mapping" if isinstance(value, dict) else "a list"
        raise SrlmError(f"{where}: expected a single {hint.__name__}, got {kind}: {value!r}")
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes", "on"):
                    return True
                if value.lower() in ("false", "0", "no", "off"):
                    return False
                raise ValueError(value)
            if value not in (0, 1):  # True, False, 0, 1
                raise ValueError(value)
            return bool(value)
        if isinstance(value, bool) and hint in (int, float, str):
            raise ValueError(value)  # a YAML yes/no where a number or a text belongs
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if hint is float:
            return float(value)
        if hint is str:
            return str(value)
        if origin is list:
            items = value.split(",") if isinstance(value, str) else list(value)
            item_type = args[0] if args else str
            return [_coerce(v.strip() if isinstance(v, str) else v, item_type, where) for v in items if v != ""]
    except (TypeError, ValueError):
        raise SrlmError(f"{where}: cannot use {value!r} as {getattr(hint, '__name__', hint)}") from None
    return value


def add_config_arguments(parser: argparse.ArgumentParser, cls: type[StageConfig]) -> None:
    """Add --preset, --config and one --flag per config field (defaults None: not overridden)."""
    group = parser.add_argument_group(f"settings ({cls.__name__}; defaults are the paper's)")
    group.add_argument("--preset", choices=cls.preset_names(), help="start from a preset (default: paper)")
    group.add_argument("--config", metavar="YAML", help="YAML file of settings (flags override it)")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f"{f.metadata.get('help', '')} (default: {default!r})"
        flag = "--" + f.name.replace("_", "-")
        if hints[f.name] is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif literal_choices(hints[f.name]) is not None:
            group.add_argument(flag, dest=f.name, default=None, choices=literal_choices(hints[f.name]), help=help_text)
        else:
            group.add_argument(flag, dest=f.name, default=None, metavar=f.name.upper(), help=help_text)


def config_from_args(cls: type[C], args: argparse.Namespace) -> C:
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}
    return cls.load(preset=args.preset, yaml_path=args.config, **overrides)
