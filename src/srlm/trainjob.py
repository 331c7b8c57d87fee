"""Training across nodes on the Kubeflow Trainer: a TrainJob that runs the project's own entry point.

The TrainJob uses only the fields that are stable from Trainer v2.1 to v2.3 (``runtimeRef`` and
``trainer.{image, command, numNodes, numProcPerNode, resourcesPerNode, env}``); volumes (the RWX
model volume, ``/dev/shm``) come from the namespaced ``TrainingRuntime`` the project ships
(``manifests/trainer/``). Every node runs ``torchrun -m srlm.distributed REQUEST``; torchrun reads
the node count, rank and rendezvous address from the ``PET_*`` variables the Trainer sets.

The launcher is safe to retry: the job's name is derived from the KFP run, the stage and the
iteration, and an existing job is waited on rather than created again. It creates with strict field
validation (an unknown field is an error, not a silent drop), waits on ``status.conditions``
(``Complete`` / ``Failed``) with a timeout, copies the workers' logs into its own output, deletes
the job when it is over, and fails with the job's own message.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from typing import Any, TextIO

from srlm.errors import SrlmError

GROUP, VERSION, PLURAL, KIND = "trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"
RUNTIME = "srlm-torch"  # manifests/trainer/training-runtime.yaml
JOBSET_LABEL = "jobset.sigs.k8s.io/jobset-name"  # on every pod of the job
CONTAINER = "node"  # the trainer container of the runtime


def job_name(run_id: str, stage: str, iteration: int | None) -> str:
    """A DNS-1123 name that is the same on every retry of the same task (and short: pods add suffixes)."""
    digest = hashlib.sha256(f"{run_id}/{stage}/{iteration}".encode()).hexdigest()[:10]
    return f"srlm-{re.sub('[^a-z0-9]+', '-', stage.lower()).strip('-')}-{iteration or 0}-{digest}"


def manifest(name: str, request: str, *, image: str, nodes: int, nproc_per_node: int, runtime: str = RUNTIME,
             resources_per_node: dict[str, Any] | None = None, env: dict[str, str] | None = None,
             labels: dict[str, str] | None = None) -> dict[str, Any]:
    """The TrainJob running ``request`` (a path every node sees) on ``nodes`` x ``nproc_per_node`` processes."""
    trainer: dict[str, Any] = {"image": image, "command": ["torchrun", "-m", "srlm.distributed", request],
                               "numNodes": nodes, "numProcPerNode": nproc_per_node}
    if resources_per_node:
        trainer["resourcesPerNode"] = resources_per_node
    if env:
        trainer["env"] = [{"name": k, "value": v} for k, v in sorted(env.items())]
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "srlm", **(labels or {})}},
        "spec": {"runtimeRef": {"name": runtime, "kind": "TrainingRuntime", "apiGroup": GROUP}, "trainer": trainer},
    }


def finished(job: dict[str, Any]) -> tuple[str, str] | None:
    """("Complete" | "Failed", message) once the job is over, else None."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            return condition["type"], condition.get("message") or condition.get("reason") or ""
    return None


def own_namespace() -> str:
    """The namespace of the pod this runs in (its service account's), else ``default``."""
    path = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or "default"
    except OSError:
        return "default"


def default_api_client() -> Any:
    """In a pod: its service account; elsewhere: the kubeconfig."""
    import os

    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:  # KUBECONFIG as it is now (the client reads it once, at import)
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None)
        except (config.ConfigException, OSError) as e:
            raise SrlmError(f"no Kubernetes API to create the TrainJob on: not in a pod, and no kubeconfig ({e})") from None
    return client.ApiClient()


class TrainJobs:
    """TrainJobs in one namespace, through the Kubernetes API."""

    def __init__(self, namespace: str, api_client: Any = None, out: TextIO | None = None) -> None:
        from kubernetes import client

        self.namespace = namespace
        api_client = api_client or default_api_client()
        self.custom, self.core = client.CustomObjectsApi(api_client), client.CoreV1Api(api_client)
        self.out = out or sys.stdout
        self._printed: dict[str, int] = {}

    def create_or_get(self, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create the job (strict field validation), or get the one a previous try created; (job, created)."""
        name = body["metadata"]["name"]
        try:
            return self.custom.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, body, field_validation="Strict"), True
        except self._api_error() as e:
            if e.status == 409:
                return self.get(name), False
            raise SrlmError(f"TrainJob {name}: the Kubernetes API refused it ({e.status} {e.reason}): {_message(e)}") from None

    def get(self, name: str) -> dict[str, Any]:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        except self._api_error() as e:
            raise SrlmError(f"TrainJob {name}: cannot read it ({e.status} {e.reason}): {_message(e)}") from None

    def delete(self, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name,
                                                        propagation_policy="Foreground")
        except self._api_error() as e:
            if e.status != 404:
                raise SrlmError(f"TrainJob {name}: cannot delete it ({e.status} {e.reason}): {_message(e)}") from None

    def wait(self, name: str, timeout_s: float, poll_s: float = 10.0) -> dict[str, Any]:
        """Wait until the job is over, copying its pods' logs; SrlmError when it failed or the time ran out."""
        deadline, checks = time.monotonic() + timeout_s, 0
        while True:
            job = self.get(name)
            self.copy_logs(name)
            outcome = finished(job)
            if outcome is not None:
                kind, message = outcome
                if kind == "Failed":
                    raise SrlmError(f"TrainJob {name} failed: {message}")
                return job
            if time.monotonic() >= deadline:
                raise SrlmError(f"TrainJob {name} did not finish within {timeout_s:g} s; "
                                "it was deleted")
            time.sleep(min(poll_s, 0.5 * 1.5**checks))  # quick at first, then every poll_s
            checks += 1

    def copy_logs(self, name: str) -> None:
        """Print what each of the job's pods logged since the last call, each line prefixed with its pod."""
        try:
            pods = self.core.list_namespaced_pod(self.namespace, label_selector=f"{JOBSET_LABEL}={name}").items
        except self._api_error():
            return  # logs are a courtesy; the job's conditions decide
        for pod in sorted(pods, key=lambda p: p.metadata.name):
            pod_name = pod.metadata.name
            try:
                text = self.core.read_namespaced_pod_log(pod_name, self.namespace, container=CONTAINER)
            except self._api_error():
                continue  # not started yet
            new = text[self._printed.get(pod_name, 0):]
            self._printed[pod_name] = len(text)
            for line in new.splitlines():
                print(f"[{pod_name}] {line}", file=self.out)
        self.out.flush()

    @staticmethod
    def _api_error() -> type[Exception]:
        from kubernetes.client.exceptions import ApiException

        return ApiException


def run(body: dict[str, Any], namespace: str, *, timeout_s: float, poll_s: float = 10.0, api_client: Any = None,
        out: TextIO | None = None) -> dict[str, Any]:
    """Create (or find) the TrainJob, wait for it, delete it; the finished job."""
    jobs = TrainJobs(namespace, api_client, out)
    name = body["metadata"]["name"]
    _, created = jobs.create_or_get(body)
    print(f"TrainJob {name} in {namespace}: {'created' if created else 'found from an earlier try; waiting on it'}",
          file=jobs.out)
    try:
        return jobs.wait(name, timeout_s, poll_s)
    finally:
        jobs.delete(name)


def _message(error: Any) -> str:
    try:
        return json.loads(error.body).get("message") or str(error.body)
    except (TypeError, ValueError):
        return str(error.body or error.reason)
