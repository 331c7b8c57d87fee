"""Compile the pipeline to YAML: ``python -m pipelines.compile`` (what ``make pipeline`` runs).

Writes ``pipelines/compiled/self_rewarding.yaml`` (cluster profile: paper presets, GPU requests)
and ``pipelines/compiled/self_rewarding_tiny.yaml`` (tiny profile: what ``make demo`` runs
locally). The output is deterministic (the header comment's default dicts are written with
sorted keys; KFP prints them in protobuf map order), so the committed files are checked for
staleness by the tests.

Custom compiles: ``python -m pipelines.compile --profile cluster --set iterations=4
--set 'gpus={training: 8, generation: 8, evaluation: 8}' --output my.yaml``; ``--registry`` and
``--tag`` (or SRLM_REGISTRY / SRLM_TAG) change the image references from images/images.json.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

COMPILED_DIR = Path(__file__).resolve().parent / "compiled"
OUTPUTS = {"cluster": "self_rewarding.yaml", "tiny": "self_rewarding_tiny.yaml"}
_DEFAULT_COMMENT = re.compile(r"^(#\s+\w+: dict \[Default: )(.*)(\])$")


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def normalize(text: str) -> str:
    """Make KFP's header comment stable: default dicts printed with sorted keys."""
    lines = []
    for line in text.splitlines():
        match = _DEFAULT_COMMENT.match(line)
        if match:
            try:
                line = f"{match.group(1)}{_sorted(ast.literal_eval(match.group(2)))!r}{match.group(3)}"
            except (ValueError, SyntaxError):
                pass
        lines.append(line)
    return "\n".join(lines) + "\n"


def settings_for(profile: str, overrides: dict[str, Any] | None = None):
    from pipelines.settings import PROFILES

    if profile not in PROFILES:
        raise SystemExit(f"unknown profile {profile!r}; choose from {sorted(PROFILES)}")
    settings = PROFILES[profile]
    if overrides:
        fields = {f.name for f in dataclasses.fields(settings)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise SystemExit(f"unknown setting(s) {unknown}; known: {sorted(fields)}")
        if "tolerations" in overrides:
            overrides["tolerations"] = tuple(overrides["tolerations"] or ())
        settings = settings.replace(**overrides)
    return settings


def compile_pipeline(settings, output: str | Path) -> Path:
    """Compile the pipeline for ``settings`` to ``output`` (normalized, written atomically)."""
    from kfp import compiler

    from pipelines.self_rewarding import make_pipeline

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "pipeline.yaml"
        compiler.Compiler().compile(make_pipeline(settings), str(raw))
        text = normalize(raw.read_text(encoding="utf-8"))
    tmp_out = output.with_name(f".{output.name}.tmp")
    tmp_out.write_text(text, encoding="utf-8")
    os.replace(tmp_out, output)
    return output


def compile_all(out_dir: str | Path = COMPILED_DIR) -> list[Path]:
    """Both committed variants into ``out_dir``."""
    return [compile_pipeline(settings_for(profile), Path(out_dir) / name) for profile, name in OUTPUTS.items()]


def _parse_set(items: list[str]) -> dict[str, Any]:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected key=value")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.compile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=sorted(OUTPUTS), help="compile one profile (default: both, into --out-dir)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change a compile-time setting of pipelines/settings.py (value parsed as YAML); needs --profile")
    parser.add_argument("--output", help="output file (with --profile; default: its file in --out-dir)")
    parser.add_argument("--out-dir", default=str(COMPILED_DIR), help="directory for the compiled YAML files")
    parser.add_argument("--registry", help="image registry (default: images/images.json's, or SRLM_REGISTRY)")
    parser.add_argument("--tag", help="image tag (default: images/images.json's, or SRLM_TAG)")
    args = parser.parse_args(argv)
    # Image references are resolved when `components` is imported: set the overrides first.
    if args.registry:
        os.environ["SRLM_REGISTRY"] = args.registry
    if args.tag:
        os.environ["SRLM_TAG"] = args.tag
    if (args.set or args.output) and not args.profile:
        parser.error("--set and --output need --profile")
    if args.profile:
        output = args.output or Path(args.out_dir) / OUTPUTS[args.profile]
        written = [compile_pipeline(settings_for(args.profile, _parse_set(args.set)), output)]
    else:
        written = compile_all(args.out_dir)
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
