"""Build the images for real and run each as the cluster runs it: ``make images-check``.

    python images/check.py [--tier light|all] [--state DIR] [--keep-work]

No Docker daemon and no registry are needed: podman builds and runs the images (rootful, its
storage under ``--state``, runc, host network). No base image is pulled: a Debian bookworm with
Python 3.11 is made with debootstrap once and imported as ``localhost/srlm-debian-python:bookworm``
(kept in the state directory, so later runs reuse it), and every Dockerfile is built on it through
its ``BASE`` build argument. The images that carry torch are built as the CPU variant
(``TORCH=cpu``: torch's CPU build, served to the builds from a local index, and no vLLM); see
images/README.md for what differs from the CUDA images.

Tiers: ``light`` builds the light family (no torch) and the MLflow server; ``all`` adds the base
and one image of each torch family (training: sft, generation: sample). In every built stage
image, as uid 10001 with a read-only root filesystem and only ``/tmp`` writable (plus the
``/work`` volume the stages share, as the model volume would be), it imports the stage's module,
runs ``srlm --help`` and, per family, one real stage: seed data and pairs from judgements (light),
the tiny model and a few SFT steps (training), replies sampled from that model (generation), and
the MLflow server answering /health. Exit codes decide; ``images-check.json`` gets every build's
time and size and every run's time.

Tier ``pipeline`` builds every image, then runs the compiled tiny pipeline with KFP's local
``DockerRunner`` against podman's Docker-compatible API socket: every task in its own image.

Needs root, podman, runc and debootstrap (``apt-get install podman runc debootstrap``); the light
and all tiers need only the standard library, the pipeline tier the project's venv (kfp, docker).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build  # noqa: E402  (images/build.py: the plan and the build command)

ROOT = build.ROOT
DEBIAN_BASE = "localhost/srlm-debian-python:bookworm"
DEBIAN_PACKAGES = "python3,python3-venv,python-is-python3,ca-certificates,passwd"
DEBIAN_MIRROR = os.environ.get("SRLM_DEBIAN_MIRROR", "http://deb.debian.org/debian")
REGISTRY = "localhost/srlm"
TAG = "check-cpu"
SERVICE = "mlflow-server"
TORCH_IMAGES = ("base", "sft", "sample")  # the CPU base and one image of each torch family
# The library module each stage's step runs (srlm.steps imports it lazily): what an image must import.
STAGE_MODULES = {
    "validate": "validation", "tiny_model": "tiny_model", "seed": "seed_data", "build_eft": "eft",
    "sft": "training", "prompts": "prompts", "sample": "sampling", "judge": "judge", "merge": "shards",
    "pairs": "pairs", "dpo": "training", "evaluate": "evaluation", "register": "model_registry",
    "finalize": "tracking", "gate": "promotion",
}
UID = "10001:10001"
INDEX_PORT = 50507  # the local torch index
# How the manifests run a container: uid 10001, read-only root, only /tmp writable (host network here).
RESTRICTED = ("--network", "host", "--user", UID, "--read-only", "--read-only-tmpfs=false",
              "--tmpfs", "/tmp:rw,exec,mode=1777,size=4g")
CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")


class Podman:
    """podman with its own storage under ``state`` and the settings this kind of host needs."""

    def __init__(self, state: Path):
        self.state = state
        conf = state / "containers.conf"
        conf.write_text(_containers_conf(), encoding="utf-8")
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}
        self.base = ["podman", "--root", str(state / "storage"), "--runroot", str(state / "run"),
                     "--storage-driver", "overlay"]

    def __call__(self, *args: str, check: bool = True, capture: bool = False, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run([*self.base, *args], env=self.env, check=check, text=True,
                              capture_output=capture, **kwargs)

    def has(self, ref: str) -> bool:
        return self("image", "exists", ref, check=False).returncode == 0

    def size(self, ref: str) -> int:
        return int(self("image", "inspect", "--format", "{{.Size}}", ref, capture=True).stdout.strip())

    def run(self, ref: str, script: str, work: Path) -> None:
        """``script`` in ``ref`` as the manifests run a stage, with ``work`` at /work."""
        self("run", "--rm", *RESTRICTED, "--volume", f"{work}:/work", "--env", "HF_HUB_OFFLINE=1", ref,
             "sh", "-ec", script)


def _containers_conf() -> str:
    """runc (crun refuses a hybrid cgroup layout) and ulimits the host can grant (the defaults cannot)."""
    nofile = _hard_limit("-Hn", 1048576)
    nproc = min(_hard_limit("-Hu", 32768), 32768)
    return (f'[engine]\nruntime = "runc"\n[containers]\n'
            f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n')


def _hard_limit(flag: str, unlimited: int) -> int:
    value = subprocess.run(["sh", "-c", f"ulimit {flag}"], capture_output=True, text=True).stdout.strip()
    return unlimited if value in ("", "unlimited") else int(value)


def check_tools() -> None:
    missing = [tool for tool in ("podman", "runc", "debootstrap") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"images-check needs {', '.join(missing)}: apt-get install -y podman runc debootstrap")
    if os.geteuid() != 0:
        raise SystemExit("images-check runs podman and debootstrap as root (rootful storage under --state)")


def debian_base(podman: Podman) -> float:
    """The stand-in for python:3.11-slim: Debian bookworm (Python 3.11.2) made with debootstrap; seconds spent."""
    if podman.has(DEBIAN_BASE):
        return 0.0
    start = time.monotonic()
    rootfs = podman.state / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    print(f"== debootstrap bookworm ({DEBIAN_PACKAGES}) from {DEBIAN_MIRROR}", flush=True)
    subprocess.run(["debootstrap", "--variant=minbase", f"--include={DEBIAN_PACKAGES}", "bookworm", str(rootfs),
                    DEBIAN_MIRROR], check=True, stdout=subprocess.DEVNULL)
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    podman("import", "--change", "CMD [\"python\"]", "-", DEBIAN_BASE, stdin=tar.stdout, stdout=subprocess.DEVNULL)
    if tar.wait() != 0:
        raise SystemExit("tar of the debootstrapped root failed")
    shutil.rmtree(rootfs)
    return time.monotonic() - start


def cpu_torch_version() -> str:
    """The CPU venv's torch (requirements.lock), the one the test suite runs: e.g. 2.13.0."""
    for line in (ROOT / "requirements.lock").read_text(encoding="utf-8").splitlines():
        if line.startswith("torch=="):
            return line.split("==", 1)[1].split("+")[0].strip()
    raise SystemExit("requirements.lock pins no torch")


@contextlib.contextmanager
def torch_index(state: Path, version: str) -> Iterator[str]:
    """A package index on 127.0.0.1 holding torch's CPU wheel (PyPI has only the CUDA build for
    Linux x86_64): fetched once by this machine's pip (its configured indexes and wheel folders,
    else download.pytorch.org/whl/cpu), served to the builds (they use the host network)."""
    folder = state / "torch-index" / "torch"
    folder.mkdir(parents=True, exist_ok=True)
    if not list(folder.glob(f"torch-{version}+cpu-*.whl")):
        download = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--python-version",
                    "3.11", "--platform", "manylinux_2_28_x86_64", "--dest", str(folder), f"torch=={version}+cpu"]
        if subprocess.run(download).returncode != 0:  # not in pip's configured sources: the official index
            subprocess.run([*download, "--index-url", "https://download.pytorch.org/whl/cpu"], check=True)
    handler = functools.partial(_QuietHandler, directory=str(folder.parent))
    # A fixed port when free: the index URL is a build argument, part of the build cache's key.
    server = http.server.ThreadingHTTPServer(("127.0.0.1", INDEX_PORT if _port_free(INDEX_PORT) else 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002  (the base class's name)
        pass


def ca_bundle() -> str | None:
    """This host's system CA bundle, for builds behind a TLS-inspecting proxy (SRLM_CA_BUNDLE overrides)."""
    if os.environ.get("SRLM_CA_BUNDLE"):
        return os.environ["SRLM_CA_BUNDLE"]
    return next((path for path in CA_BUNDLES if Path(path).is_file()), None)


def build_images(podman: Podman, images: Sequence[build.Image], build_args: Sequence[str]) -> dict[str, dict]:
    source, commit = build.source_url(build.load_spec()), build.revision()
    results = {}
    for image in images:
        cmd = build.build_command(image, REGISTRY, TAG, "podman", source, commit, build_args, ca_bundle(),
                                  options=("--network", "host", "--pull=never"))
        print(f"== build {image.key}: {image.ref}", flush=True)
        start = time.monotonic()
        podman(*cmd[1:], cwd=ROOT)
        seconds = time.monotonic() - start
        results[image.key] = {"ref": image.ref, "family": image.family, "build_s": round(seconds, 1),
                              "size_mb": round(podman.size(image.ref) / 1e6, 1)}
        print(f"   {seconds:.0f} s, {results[image.key]['size_mb']:.0f} MB", flush=True)
    return results


# --- the runs ----------------------------------------------------------------------------------

def smoke_script(key: str) -> str:
    module = STAGE_MODULES[key]
    return (f"python -c 'import srlm.stages, srlm.{module}; print(\"imported srlm.{module}\")'\n"
            "srlm --help > /dev/null && echo 'srlm --help: ok'\n")


STAGE_RUNS = {
    "seed": "srlm seed --preset tiny --out /work/seed\n",
    "pairs": "srlm pairs --preset tiny --judgements /work/judgements.jsonl --out /work/pairs.jsonl\n"
             "test \"$(wc -l < /work/pairs.jsonl)\" -eq 2\n",
    "sft": "srlm tiny-model --out /work/m0\n"
           "srlm sft --preset tiny --model /work/m0 --ift /work/seed/ift.jsonl --eft /work/seed/eft_train.jsonl "
           "--max-steps 3 --out /work/m1\n"
           "test -s /work/m1/config.json\n",
    "sample": "srlm sample --preset tiny --backend transformers --model /work/m1 --prompts /work/prompts.jsonl "
              "--out /work/candidates.jsonl\n"
              "test \"$(wc -l < /work/candidates.jsonl)\" -eq 2\n",
}


def write_fixtures(work: Path) -> None:
    """Judgements for pairs (two prompts, a clear best and worst each) and two prompts to sample."""
    def judged(text: str, score: float) -> dict:
        return {"text": text, "judge_outputs": [f"Score: {score:g}"], "scores": [score], "mean": score}

    records = [{"id": f"p{i}", "prompt": prompt, "replies": [judged(good, 4), judged("no idea", 1), judged("ok", 3)]}
               for i, (prompt, good) in enumerate((("Name a primary colour.", "Red is a primary colour."),
                                                   ("What is 2 + 2?", "2 + 2 = 4.")))]
    (work / "judgements.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    prompts = [{"id": "q1", "prompt": "Give one tip for sleeping well."}, {"id": "q2", "prompt": "Say hello."}]
    (work / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts), encoding="utf-8")


def run_stages(podman: Podman, images: Sequence[build.Image], work: Path) -> dict[str, float]:
    """Smoke-test every stage image, then the real stage runs in dependency order (seed, sft, sample)."""
    timings = {}
    order = ["seed", "pairs", "sft", "sample"]
    stage_images = sorted((i for i in images if i.kind == "stage"),
                          key=lambda i: order.index(i.key) if i.key in order else -1)
    for image in stage_images:
        print(f"== run {image.key} in {image.ref} (uid {UID}, read-only root, writable /tmp)", flush=True)
        start = time.monotonic()
        podman.run(image.ref, smoke_script(image.key) + STAGE_RUNS.get(image.key, ""), work)
        timings[image.key] = round(time.monotonic() - start, 1)
    for image in images:
        if image.key == SERVICE:
            start = time.monotonic()
            mlflow_health(podman, image.ref)
            timings[SERVICE] = round(time.monotonic() - start, 1)
    return timings


def mlflow_health(podman: Podman, ref: str) -> None:
    """The tracking server starts under the same restrictions, answers /health, and its HEALTHCHECK passes."""
    # The image's HEALTHCHECK asks port 5000 (the Dockerfile's CMD): use it when it is free here.
    port = 5000 if _port_free(5000) else _free_port()
    with mlflow_server(podman, ref, port) as name:
        if port == 5000:
            podman("healthcheck", "run", name)  # exit 0 = healthy
            print("   HEALTHCHECK: healthy", flush=True)
        else:
            print("   HEALTHCHECK not run: port 5000 is taken on this machine", flush=True)


@contextlib.contextmanager
def mlflow_server(podman: Podman, ref: str, port: int, store: Path | None = None) -> Iterator[str]:
    """The MLflow server image serving on 127.0.0.1:``port`` as uid 10001 on a read-only root; its SQLite
    store and artifacts in ``store`` (mounted at the same path), else in its /tmp. Yields the container."""
    print(f"== run mlflow-server in {ref} on 127.0.0.1:{port}", flush=True)
    name = f"srlm-check-mlflow-{port}"
    where = store or Path("/tmp")
    # its HEALTHCHECK runs only by hand (podman's timer for it needs systemd)
    podman("run", "--detach", "--name", name, *RESTRICTED, "--health-interval=disable",
           *(["--volume", f"{store}:{store}"] if store else []), ref, "mlflow", "server", "--host", "127.0.0.1",
           "--port", str(port), "--backend-store-uri", f"sqlite:///{where}/mlflow.db", "--default-artifact-root",
           f"{where}/mlartifacts", stdout=subprocess.DEVNULL)
    try:
        _wait_for(lambda: _healthy(port) or _gone(podman, name), 120, "the MLflow server's /health")
        if _gone(podman, name):
            podman("logs", name, check=False)
            raise SystemExit("mlflow-server: the server exited")
        print("   /health: 200", flush=True)
        yield name
    finally:
        podman("rm", "--force", name, check=False, stdout=subprocess.DEVNULL)


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _gone(podman: Podman, name: str) -> bool:
    return podman("container", "exists", name, check=False).returncode != 0


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tier_images(tier: str) -> list[build.Image]:
    """light: every light-family image and the MLflow server; all: also the CPU base, sft and sample;
    pipeline: every image (the tiny pipeline runs in them)."""
    chosen = {SERVICE, *(TORCH_IMAGES if tier != "light" else ())}
    return [i for i in build.plan(REGISTRY, TAG) if tier == "pipeline" or i.family == "light" or i.key in chosen]


def run_pipeline(podman: Podman, run_dir: Path, mlflow_ref: str) -> dict:
    """The compiled tiny pipeline, every task in its built image: KFP's DockerRunner talks to podman's
    Docker-compatible API. Tasks run as the images' uid 10001 on a read-only root with /tmp writable.
    They log over HTTP (the light images carry only the MLflow client) to the MLflow server image; its
    SQLite store and the artifacts live in the pipeline root, the one host folder KFP mounts into every
    task (at the same path), where this process reads them back."""
    from kfp import local

    sys.path.insert(0, str(ROOT))
    from pipelines import run_local

    shutil.rmtree(run_dir, ignore_errors=True)
    store = run_dir / "kfp" / "store"
    port = _free_port()
    yaml_path = run_dir / "self_rewarding_tiny.yaml"
    run_dir.mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "pipelines.compile", "--profile", "tiny", "--output", str(yaml_path),
                    "--registry", REGISTRY, "--tag", TAG, "--set", f"mlflow_tracking_uri=http://127.0.0.1:{port}",
                    "--set", 'env={"HF_HUB_OFFLINE": "1", "MLFLOW_ENABLE_ASYNC_LOGGING": "false"}',
                    # through a tracking server a model version needs a source the server can serve: models on
                    # KFP's workspace are uploaded by register (a kfp.local artifact's URI is a local path)
                    "--set", "model_storage=workspace"],
                   cwd=ROOT, check=True)
    socket_path = podman.state / "podman.sock"
    service = subprocess.Popen([*podman.base, "system", "service", "--time=0", f"unix://{socket_path}"],
                               env=podman.env)
    previous_umask = os.umask(0)  # the tasks (uid 10001) write where this process (root) made the folders
    store.mkdir(parents=True)
    (store / "mlflow.db").touch(mode=0o666)  # SQLite would make it 0644, read-only to the tasks
    try:
        _wait_for(socket_path.exists, 30, "podman's API socket")
        os.environ["DOCKER_HOST"] = f"unix://{socket_path}"
        runner = local.DockerRunner(network_mode="host", read_only=True, tmpfs={"/tmp": "rw,exec,mode=1777"})
        with mlflow_server(podman, mlflow_ref, port, store):
            summary = run_local.run(run_dir, yaml_path, runner=runner, store_dir=store)
    finally:
        os.umask(previous_umask)
        service.terminate()
        service.wait()
    registered = [m["model"] for m in summary["models"]]
    if registered != ["M1", "M2", "M3"]:
        raise SystemExit(f"the pipeline in the images registered {registered}, not M1..M3")
    return {"pipeline_s": summary["pipeline_seconds"], "registered": registered, "champion": summary["champion"]}


def _wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not come up within {seconds:.0f} s")
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python images/check.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tier", choices=("light", "all", "pipeline"), default="all",
                        help="light: the light family + the MLflow server; all (default): also the CPU base, sft, "
                             "sample; pipeline: every image, then the tiny pipeline through KFP's DockerRunner")
    parser.add_argument("--state", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                        / "srlm-images-check",
                        help="podman storage, the Debian base, the torch wheel (kept between runs)")
    parser.add_argument("--report", type=Path, default=ROOT / "images-check.json", help="times and sizes (JSON)")
    # Not under /root (mode 700): KFP mounts the pipeline root at the same path, which uid 10001 must reach.
    parser.add_argument("--pipeline-dir", type=Path, default=Path("/var/tmp/srlm-images-check-pipeline"),
                        help="the pipeline tier's run directory (pipeline root, MLflow store)")
    parser.add_argument("--keep-work", action="store_true", help="keep the stages' shared /work folder")
    args = parser.parse_args(argv)

    check_tools()
    state = args.state.resolve()
    state.mkdir(parents=True, exist_ok=True)
    podman = Podman(state)
    started = time.monotonic()
    report: dict = {"tier": args.tier, "debootstrap_s": round(debian_base(podman), 1)}
    images = tier_images(args.tier)
    build_args = [f"BASE={DEBIAN_BASE}"]
    with contextlib.ExitStack() as stack:
        if any(i.family in ("base", "generation", "training") for i in images):
            version = cpu_torch_version()
            index = stack.enter_context(torch_index(state, version))
            build_args += ["TORCH=cpu", f"TORCH_CPU_VERSION={version}", f"TORCH_CPU_INDEX={index}"]
        report["images"] = build_images(podman, images, build_args)
    work = state / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    work.chmod(0o777)  # the stages run as uid 10001, as on the cluster's volume
    write_fixtures(work)
    report["runs_s"] = run_stages(podman, images, work)
    if args.tier == "pipeline":
        mlflow_ref = next(i.ref for i in images if i.key == SERVICE)
        report["pipeline"] = run_pipeline(podman, args.pipeline_dir.resolve(), mlflow_ref)
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    report["total_s"] = round(time.monotonic() - started, 1)
    args.report.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"images-check ({args.tier}): {len(images)} images built and run in {report['total_s']:.0f} s; "
          f"report {args.report}")
    for key, built in report["images"].items():
        print(f"  {key:14} {built['family']:10} {built['size_mb']:8.0f} MB  build {built['build_s']:6.0f} s  "
              f"run {report['runs_s'].get(key, 0):5.1f} s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as error:
        print(f"images-check: {shlex.join(map(str, error.cmd))} exited {error.returncode}", file=sys.stderr)
        sys.exit(1)
