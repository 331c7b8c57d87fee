"""Regenerate the per-image constraints files: ``python images/lock.py`` (CPython 3.11, linux x86_64).

Every image installs its packages with ``pip install -c images/constraints/<family>.txt``, so
each file pins the whole dependency closure of that image family (name==version, one a line).
The files are resolved with pip's own resolver (``pip install --dry-run --report``: metadata
only, nothing is installed) for the platform the images run on: CPython 3.11, linux x86_64.

The three CUDA families (base, generation, training) are layered (generation and training
images are built FROM the base image), so they are resolved together first ("universe": base +
vLLM + TRL/DeepSpeed in one resolve) and each family is then resolved inside that universe:
a package the base installs never changes version in a stage layer. The light family and the
MLflow server image are resolved on their own (no torch).

Inputs: ``images/requirements/<family>.in`` (the direct pins, with comments saying why).
Outputs: ``images/constraints/<family>.txt`` (generated; do not edit by hand).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "requirements"
CONSTRAINTS = HERE / "constraints"

# family -> the requirement files it installs (in build order)
FAMILIES: dict[str, list[str]] = {
    "base": ["base"],
    "generation": ["base", "generation"],
    "training": ["base", "training"],
    "light": ["light"],
    "mlflow-server": ["mlflow-server"],
}
# families resolved inside one joint resolve, so layered images agree on every shared package
UNIVERSES: dict[str, list[str]] = {"cuda": ["base", "generation", "training"]}


def _resolve(inputs: list[str], constraints: Path | None = None) -> dict[str, str]:
    """{name: version} that pip would install for ``inputs`` (a fresh environment)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--report", str(report), "--no-cache-dir"]
        for name in inputs:
            cmd += ["-r", str(REQUIREMENTS / f"{name}.in")]
        if constraints is not None:
            cmd += ["-c", str(constraints)]
        # The machine's own pip constraints/find-links must not leak into the images' locks.
        env = {**os.environ, "PIP_CONSTRAINT": "", "PIP_FIND_LINKS": ""}
        subprocess.run(cmd, check=True, env=env)
        data = json.loads(report.read_text(encoding="utf-8"))
    return {item["metadata"]["name"]: item["metadata"]["version"] for item in data["install"]}


def _write(path: Path, pins: dict[str, str], header: str) -> None:
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    lines += [f"{name}=={version}" for name, version in sorted(pins.items(), key=lambda kv: kv[0].lower())]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("families", nargs="*", help=f"families to lock (default: all of {list(FAMILIES)})")
    args = parser.parse_args(argv)
    if sys.version_info[:2] != (3, 11) or platform.machine() != "x86_64" or sys.platform != "linux":
        raise SystemExit("lock.py resolves for the images' platform: run it with CPython 3.11 on linux x86_64")
    families = args.families or list(FAMILIES)
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        raise SystemExit(f"unknown families {unknown}; known: {list(FAMILIES)}")
    pip_version = subprocess.run([sys.executable, "-m", "pip", "--version"], check=True, capture_output=True,
                                 text=True).stdout.split()[1]
    CONSTRAINTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        universe_files: dict[str, Path] = {}
        for universe, members in UNIVERSES.items():
            if not any(set(FAMILIES[f]) & set(members) for f in families):
                continue
            print(f"resolving the {universe} universe ({' + '.join(members)}) ...", flush=True)
            pins = _resolve(members)
            universe_files[universe] = Path(tmp) / f"{universe}.txt"
            universe_files[universe].write_text("".join(f"{n}=={v}\n" for n, v in pins.items()), encoding="utf-8")
        for family in families:
            inputs = FAMILIES[family]
            universe = next((u for u, members in UNIVERSES.items() if set(inputs) <= set(members)), None)
            print(f"resolving {family} ({' + '.join(inputs)}{', inside ' + universe if universe else ''}) ...",
                  flush=True)
            pins = _resolve(inputs, universe_files.get(universe) if universe else None)
            sources = ", ".join(f"images/requirements/{name}.in" for name in inputs)
            header = (f"Constraints for the {family} image family: the full dependency closure, pinned.\n"
                      f"Generated by `python images/lock.py {family}` (pip {pip_version}, CPython 3.11, linux x86_64)\n"
                      f"from {sources}"
                      + (f", resolved inside the {universe} universe ({' + '.join(UNIVERSES[universe])})" if universe else "")
                      + ".\nDo not edit by hand: change the .in file and re-run lock.py.")
            _write(CONSTRAINTS / f"{family}.txt", pins, header)
            print(f"  wrote images/constraints/{family}.txt ({len(pins)} packages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
