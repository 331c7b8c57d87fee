"""Build, push and list the container images: ``python images/build.py {plan,build,push,refs,render}``.

Reads ``images/images.json`` (the one file holding every stage's image reference, family and
description, written from the stage registry ``srlm.stages``; the KFP components read it through
``components/images.py``). Registry and tag resolve the same way as
there: ``--registry`` / ``--tag`` flags, else ``SRLM_REGISTRY`` / ``SRLM_TAG``, else the file.
An image is ``<registry>/<name>:<tag>``.

Build order: ``base`` first (CUDA + Python 3.11 + torch + srlm + kfp), then every stage image
(generation and training stages are built FROM the base just built; light stages start from a
slim Python image), then the service images the manifests run (the MLflow tracking server).

Each image has its own Dockerfile, ``images/<key>/Dockerfile`` (key = the stage's key in
images.json). Stage Dockerfiles are rendered from one template per family
(``images/templates/<family>.Dockerfile``) by ``render``; ``render --check`` fails when a
committed Dockerfile differs from its template (the tests run it).

Only the standard library: runs with any Python 3.10+. ``--dry-run`` prints the commands.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

IMAGES_DIR = Path(__file__).resolve().parent
ROOT = IMAGES_DIR.parent
IMAGES_FILE = IMAGES_DIR / "images.json"
TEMPLATES = IMAGES_DIR / "templates"
ENV_REGISTRY = "SRLM_REGISTRY"  # same variables as components/images.py
ENV_TAG = "SRLM_TAG"
PLATFORM = "linux/amd64"  # the constraints files are resolved for linux x86_64

FAMILIES = ("generation", "training", "light")
# Images the manifests run, not the pipeline: key -> image name. Same registry/tag. An optional
# "services" object in images.json ({"mlflow-server": "<name>"}) overrides the names.
SERVICES: dict[str, str] = {"mlflow-server": "srlm-mlflow-server"}


@dataclass(frozen=True)
class Image:
    key: str
    name: str
    ref: str
    dockerfile: Path
    kind: str  # base | stage | service
    family: str  # base | generation | training | light | service


def load_spec(path: Path = IMAGES_FILE) -> dict:
    spec = json.loads(path.read_text(encoding="utf-8"))
    for key in ("registry", "tag", "images"):
        if key not in spec:
            raise SystemExit(f"{path}: missing {key!r}")
    if "base" not in spec["images"]:
        raise SystemExit(f"{path}: images has no 'base' entry")
    return spec


def resolve(spec: dict, registry: str | None = None, tag: str | None = None) -> tuple[str, str]:
    """Registry and tag: flag, else SRLM_REGISTRY / SRLM_TAG, else images.json (as components/images.py)."""
    registry = (registry or os.environ.get(ENV_REGISTRY) or spec["registry"]).rstrip("/")
    tag = tag or os.environ.get(ENV_TAG) or spec["tag"]
    return registry, tag


def plan(registry: str | None = None, tag: str | None = None, spec: dict | None = None) -> list[Image]:
    """Every image in build order: base, the stages (images.json order), the services."""
    spec = spec or load_spec()
    registry, tag = resolve(spec, registry, tag)
    stages = spec.get("stages") or {}
    unknown = sorted(set(spec["images"]) - set(stages) - {"base"})
    if unknown:
        raise SystemExit(f"images.json: image(s) {unknown} have no entry in 'stages' (family, description): "
                         "run `python -m srlm.stages images images/images.json`")
    images = [Image("base", spec["images"]["base"], f"{registry}/{spec['images']['base']}:{tag}",
                    IMAGES_DIR / "base" / "Dockerfile", "base", "base")]
    for key, name in spec["images"].items():
        if key == "base":
            continue
        images.append(Image(key, name, f"{registry}/{name}:{tag}", IMAGES_DIR / key / "Dockerfile", "stage",
                            stages[key]["family"]))
    for key, default in SERVICES.items():
        name = (spec.get("services") or {}).get(key, default)
        images.append(Image(key, name, f"{registry}/{name}:{tag}", IMAGES_DIR / key / "Dockerfile", "service",
                            "service"))
    return images


def source_url(spec: dict) -> str:
    if os.environ.get("SRLM_SOURCE_URL"):
        return os.environ["SRLM_SOURCE_URL"]
    try:
        url = subprocess.run(["git", "-C", str(ROOT), "remote", "get-url", "origin"], capture_output=True,
                             text=True, check=True).stdout.strip()
        if url.startswith("git@github.com:"):
            url = "https://github.com/" + url.split(":", 1)[1]
        return url.removesuffix(".git") or _default_source(spec)
    except (OSError, subprocess.CalledProcessError):
        return _default_source(spec)


def _default_source(spec: dict) -> str:
    # ghcr.io/<owner>/<repo> -> https://github.com/<owner>/<repo> (links the GHCR package to its repository)
    parts = spec["registry"].split("/")
    if parts[0] == "ghcr.io" and len(parts) >= 3:
        return f"https://github.com/{parts[1]}/{parts[2]}"
    return "https://github.com/OWNER/srlm"


def revision() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def build_command(image: Image, registry: str, tag: str, docker: str, source: str, revision: str,
                  build_args: Sequence[str] = (), ca_bundle: str | None = None,
                  options: Sequence[str] = ()) -> list[str]:
    """``build_args``: extra ``KEY=VALUE`` (BASE=..., TORCH=cpu); ``ca_bundle``: a CA bundle file the
    builds' pip trusts (the build secret ``ca-bundle``, see images/pip.sh); ``options``: engine flags."""
    engine = shlex.split(docker)
    if Path(engine[0]).name == "podman":  # podman's default (OCI) format drops HEALTHCHECK (the MLflow server's)
        options = ["--format", "docker", *options]
    cmd = [*engine, "build", *options, "--platform", PLATFORM,
           "--file", str(image.dockerfile.relative_to(ROOT)), "--tag", image.ref, "--build-arg", f"VERSION={tag}",
           "--build-arg", f"SOURCE_URL={source}", "--build-arg", f"REVISION={revision}"]
    if image.family in ("generation", "training"):  # FROM ${REGISTRY}/<base>:${VERSION}
        cmd += ["--build-arg", f"REGISTRY={registry}"]
    for arg in build_args:
        cmd += ["--build-arg", arg]
    if ca_bundle:
        cmd += ["--secret", f"id=ca-bundle,src={ca_bundle}"]
    return [*cmd, "."]  # the build context is the repository root (see .dockerignore)


def _run(cmd: list[str], dry_run: bool) -> None:
    print("+ " + shlex.join(cmd), flush=True)
    if not dry_run:
        subprocess.run(cmd, cwd=ROOT, check=True)


def _select(images: list[Image], only: list[str]) -> list[Image]:
    if not only:
        return images
    known = {i.key for i in images} | {i.name for i in images}
    unknown = sorted(set(only) - known)
    if unknown:
        raise SystemExit(f"unknown image(s) {unknown}; known keys: {[i.key for i in images]}")
    return [i for i in images if i.key in only or i.name in only]


# --- rendering the stage Dockerfiles from their family templates ---------------------------------

def render(image: Image, spec: dict) -> str:
    """The Dockerfile text of a stage image, from its family template (default refs from images.json)."""
    template = (TEMPLATES / f"{image.family}.Dockerfile").read_text(encoding="utf-8")
    registry, tag = spec["registry"].rstrip("/"), spec["tag"]
    values = {
        "key": image.key,
        "name": image.name,
        "description": spec["stages"][image.key]["description"],
        "registry": registry,
        "base_name": spec["images"]["base"],
        "version": tag,
    }
    header = (f"# GENERATED from images/templates/{image.family}.Dockerfile by `python images/build.py render`:\n"
              f"# edit the template, then re-render. Build with `make images` (or images/build.py build {image.key}).\n")
    text = template
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    if "{{" in text:
        raise SystemExit(f"{image.family}.Dockerfile: unreplaced placeholder in {text[text.index('{{'):][:40]!r}")
    return header + text


def cmd_render(check: bool) -> int:
    spec = load_spec()
    stale = []
    for image in plan(registry=spec["registry"], tag=spec["tag"], spec=spec):
        if image.kind != "stage":
            continue
        text = render(image, spec)
        current = image.dockerfile.read_text(encoding="utf-8") if image.dockerfile.exists() else None
        if current == text:
            continue
        stale.append(str(image.dockerfile.relative_to(ROOT)))
        if not check:
            image.dockerfile.parent.mkdir(parents=True, exist_ok=True)
            image.dockerfile.write_text(text, encoding="utf-8")
            print(f"wrote {image.dockerfile.relative_to(ROOT)}")
    if check and stale:
        print("stale Dockerfiles (run `python images/build.py render`): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python images/build.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("plan", "list the images in build order"), ("build", "build the images (base first)"),
                       ("push", "push the images"), ("refs", "print one image reference per line")):
        p = sub.add_parser(name, help=text)
        p.add_argument("only", nargs="*", help="image keys or names (default: all)")
        p.add_argument("--registry", help=f"registry (default: ${ENV_REGISTRY}, else images.json)")
        p.add_argument("--tag", help=f"tag (default: ${ENV_TAG}, else images.json)")
        p.add_argument("--json", action="store_true", help="machine-readable output (plan, refs)")
        p.add_argument("--dry-run", action="store_true", help="print the commands without running them")
        p.add_argument("--docker", default=os.environ.get("DOCKER", "docker"),
                       help="container CLI (default: $DOCKER or docker; podman works too)")
        if name == "build":
            p.add_argument("--build-arg", action="append", default=[], metavar="KEY=VALUE",
                           help="passed to every build: BASE=<image> (the image the Dockerfiles start from), "
                                "TORCH=cpu (the CPU variant; give it its own --tag)")
            p.add_argument("--ca-bundle", default=os.environ.get("SRLM_CA_BUNDLE"), metavar="FILE",
                           help="CA bundle pip trusts in the builds, for a TLS-inspecting proxy (a build secret, "
                                "kept in no layer; default: $SRLM_CA_BUNDLE)")
    r = sub.add_parser("render", help="write the stage Dockerfiles from images/templates/")
    r.add_argument("--check", action="store_true", help="only check that the committed Dockerfiles are current")
    args = parser.parse_args(argv)

    if args.command == "render":
        return cmd_render(args.check)
    spec = load_spec()
    images = plan(args.registry, args.tag, spec)
    registry, tag = resolve(spec, args.registry, args.tag)
    chosen = _select(images, args.only)
    if args.command == "refs":
        refs = [i.ref for i in chosen]
        print(json.dumps(refs, indent=2) if args.json else "\n".join(refs))
    elif args.command == "plan":
        rows = [{"key": i.key, "name": i.name, "ref": i.ref, "kind": i.kind, "family": i.family,
                 "dockerfile": str(i.dockerfile.relative_to(ROOT))} for i in chosen]
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for row in rows:
                print(f"{row['kind']:8} {row['family']:10} {row['ref']:60} {row['dockerfile']}")
    elif args.command == "build":
        missing = [str(i.dockerfile.relative_to(ROOT)) for i in chosen if not i.dockerfile.exists()]
        if missing:
            raise SystemExit(f"missing Dockerfiles: {missing}")
        source, commit = source_url(spec), revision()
        if any(i.family in ("generation", "training") for i in chosen) and not any(i.kind == "base" for i in chosen):
            print(f"note: stage images build FROM {images[0].ref}; build it first if it is not there", file=sys.stderr)
        for image in chosen:
            _run(build_command(image, registry, tag, args.docker, source, commit, args.build_arg, args.ca_bundle),
                 args.dry_run)
    elif args.command == "push":
        for image in chosen:
            _run([*shlex.split(args.docker), "push", image.ref], args.dry_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
