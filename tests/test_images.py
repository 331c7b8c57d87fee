"""Container images, checked statically (no Docker engine here): the Dockerfiles parse, start from
pinned bases, copy only files that exist inside the build context, end as a non-root user and
carry OCI labels; images.json, the Dockerfiles, `make images` and the compiled pipeline name the
same images; the per-family constraints files are complete and agree with each other; checkov
finds nothing that manifests/checkov-skips.yaml does not explain.
"""

from __future__ import annotations

import fnmatch
import glob
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


from components import images as component_images  # noqa: E402
from images import build  # noqa: E402  (the repo root is on sys.path: pyproject pythonpath)
from scripts import infra_checks as checks  # noqa: E402

SPEC = json.loads((ROOT / "images" / "images.json").read_text(encoding="utf-8"))
PLAN = build.plan(registry=SPEC["registry"], tag=SPEC["tag"], spec=SPEC)
DOCKERFILES = {image.key: image.dockerfile for image in PLAN}


# --- a small Dockerfile parser ---------------------------------------------------------------

INSTRUCTIONS = {"FROM", "RUN", "COPY", "ADD", "ENV", "ARG", "LABEL", "USER", "WORKDIR", "CMD", "ENTRYPOINT",
                "EXPOSE", "HEALTHCHECK", "SHELL", "VOLUME", "STOPSIGNAL", "ONBUILD"}


@dataclass
class Instruction:
    cmd: str
    args: str
    line: int
    flags: dict[str, str] = field(default_factory=dict)


@dataclass
class Stage:
    image: str  # the FROM reference with ARG defaults substituted
    name: str | None
    line: int
    instructions: list[Instruction] = field(default_factory=list)


def _substitute(text: str, values: dict[str, str]) -> str:
    def repl(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        return values.get(name, match.group(0))

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", repl, text)


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages). Continuation lines joined, comments dropped, flags split off."""
    logical: list[tuple[int, str]] = []
    buffer, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are ignored by Docker
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        logical.append((start, buffer + stripped))
        buffer = ""
    assert not buffer, "the last instruction ends with a line continuation"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for number, line in logical:
        cmd, _, rest = line.partition(" ")
        cmd = cmd.upper()
        assert cmd in INSTRUCTIONS, f"line {number}: unknown instruction {cmd}"
        flags = {}
        rest = rest.strip()
        if cmd in ("FROM", "COPY", "ADD", "RUN"):
            while rest.startswith("--"):
                flag, _, rest = rest.partition(" ")
                key, _, value = flag[2:].partition("=")
                flags[key] = value
                rest = rest.strip()
        if cmd == "ARG" and not stages:
            name, _, default = rest.partition("=")
            global_args[name.strip()] = default.strip().strip('"')
            continue
        if cmd == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(_substitute(parts[0], global_args), name, number))
            continue
        assert stages, f"line {number}: {cmd} before the first FROM"
        stages[-1].instructions.append(Instruction(cmd, rest, number, flags))
    return global_args, stages


def _copy_sources(instruction: Instruction) -> list[str]:
    if instruction.args.startswith("["):
        parts = json.loads(instruction.args)
    else:
        parts = instruction.args.split()
    return parts[:-1]


def _split_ref(ref: str) -> tuple[str, str | None, str | None]:
    """(repository, tag, digest) of an image reference."""
    digest = None
    if "@" in ref:
        ref, digest = ref.split("@", 1)
    last = ref.rsplit("/", 1)[-1]
    tag = None
    if ":" in last:
        ref, tag = ref.rsplit(":", 1)
    return ref, tag, digest


def _labels(stage: Stage) -> dict[str, str]:
    labels = {}
    for ins in stage.instructions:
        if ins.cmd == "LABEL":
            for key, value in re.findall(r'([\w.\-]+)=("(?:[^"\\]|\\.)*"|\S+)', ins.args):
                labels[key] = value.strip('"')
    return labels


def _apt_packages(stage: Stage) -> set[str]:
    packages = set()
    for ins in stage.instructions:
        if ins.cmd == "RUN":
            for match in re.finditer(r"apt-get install ([^&;|]*)", ins.args):
                packages |= {w for w in match.group(1).split() if not w.startswith("-")}
    return packages


# --- .dockerignore (Docker's matching: last matching pattern wins, a match on a parent counts) ---

def _dockerignore_patterns() -> list[tuple[bool, re.Pattern]]:
    patterns = []
    for raw in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        line = line.lstrip("!").strip().strip("/")
        regex = ""
        i = 0
        while i < len(line):
            if line.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif line.startswith("**", i):
                regex += ".*"
                i += 2
            elif line[i] == "*":
                regex += "[^/]*"
                i += 1
            elif line[i] == "?":
                regex += "[^/]"
                i += 1
            elif line[i] == "[":
                end = line.index("]", i)
                regex += line[i:end + 1]
                i = end + 1
            else:
                regex += re.escape(line[i])
                i += 1
        patterns.append((negate, re.compile(regex + "$")))
    return patterns


def in_build_context(path: str) -> bool:
    """Whether ``path`` (repository-relative) is sent to the builder, per .dockerignore."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for negate, regex in _dockerignore_patterns():
        if any(regex.match(prefix) for prefix in prefixes):
            included = negate
    return included


# --- tests -----------------------------------------------------------------------------------

def test_every_images_json_entry_has_a_dockerfile_and_nothing_else_does():
    planned = {image.dockerfile.resolve() for image in PLAN}
    on_disk = {p.resolve() for p in (ROOT / "images").glob("*/Dockerfile")}
    assert {image.key for image in PLAN} == set(SPEC["images"]) | set(build.SERVICES)
    assert not [str(p) for p in planned if not p.exists()], "images.json names an image without a Dockerfile"
    assert on_disk == planned, f"Dockerfiles that make images does not build: {sorted(map(str, on_disk - planned))}"
    assert PLAN[0].key == "base", "the base is built first"
    assert all(image.family in build.FAMILIES for image in PLAN if image.kind == "stage")


def test_stage_dockerfiles_are_rendered_from_their_templates():
    result = subprocess.run([sys.executable, str(ROOT / "images" / "build.py"), "render", "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("key", sorted(DOCKERFILES))
def test_dockerfile_parses_pins_its_bases_and_runs_as_non_root(key):
    image = next(i for i in PLAN if i.key == key)
    _, stages = parse_dockerfile(image.dockerfile.read_text(encoding="utf-8"))
    names: set[str] = set()
    for stage in stages:
        if stage.image in names:
            continue  # FROM an earlier stage of this Dockerfile
        repo, tag, digest = _split_ref(stage.image)
        assert "$" not in stage.image, f"line {stage.line}: unresolved variable in FROM {stage.image}"
        assert tag or digest, f"line {stage.line}: FROM {stage.image} is not pinned (no tag, no digest)"
        assert tag != "latest", f"line {stage.line}: FROM {stage.image} uses latest"
        if repo.startswith(SPEC["registry"] + "/"):
            assert repo == f"{SPEC['registry']}/{SPEC['images']['base']}" and tag == SPEC["tag"], stage.image
        else:  # third-party bases: tag for readers, digest for reproducibility
            assert digest and re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"{stage.image}: no sha256 digest"
        if stage.name:
            names.add(stage.name)
    final = stages[-1]
    users = [ins.args.split()[0] for ins in final.instructions if ins.cmd == "USER"]
    assert users, "the final stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid not in ("root", "0") and uid.isdigit() and int(uid) >= 10000, \
        f"final USER {users[-1]}: use a numeric non-root uid >= 10000 (Kubernetes checks runAsNonRoot by uid)"
    labels = _labels(final)
    for label in ("org.opencontainers.image.source", "org.opencontainers.image.version",
                  "org.opencontainers.image.title"):
        assert labels.get(label), f"final stage lacks the {label} label"
    assert labels["org.opencontainers.image.title"] == image.name
    assert not [i for s in stages for i in s.instructions if i.cmd == "ADD"], "use COPY (ADD fetches URLs, unpacks)"


@pytest.mark.parametrize("key", sorted(DOCKERFILES))
def test_dockerfile_copies_only_files_that_exist_in_the_build_context(key):
    _, stages = parse_dockerfile(DOCKERFILES[key].read_text(encoding="utf-8"))
    names = {s.name for s in stages if s.name}
    copied = 0
    for stage in stages:
        for ins in stage.instructions:
            if ins.cmd != "COPY":
                continue
            if "from" in ins.flags:
                assert ins.flags["from"] in names, f"line {ins.line}: COPY --from={ins.flags['from']}: no such stage"
                continue
            for source in _copy_sources(ins):
                matches = glob.glob(str(ROOT / source))
                assert matches, f"line {ins.line}: COPY {source}: no such file in the repository"
                for match in matches:
                    rel = str(Path(match).relative_to(ROOT))
                    assert in_build_context(rel), f"line {ins.line}: COPY {rel}: excluded by .dockerignore"
                copied += 1
    assert copied, "copies nothing from the repository (no constraints, no source)?"


def test_final_layers_carry_no_build_tools():
    """Multi-stage: compilers, uv and apt caches stay in builder stages. The generation and training
    images add gcc + libc headers on purpose: Triton (and DeepSpeed's JIT ops) compile at run time."""
    allowed = {"base": set(), "light": set(), "service": set(), "generation": {"gcc", "libc6-dev"},
               "training": {"gcc", "libc6-dev"}}
    for image in PLAN:
        _, stages = parse_dockerfile(image.dockerfile.read_text(encoding="utf-8"))
        final = stages[-1]
        extra = _apt_packages(final) - allowed[image.family]
        assert not extra, f"{image.key}: final stage installs {sorted(extra)}"
        text = " ".join(i.args for i in final.instructions if i.cmd == "RUN")
        assert "uv " not in text and "/opt/uv" not in text, f"{image.key}: uv in the final stage"
        if "apt-get install" in text:
            assert "rm -rf /var/lib/apt/lists" in text, f"{image.key}: apt lists left in the final layer"
        if image.family in ("base", "light", "service"):
            assert len(stages) >= 2 and stages[0].name == "builder", f"{image.key}: expected a builder stage"


def test_images_install_this_package_from_source_without_deps_after_the_pins():
    for image in PLAN:
        if image.family not in ("base", "light"):
            continue
        text = image.dockerfile.read_text(encoding="utf-8")
        pins = text.index(f"constraints/{'base' if image.family == 'base' else 'light'}.txt")
        source = text.index("pip.sh install --no-deps /src")
        assert pins < source, f"{image.key}: install the pinned requirements before the package"
        assert "COPY src /src/src" in text and "COPY pyproject.toml README.md /src/" in text


def test_each_family_installs_with_its_own_constraints_file():
    for image in PLAN:
        family = "mlflow-server" if image.kind == "service" else image.family
        text = image.dockerfile.read_text(encoding="utf-8")
        assert f"images/constraints/{family}.txt" in text, f"{image.key}: does not use constraints/{family}.txt"
        assert re.search(rf"-c /tmp/req/{family}\.txt", text), f"{image.key}: pip install without -c {family}.txt"


# --- image references: images.json <-> make images <-> components <-> compiled pipeline ----------

def test_build_plan_matches_the_components_references(monkeypatch):
    for env in ({}, {"SRLM_REGISTRY": "registry.example.com/team", "SRLM_TAG": "9.9.9"}):
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        plan = build.plan()
        for image in plan:
            if image.kind == "service":
                continue
            assert image.ref == component_images.image(image.key), f"{image.key}: build.py and components disagree"
        if env:
            assert all(i.ref.startswith("registry.example.com/team/") and i.ref.endswith(":9.9.9") for i in plan)


def test_make_images_and_push_pass_registry_and_tag_through():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = subprocess.run(["make", "-n", "images", "push", "REGISTRY=registry.example.com/team", "TAG=9.9.9"],
                         capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert "SRLM_REGISTRY=registry.example.com/team SRLM_TAG=9.9.9" in out
    assert "images/build.py build" in out and "images/build.py push" in out
    dry = subprocess.run([sys.executable, "images/build.py", "build", "--dry-run", "--registry", "r.example/x",
                          "--tag", "1.2.3"], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    lines = [ln for ln in dry.splitlines() if ln.startswith("+ ")]
    assert len(lines) == len(PLAN) and "srlm-base:1.2.3" in lines[0]
    for image, line in zip(PLAN, lines):
        assert f"--tag r.example/x/{image.name}:1.2.3" in line and f"--file images/{image.key}/Dockerfile" in line
        if image.family in ("generation", "training"):
            assert "--build-arg REGISTRY=r.example/x" in line  # FROM ${REGISTRY}/srlm-base:${VERSION}
        assert "--secret" not in line and "--format" not in line
    dry = subprocess.run([sys.executable, "images/build.py", "build", "--dry-run", "--docker", "podman", "--ca-bundle",
                          "/etc/ca.pem", "--build-arg", "TORCH=cpu", "base"], capture_output=True, text=True, cwd=ROOT,
                         check=True).stdout
    assert "podman build --format docker " in dry, "podman keeps HEALTHCHECK only in the docker format"
    assert "--build-arg TORCH=cpu --secret id=ca-bundle,src=/etc/ca.pem ." in dry


def _compiled_images(*extra: Path) -> set[str]:
    refs = set()
    for path in [*sorted((ROOT / "pipelines" / "compiled").glob("*.yaml")), *extra]:
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            executors = ((doc or {}).get("deploymentSpec") or {}).get("executors") or {}
            for executor in executors.values():
                image = (executor.get("container") or {}).get("image")
                if image:
                    refs.add(image)
    return refs


def test_every_image_the_pipeline_uses_is_built_and_every_stage_image_is_used(tmp_path):
    from pipelines import compile as pc

    built = {image.ref for image in PLAN}
    stage_refs = {image.ref for image in PLAN if image.kind == "stage"}
    # the committed YAMLs, plus the fan-out (shards > 1), whose merge tasks run the merge image
    fanned_out = pc.compile_pipeline(pc.settings_for("cluster", {"shards": 2}), tmp_path / "k2.yaml")
    used = _compiled_images(fanned_out)
    if not used:  # no compiled pipeline yet: what the components would reference
        used = {component_images.image(key) for key in SPEC["images"] if key != "base"}
    missing = sorted(used - built)
    assert not missing, f"the pipeline uses images `make images` does not build: {missing}"
    unused = sorted(stage_refs - used)
    assert not unused, f"`make images` builds stage images no compiled pipeline uses: {unused}"


# --- constraints -----------------------------------------------------------------------------

def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)", line)
        assert match, f"{path.name}: not an exact pin: {line!r}"
        pins[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(2)
    return pins


CONSTRAINTS = {p.stem: _pins(p) for p in sorted((ROOT / "images" / "constraints").glob("*.txt"))}


def test_constraints_pin_every_direct_requirement():
    from images import lock
    assert set(CONSTRAINTS) == set(lock.FAMILIES)
    for family, inputs in lock.FAMILIES.items():
        for name in inputs:
            direct = _pins(ROOT / "images" / "requirements" / f"{name}.in")
            for package, version in direct.items():
                assert CONSTRAINTS[family].get(package) == version, f"{family}: {package}=={version} not pinned"


def test_cuda_families_agree_and_layers_change_nothing_in_the_base():
    base, gen, train = CONSTRAINTS["base"], CONSTRAINTS["generation"], CONSTRAINTS["training"]
    for family, pins in (("generation", gen), ("training", train)):
        changed = {p: (v, pins.get(p)) for p, v in base.items() if pins.get(p) != v}
        assert not changed, f"{family} would change base packages: {changed}"
    shared = set(gen) & set(train)
    assert not {p for p in shared if gen[p] != train[p]}
    assert base["torch"] == "2.14.0" and gen["vllm"] == "0.33.0"
    major, minor = (int(x) for x in gen["transformers"].split(".")[:2])
    assert (major, minor) < (5, 21), "vllm 0.33 needs transformers < 5.21"
    assert "vllm" not in train and "vllm" not in base
    assert {"trl", "deepspeed", "accelerate"} <= set(train) and "deepspeed" not in gen and "trl" not in gen


def test_light_family_has_no_torch_and_images_match_the_cpu_lock():
    light = CONSTRAINTS["light"]
    assert not {"torch", "transformers", "vllm", "triton", "trl"} & set(light)
    cpu_lock = _pins_lenient(ROOT / "requirements.lock")
    # The stack the stages run must behave as the CPU venv the tests run: same versions of the
    # libraries srlm calls (torch differs on purpose: 2.13.0+cpu here, 2.14.0 CUDA in the images).
    for package in ("transformers", "tokenizers", "trl", "accelerate", "datasets", "mlflow", "kfp", "pyyaml",
                    "pyarrow", "scipy", "rouge-score"):
        for family in ("base", "training", "light"):
            name = "mlflow-skinny" if (family, package) == ("light", "mlflow") else package
            if name in CONSTRAINTS[family]:
                assert CONSTRAINTS[family][name] == cpu_lock[package], \
                    f"{family}: {name} {CONSTRAINTS[family][name]} != requirements.lock {cpu_lock[package]}"


def _pins_lenient(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.strip().split("==", 1)
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version.split("+")[0]
    return pins


LIGHT_SMOKE = """
import importlib.abc, importlib.metadata as md, json, re, sys, tempfile
from pathlib import Path

light = set(json.loads(sys.argv[1]))
defaults = json.loads(sys.argv[2])  # the compiled tiny pipeline's parameters: what validate gets there
norm = lambda d: re.sub(r"[-_.]+", "-", d).lower()
# mlflow-skinny ships the same "mlflow" modules as the full mlflow in this venv
provides = {top: {norm(d) for d in ds} | ({"mlflow-skinny"} if top == "mlflow" else set())
            for top, ds in md.packages_distributions().items()}
blocked = {top for top, ds in provides.items()
           if top not in sys.stdlib_module_names and top != "srlm" and not ds & light}
seen = set()

original = list(sys.meta_path)

class Gate(importlib.abc.MetaPathFinder):  # blocked modules are simply not found
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            seen.add(name.split(".")[0])
            return None
        for finder in original:
            spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                return spec
        return None

    def find_distributions(self, context=None):  # package metadata: unchanged
        for finder in original:
            if hasattr(finder, "find_distributions"):
                yield from finder.find_distributions(context) if context is not None else finder.find_distributions()

sys.meta_path[:] = [Gate()]
from srlm import stages
for group, keys in stages.GROUPS.items():
    for key in keys:
        stages.group_config(group, {"preset": "tiny"}, key)
from srlm import tracking, model_registry, pairs, seed_data, oasst, modeldir  # noqa: F401
import mlflow.tracking, mlflow.entities, mlflow.exceptions, mlflow.artifacts  # noqa: F401
import pyarrow.parquet, datasets, yaml, kfp.dsl  # noqa: F401

tmp = Path(tempfile.mkdtemp(dir="."))  # the test runs this in its tmp_path
tiny = {"preset": "tiny"}
groups = {name: tiny for name in stages.GROUPS}
pipeline_groups = {name: defaults[name] for name in stages.GROUPS if isinstance(defaults.get(name), dict)}
assert pipeline_groups["evaluation"].get("benchmarks"), "the tiny pipeline runs benchmarks: validation reads their files"
stages.run_stage("validate", groups={**pipeline_groups, "mlflow": {"enabled": False}}, base_model_kind="tiny",
                 eft_build=False, iterations=2)
stages.run_stage("seed", tiny, out=str(tmp / "seed"))
replies = [{"text": t, "judge_outputs": [f"Score: {s}"], "scores": [s], "mean": s} for t, s in (("a", 4), ("b", 1))]
(tmp / "j.jsonl").write_text(json.dumps({"id": "1", "prompt": "p", "replies": replies}) + "\\n")
stages.run_stage("pairs", tiny, judgements=str(tmp / "j.jsonl"), out=str(tmp / "pairs.jsonl"))
heavy = sorted({"torch", "transformers", "vllm", "trl", "accelerate", "deepspeed"} & set(sys.modules))
print(json.dumps({"heavy": heavy, "blocked_attempts": sorted(seen)}))
"""


def test_light_stages_run_with_only_the_light_image_packages(tmp_path):
    """Simulates the light images: every module no package of light.txt provides is made missing,
    then the light stages' modules (and what their steps import lazily) are imported and the
    validate, seed and pairs steps run (MLflow off). Optional imports may fail; required may not."""
    from pipelines.run_local import TINY_YAML, pipeline_defaults

    defaults = json.dumps(pipeline_defaults(TINY_YAML))
    result = subprocess.run([sys.executable, "-c", LIGHT_SMOKE, json.dumps(sorted(CONSTRAINTS["light"])), defaults],
                            capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["heavy"] == [], f"light stage modules import {found['heavy']}"


# --- .dockerignore ---------------------------------------------------------------------------

def test_dockerignore_keeps_the_context_to_what_the_images_need():
    for path in (".venv/bin/python", ".venv-tools/bin/checkov", "runs/demo/x.json", "mlruns/0/meta.yaml",
                 "mlflow.db", ".git/HEAD", ".pytest_cache/v/x", ".ruff_cache/x", "src/srlm/__pycache__/io.cpython-311.pyc",
                 "tests/test_io.py", "bench.json", "pipelines/compiled/self_rewarding.yaml", "manifests/base/mlflow.yaml",
                 "src/srlm.egg-info/PKG-INFO", "images/.env", "images/constraints/__pycache__/x.pyc"):
        assert not in_build_context(path), f"{path} would be sent to the image builder"
    for path in ("pyproject.toml", "README.md", "src/srlm/stages.py", "src/srlm/data/seed_ift.jsonl",
                 "images/constraints/base.txt", "images/requirements/base.in", "images/requirements/uv.txt"):
        assert in_build_context(path), f"{path} is needed by the images but excluded"


# --- checkov ---------------------------------------------------------------------------------

def test_checkov_dockerfiles_fail_nothing_unexplained():
    if checks.tool("checkov") is None:
        pytest.skip("checkov is not installed: `make tools` installs it into .venv-tools")
    failures = checks.checkov_failures({}, frameworks=("dockerfile",))
    skips = [s for s in checks.load_skips() if s.get("framework") == "dockerfile"]
    unexplained, unused = checks.gate(failures, skips)
    assert not unexplained, "checkov failures to fix or list in manifests/checkov-skips.yaml:\n" + "\n".join(
        map(str, unexplained))
    assert not unused, f"skips no Dockerfile needs any more: {[s['check'] for s in unused]}"


def test_skip_list_entries_name_framework_and_reason():
    for skip in checks.load_skips():
        assert skip.get("framework") in ("kubernetes", "dockerfile", "secrets"), skip
        assert len(skip["reason"].split()) >= 8, f"{skip['check']}: say why, in a sentence"
        assert re.fullmatch(r"CKV2?_[A-Z0-9]+_\d+", skip["check"]), skip["check"]
        for pattern in skip.get("files") or []:
            assert fnmatch.fnmatch(pattern, "*.yaml") or pattern.startswith(("images/", "manifests/")), pattern


# --- images/pip.sh and images/check.py (the real builds: `make images-check`) -------------------

def _pip_sh(tmp_path: Path, env: dict[str, str], *args: str) -> tuple[list[str], dict[str, str]]:
    """Run images/pip.sh with a stand-in `pip` that records its arguments and the trust settings."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "pip").write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$PIP_ARGS"\n'
                                 'echo "${PIP_CERT:-}|${SSL_CERT_FILE:-}" > "$PIP_ARGS.trust"\n')
    (bin_dir / "pip").chmod(0o755)
    record = tmp_path / "args"
    subprocess.run(["sh", str(ROOT / "images" / "pip.sh"), *args], check=True,
                   env={"PATH": f"{bin_dir}:/usr/bin:/bin", "PIP_ARGS": str(record), **env})
    return record.read_text().splitlines(), dict(zip(("cert", "ssl"), Path(f"{record}.trust").read_text().strip()
                                                      .split("|")))


def test_pip_sh_drops_the_cuda_pins_in_the_cpu_variant_only(tmp_path):
    constraints = ROOT / "images" / "constraints" / "generation.txt"
    requirements = ROOT / "images" / "requirements" / "generation.in"
    args, trust = _pip_sh(tmp_path, {"SRLM_TORCH": "cpu"}, "install", "-c", str(constraints), "-r", str(requirements))
    assert args[:2] == ["install", "-c"] and args[3] == "-r"
    kept_constraints = _pins(Path(args[2]))
    assert not {p for p in kept_constraints if p in ("torch", "triton", "vllm") or p.startswith(("nvidia-", "cuda-"))}
    assert kept_constraints["transformers"] == CONSTRAINTS["generation"]["transformers"]
    assert len(kept_constraints) == len(CONSTRAINTS["generation"]) - sum(
        1 for p in CONSTRAINTS["generation"] if p in ("torch", "triton", "vllm") or p.startswith(("nvidia-", "cuda-")))
    kept_requirements = _pins(Path(args[4]))
    assert "vllm" not in kept_requirements and "lm-eval" in kept_requirements
    assert trust == {"cert": "", "ssl": ""}
    args, _ = _pip_sh(tmp_path, {"SRLM_TORCH": "cuda"}, "install", "-c", str(constraints), "-r", str(requirements))
    assert args == ["install", "-c", str(constraints), "-r", str(requirements)], "the CUDA build is left as it is"


def test_pip_sh_trusts_the_ca_bundle_secret_only_when_mounted(tmp_path):
    secret = tmp_path / "ca-bundle"
    _, trust = _pip_sh(tmp_path, {"SRLM_CA_SECRET": str(secret)}, "install", "x")
    assert trust == {"cert": "", "ssl": ""}, "no secret mounted: pip keeps its own trust store"
    secret.write_text("-----BEGIN CERTIFICATE-----\n")
    _, trust = _pip_sh(tmp_path, {"SRLM_CA_SECRET": str(secret)}, "install", "x")
    assert trust == {"cert": str(secret), "ssl": str(secret)}


def test_every_stage_image_has_a_module_images_check_imports():
    from images import check
    assert set(check.STAGE_MODULES) == set(SPEC["stages"])
    for key, module in check.STAGE_MODULES.items():
        assert (ROOT / "src" / "srlm" / f"{module}.py").is_file(), f"{key}: no module srlm.{module}"
    every = {image.key for image in check.tier_images("all")}
    assert {image.family for image in PLAN if image.key in every} == {"base", "light", "generation", "training",
                                                                       "service"}, "one image of every family"
    light = {image.key for image in check.tier_images("light")}
    assert light == {image.key for image in PLAN if image.family == "light"} | {"mlflow-server"}
    assert set(check.STAGE_RUNS) <= every and {"seed", "pairs"} <= light


def test_every_dockerfile_takes_its_base_as_a_build_argument_and_mounts_the_ca_bundle():
    for image in PLAN:
        text = image.dockerfile.read_text(encoding="utf-8")
        global_args, stages = parse_dockerfile(text)
        froms = re.findall(r"^FROM (\S+)", text, flags=re.M)
        if image.family in ("base", "light", "service"):
            assert set(froms) == {"${BASE}"} and "BASE" in global_args, f"{image.key}: FROM ${{BASE}} everywhere"
        pip_runs = [i for s in stages for i in s.instructions if i.cmd == "RUN" and "pip.sh" in i.args]
        assert pip_runs, f"{image.key}: installs without images/pip.sh"
        for run in pip_runs:
            assert run.flags.get("mount") == "type=secret,id=ca-bundle,required=false", f"line {run.line}"
        bare = [i.line for s in stages for i in s.instructions
                if i.cmd == "RUN" and re.search(r"(^|&& )pip (install|wheel) ", i.args)]
        assert not bare, f"{image.key}: pip without images/pip.sh (no CA bundle, no CPU variant) at lines {bare}"
