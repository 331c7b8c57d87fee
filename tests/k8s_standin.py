"""A local stand-in for the Kubernetes API and the Kubeflow Trainer controller (what cannot exist here).

An HTTP server on 127.0.0.1 serving what the launcher (srlm.trainjob) calls through the official
kubernetes client: TrainingRuntime and TrainJob custom objects (create with strict field validation
and the Trainer CRD's schema of one version, get, delete) and the job's pods and their logs. Its
controller runs a TrainJob as the Trainer's torch runtime would: ``numNodes`` local processes of the
job's command, each with the ``PET_*`` variables, then sets the ``Complete`` or ``Failed`` condition.
The image is this machine (``torchrun`` is this Python's torch.distributed.run); the runtime's pod
template (volumes, /dev/shm) is not emulated.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema

ROOT = Path(__file__).resolve().parents[1]
CRDS = Path(__file__).parent / "crds"
GROUP_PATH = re.compile(r"^/apis/trainer\.kubeflow\.org/v1alpha1/namespaces/([^/]+)/(trainjobs|trainingruntimes)(?:/([^/]+))?$")
PODS_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/pods(?:/([^/]+)/log)?$")
KINDS = {"trainjobs": "TrainJob", "trainingruntimes": "TrainingRuntime"}


def rendered_trainer_manifests() -> list[dict[str, Any]]:
    """The project's manifests/trainer (TrainingRuntime, volume, RBAC) as ``kubectl kustomize`` renders them."""
    import shutil

    import yaml

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RuntimeError("kubectl is needed to render manifests/trainer (it is on CI's machine: make tools)")
    out = subprocess.run([kubectl, "kustomize", str(ROOT / "manifests" / "trainer")], capture_output=True, text=True,
                         check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]


def schemas(version: str) -> dict[str, Any]:
    return json.loads((CRDS / f"trainer-v{version}.json").read_text())["schemas"]


def unknown_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Fields the structural schema does not declare (what strict field validation rejects)."""
    if isinstance(value, dict):
        if schema.get("x-kubernetes-preserve-unknown-fields") or "additionalProperties" in schema:
            extra = schema.get("additionalProperties")
            return [u for k, v in value.items() for u in unknown_fields(v, extra, f"{path}.{k}")] if isinstance(extra, dict) else []
        declared = schema.get("properties", {})
        if path == "":
            declared = {**declared, "apiVersion": {}, "kind": {}, "metadata": {"x-kubernetes-preserve-unknown-fields": True}}
        found = [f"{path}.{k}".lstrip(".") for k in value if k not in declared]
        return found + [u for k, v in value.items() if k in declared for u in unknown_fields(v, declared[k], f"{path}.{k}")]
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [u for i, v in enumerate(value) for u in unknown_fields(v, schema["items"], f"{path}[{i}]")]
    return []


def problems(body: dict[str, Any], schema: dict[str, Any]) -> tuple[int, str] | None:
    """(HTTP status, message) the API server would answer a create with, or None when it is accepted."""
    unknown = unknown_fields(body, schema)
    if unknown:
        return 400, f'strict decoding error: unknown field "{unknown[0]}"'
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(body), key=lambda e: list(e.path))
    if errors:
        where = ".".join(str(p) for p in errors[0].path)
        return 422, f'{body.get("kind")} "{body.get("metadata", {}).get("name")}" is invalid: {where}: {errors[0].message}'
    return None


class Cluster:
    """State: objects by (plural, namespace, name); per TrainJob its node processes and their log files."""

    def __init__(self, version: str, logs: Path) -> None:
        self.schemas, self.logs = schemas(version), logs
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.processes: dict[str, list[subprocess.Popen]] = {}
        self.created: list[str] = []
        self.lock = threading.Lock()

    def create(self, plural: str, namespace: str, body: dict[str, Any], strict: bool) -> tuple[int, dict[str, Any]]:
        kind = KINDS[plural]
        refused = problems(body, self.schemas[kind]) if strict else None
        if refused:
            return refused[0], status(refused[0], refused[1])
        name = body["metadata"]["name"]
        with self.lock:
            if (plural, namespace, name) in self.objects:
                return 409, status(409, f'{plural}.trainer.kubeflow.org "{name}" already exists')
            body = {**body, "metadata": {**body["metadata"], "namespace": namespace}, "status": {}}
            self.objects[(plural, namespace, name)] = body
        if plural == "trainjobs":
            self.created.append(name)
            self.start(namespace, body)
        return 201, body

    def start(self, namespace: str, job: dict[str, Any]) -> None:
        name, trainer = job["metadata"]["name"], job["spec"]["trainer"]
        runtime = self.objects.get(("trainingruntimes", namespace, job["spec"]["runtimeRef"]["name"]))
        policy = (runtime or {}).get("spec", {}).get("mlPolicy", {})
        nodes = int(trainer.get("numNodes") or policy.get("numNodes") or 1)
        nproc = int(trainer.get("numProcPerNode") or policy.get("torch", {}).get("numProcPerNode") or 1)
        command = [*trainer.get("command", []), *trainer.get("args", [])]
        if command[:1] == ["torchrun"]:
            command = [sys.executable, "-m", "torch.distributed.run", *command[1:]]
        port = free_port()
        env_extra = {e["name"]: e["value"] for e in trainer.get("env", [])}
        started = []
        for rank in range(nodes):
            env = {**os.environ, **env_extra, "PET_NNODES": str(nodes), "PET_NPROC_PER_NODE": str(nproc),
                   "PET_NODE_RANK": str(rank), "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(port)}
            log = (self.logs / f"{name}-node-0-{rank}.log").open("w")
            started.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
        self.processes[name] = started
        threading.Thread(target=self.watch, args=(namespace, name, started), daemon=True).start()

    def watch(self, namespace: str, name: str, started: list[subprocess.Popen]) -> None:
        codes = [p.wait() for p in started]
        failed = [(rank, code) for rank, code in enumerate(codes) if code != 0]
        condition = ({"type": "Failed", "status": "True", "reason": "TrainJobFailed",
                      "message": f"trainer node {failed[0][0]} exited with status {failed[0][1]}"} if failed else
                     {"type": "Complete", "status": "True", "reason": "TrainJobComplete", "message": "all nodes succeeded"})
        with self.lock:
            job = self.objects.get(("trainjobs", namespace, name))
            if job is not None:
                job["status"] = {"conditions": [condition]}

    def delete(self, plural: str, namespace: str, name: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            job = self.objects.pop((plural, namespace, name), None)
        if job is None:
            return 404, status(404, f'{plural}.trainer.kubeflow.org "{name}" not found')
        for process in self.processes.pop(name, []):
            process.kill()
        return 200, status(200, "deleted")

    def pods(self, namespace: str, selector: str) -> dict[str, Any]:
        job = selector.split("=", 1)[1] if "=" in selector else ""
        items = [{"metadata": {"name": log.stem, "namespace": namespace, "labels": {"jobset.sigs.k8s.io/jobset-name": job}}}
                 for log in sorted(self.logs.glob(f"{job}-node-0-*.log"))]
        return {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}


def status(code: int, message: str) -> dict[str, Any]:
    reasons = {400: "BadRequest", 404: "NotFound", 409: "AlreadyExists", 422: "Invalid", 200: "Success"}
    return {"kind": "Status", "apiVersion": "v1", "status": "Success" if code < 300 else "Failure",
            "message": message, "reason": reasons.get(code, ""), "code": code}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def handler(cluster: Cluster) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def reply(self, code: int, body: Any, content_type: str = "application/json") -> None:
            data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def route(self) -> tuple[Any, Any, dict[str, list[str]]]:
            url = urllib.parse.urlparse(self.path)
            return GROUP_PATH.match(url.path), PODS_PATH.match(url.path), urllib.parse.parse_qs(url.query)

        def do_POST(self) -> None:
            objects, _, query = self.route()
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if not objects or objects.group(3):
                return self.reply(404, status(404, "not found"))
            strict = query.get("fieldValidation", [""])[0] == "Strict"
            self.reply(*cluster.create(objects.group(2), objects.group(1), body, strict))

        def do_GET(self) -> None:
            objects, pods, query = self.route()
            if objects and objects.group(3):
                found = cluster.objects.get((objects.group(2), objects.group(1), objects.group(3)))
                return self.reply(200, found) if found else self.reply(404, status(404, "not found"))
            if pods and pods.group(2):
                log = cluster.logs / f"{pods.group(2)}.log"
                return self.reply(200, log.read_text(errors="replace"), "text/plain") if log.exists() else \
                    self.reply(404, status(404, "not found"))
            if pods:
                return self.reply(200, cluster.pods(pods.group(1), query.get("labelSelector", [""])[0]))
            self.reply(404, status(404, "not found"))

        def do_DELETE(self) -> None:
            objects, _, _ = self.route()
            if not objects or not objects.group(3):
                return self.reply(404, status(404, "not found"))
            self.reply(*cluster.delete(objects.group(2), objects.group(1), objects.group(3)))

    return Handler


class StandIn:
    """``with StandIn("2.3.0", tmp) as api:`` ``api.client`` is a kubernetes ApiClient pointed at it."""

    def __init__(self, version: str, logs: Path) -> None:
        logs.mkdir(parents=True, exist_ok=True)
        self.cluster = Cluster(version, logs)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler(self.cluster))

    def __enter__(self) -> StandIn:
        from kubernetes import client

        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        configuration = client.Configuration(host=f"http://127.0.0.1:{self.server.server_port}")
        self.client = client.ApiClient(configuration)
        return self

    def kubeconfig(self, path: Path, namespace: str) -> Path:
        """A kubeconfig pointing at the stand-in (how a launcher outside a cluster finds the API)."""
        import yaml

        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "standin",
            "clusters": [{"name": "standin", "cluster": {"server": self.client.configuration.host}}],
            "users": [{"name": "me", "user": {}}],
            "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "me", "namespace": namespace}}]}))
        return path

    def __exit__(self, *exc: Any) -> None:
        for name in list(self.cluster.processes):
            for process in self.cluster.processes.pop(name):
                process.kill()
        self.server.shutdown()
