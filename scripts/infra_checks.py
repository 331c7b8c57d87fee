"""Static checks of manifests/ and images/: ``python scripts/infra_checks.py [all|render|validate|checkov]``.

What ``make manifests-check`` runs (with .venv-tools' Python) and what tests/test_manifests.py
and tests/test_images.py import:

* render: every overlay under manifests/overlays/ builds with ``kubectl kustomize`` (offline);
* validate: the rendered overlays and the Secret templates pass ``kubernetes-validate --strict``
  against each Kubernetes version in K8S_VERSIONS (schemas ship with the tool: no network);
* checkov: the rendered overlays (kubernetes framework), every Dockerfile under images/
  (dockerfile framework) and manifests/, images/ and the compiled pipelines (secrets framework),
  all with ``--skip-download``. Offline, checkov reports no severities, so every failed check
  counts: it must be fixed or listed, with its reason, in manifests/checkov-skips.yaml. A listed
  skip that no longer matches a failure is an error too (the list stays honest).

Tools are looked up in $SRLM_TOOLS_BIN, else .venv-tools/bin (``make tools``), else PATH.
Needs PyYAML (present in both .venv and .venv-tools).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"
OVERLAYS_DIR = MANIFESTS / "overlays"
# Applied beside an overlay where its operator is installed; rendered and checked like the overlays.
ADDONS = {"trainer": MANIFESTS / "trainer"}
# Custom resources kubernetes-validate has no schema for: tests/test_trainjob.py validates them against
# the Trainer's CRDs (v2.1-v2.3).
CRD_GROUPS = ("trainer.kubeflow.org",)
SECRET_TEMPLATES = MANIFESTS / "secrets"
SKIPS_FILE = MANIFESTS / "checkov-skips.yaml"
IMAGES_DIR = ROOT / "images"
COMPILED_DIR = ROOT / "pipelines" / "compiled"
# Kubernetes versions the manifests must validate against: an older supported release, the
# kubectl these machines carry (1.32) and a recent one. kubernetes-validate 1.37 has 1.25-1.37.
K8S_VERSIONS = ("1.29.0", "1.32.0", "1.35.0")
CHECKOV_TIMEOUT = 600


def tools_bin() -> Path:
    return Path(os.environ.get("SRLM_TOOLS_BIN") or ROOT / ".venv-tools" / "bin")


def tool(name: str) -> str | None:
    """Path of a checker tool: $SRLM_TOOLS_BIN, .venv-tools/bin, then PATH; None when absent."""
    candidate = tools_bin() / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which(name)


# --- render ----------------------------------------------------------------------------------

def overlays() -> list[str]:
    return sorted(p.name for p in OVERLAYS_DIR.iterdir() if (p / "kustomization.yaml").is_file())


def render(overlay: str) -> str:
    """``kubectl kustomize manifests/overlays/<overlay>`` (or an add-on's directory; needs no cluster)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise FileNotFoundError("kubectl is not installed")
    directory = ADDONS.get(overlay, OVERLAYS_DIR / overlay)
    result = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {directory.relative_to(ROOT)} failed:\n{result.stderr}")
    return result.stdout


def documents(text: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def render_all(out_dir: Path) -> dict[str, Path]:
    """Render every overlay and add-on into ``out_dir/<name>.yaml``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for overlay in [*overlays(), *ADDONS]:
        path = out_dir / f"{overlay}.yaml"
        path.write_text(render(overlay), encoding="utf-8")
        paths[overlay] = path
    return paths


def secret_templates() -> list[Path]:
    return sorted(SECRET_TEMPLATES.glob("*.yaml"))


def dockerfiles() -> list[Path]:
    return sorted(IMAGES_DIR.glob("*/Dockerfile"))


# --- kubernetes-validate ---------------------------------------------------------------------

def kubernetes_validate(files: list[Path], versions: tuple[str, ...] = K8S_VERSIONS) -> list[str]:
    """Problems reported by ``kubernetes-validate --strict`` (empty: all valid)."""
    exe = tool("kubernetes-validate")
    if exe is None:
        raise FileNotFoundError("kubernetes-validate is not installed (make tools)")
    problems = []
    for version in versions:
        result = subprocess.run([exe, "--strict", "--quiet", "-k", version, *map(str, files)], capture_output=True,
                                text=True, timeout=300)
        lines = [ln for ln in (result.stdout + result.stderr).splitlines() if ln.strip()]
        bad = [ln for ln in lines if not ln.startswith(("INFO", "WARNING"))
               and not ("Couldn't find schema for kind" in ln and any(g in ln for g in CRD_GROUPS))]
        if result.returncode != 0 or bad:
            problems += [f"[k8s {version}] {ln}" for ln in (bad or lines)] or [f"[k8s {version}] exit {result.returncode}"]
    return problems


# --- checkov ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Failure:
    framework: str
    check: str
    name: str
    file: str  # repository-relative path, or <overlay>.yaml for a rendered overlay
    resource: str
    severity: str | None

    def __str__(self) -> str:
        return f"{self.check} [{self.framework}] {self.file} {self.resource}: {self.name}"


# framework -> [passed, failed] over the last checkov_failures() call (for the summary line)
COUNTS: dict[str, list[int]] = {}


def _checkov(args: list[str], framework: str, cwd: Path, prefix: str = "") -> list[Failure]:
    exe = tool("checkov")
    if exe is None:
        raise FileNotFoundError("checkov is not installed (make tools)")
    cmd = [exe, *args, "--framework", framework, "--skip-download", "--output", "json", "--quiet", "--compact"]
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=CHECKOV_TIMEOUT, cwd=cwd, env=env)
    if result.returncode not in (0, 1):
        raise RuntimeError(f"checkov ({framework}) exited {result.returncode}:\n{result.stderr[-2000:]}")
    out = result.stdout.strip()
    if not out:
        return []
    # One JSON document per scanned directory (several with several --directory), each an object
    # or a list of objects (one per framework).
    reports, decoder, pos = [], json.JSONDecoder(), 0
    while pos < len(out):
        data, end = decoder.raw_decode(out, pos)
        reports += data if isinstance(data, list) else [data]
        pos = end
        while pos < len(out) and out[pos].isspace():
            pos += 1
    failures: list[Failure] = []
    for report in reports:
        results = report.get("results") or {}
        summary = report.get("summary") or {}
        counts = COUNTS.setdefault(framework, [0, 0])
        counts[0] += int(summary.get("passed", 0))
        counts[1] += int(summary.get("failed", 0))
        for item in results.get("failed_checks", []):
            failures.append(Failure(framework, item["check_id"], item.get("check_name", ""),
                                    prefix + item.get("file_path", "").lstrip("/"), item.get("resource", ""),
                                    item.get("severity")))
    return list(dict.fromkeys(failures))  # the same finding reported twice counts once


FRAMEWORKS = ("kubernetes", "dockerfile", "secrets")


def checkov_failures(rendered: dict[str, Path], frameworks: tuple[str, ...] = FRAMEWORKS) -> list[Failure]:
    """Failed checkov checks over the rendered overlays, the Dockerfiles and (secrets) the sources."""
    COUNTS.clear()
    failures = []
    if rendered and "kubernetes" in frameworks:
        out_dir = next(iter(rendered.values())).parent
        failures += _checkov(["--directory", str(out_dir)], "kubernetes", out_dir)
    files = [str(p.relative_to(ROOT)) for p in dockerfiles()]
    if files and "dockerfile" in frameworks:
        failures += _checkov([arg for f in files for arg in ("--file", f)], "dockerfile", ROOT)
    for directory in (MANIFESTS, IMAGES_DIR, COMPILED_DIR):
        if directory.is_dir() and "secrets" in frameworks:  # paths come back relative to the scanned directory
            rel = str(directory.relative_to(ROOT))
            failures += _checkov(["--directory", rel], "secrets", ROOT, prefix=rel + "/")
    return failures


def load_skips(path: Path = SKIPS_FILE) -> list[dict]:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    skips = data.get("skips") or []
    for i, skip in enumerate(skips):
        missing = {"check", "reason"} - set(skip)
        if missing:
            raise ValueError(f"{path}: skip #{i + 1} lacks {sorted(missing)}")
        if not str(skip["reason"]).strip():
            raise ValueError(f"{path}: skip #{i + 1} ({skip['check']}) has an empty reason")
    return skips


def _matches(skip: dict, failure: Failure) -> bool:
    if skip["check"] != failure.check:
        return False
    if skip.get("framework") and skip["framework"] != failure.framework:
        return False
    files = skip.get("files") or []
    if files and not any(fnmatch.fnmatch(failure.file, pattern) for pattern in files):
        return False
    excluded = skip.get("except_files") or []
    if any(fnmatch.fnmatch(failure.file, pattern) for pattern in excluded):
        return False
    resources = skip.get("resources") or []
    return not resources or failure.resource in resources


def gate(failures: list[Failure], skips: list[dict]) -> tuple[list[Failure], list[dict]]:
    """(failures no skip explains, skips no failure needs)."""
    unexplained = [f for f in failures if not any(_matches(s, f) for s in skips)]
    unused = [s for s in skips if not any(_matches(s, f) for f in failures)]
    return unexplained, unused


# --- command line ----------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/infra_checks.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("what", nargs="?", default="all", choices=["all", "render", "validate", "checkov"])
    args = parser.parse_args(argv)
    status = 0
    with tempfile.TemporaryDirectory() as tmp:
        rendered = render_all(Path(tmp) / "rendered")
        for overlay, path in rendered.items():
            kinds = [f"{d['kind']}/{d['metadata']['name']}" for d in documents(path.read_text(encoding="utf-8"))]
            print(f"render   {overlay}: {len(kinds)} objects")
        if args.what in ("all", "validate"):
            files = [*rendered.values(), *secret_templates()]
            problems = kubernetes_validate(files)
            for line in problems:
                print(f"validate {line}")
            print(f"validate {len(files)} files x Kubernetes {', '.join(K8S_VERSIONS)} (--strict): "
                  f"{'FAILED' if problems else 'ok'}")
            status |= bool(problems)
        if args.what in ("all", "checkov"):
            failures = checkov_failures(rendered)
            skips = load_skips()
            unexplained, unused = gate(failures, skips)
            severities = sorted({str(f.severity) for f in failures})
            for framework, (passed, failed) in COUNTS.items():
                print(f"checkov  {framework}: {passed} passed, {failed} failed")
            print(f"checkov  {len(failures)} distinct failed checks (severities reported: {', '.join(severities) or '-'}); "
                  f"{len(failures) - len(unexplained)} covered by {len(skips)} listed skips")
            for failure in failures:
                mark = "FAIL" if failure in unexplained else "skip"
                print(f"checkov  {mark} {failure}")
            for skip in unused:
                print(f"checkov  UNUSED skip {skip['check']} {skip.get('files') or skip.get('resources') or ''}: "
                      f"remove it from {SKIPS_FILE.relative_to(ROOT)}")
            status |= bool(unexplained or unused)
    print("infra checks: " + ("FAILED" if status else "ok"))
    return status


if __name__ == "__main__":
    sys.exit(main())
