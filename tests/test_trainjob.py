"""The Kubeflow Trainer launcher (srlm.trainjob) against a local stand-in for the Kubernetes API whose
controller runs each TrainJob as numNodes torchrun processes (tests/k8s_standin.py), and the TrainJobs and
TrainingRuntime the project writes validated against the Trainer's CRDs v2.1-v2.3 (tests/crds/)."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import pytest

from srlm import distributed, training, trainjob
from srlm.errors import SrlmError
from srlm.modeldir import check_model_dir, read_lineage

sys.path.insert(0, str(Path(__file__).parent))
from k8s_standin import StandIn, one, problems, rendered_trainer_manifests, schemas  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VERSIONS = ("2.1.0", "2.2.0", "2.3.0")
NAMESPACE = "kubeflow"


def job(name="srlm-sft-1-abc", **changes):
    return trainjob.manifest(name, "/models/run/request.json", image="ghcr.io/acme/srlm/srlm-sft:0.1.0", nodes=4,
                             nproc_per_node=8, resources_per_node={"limits": {"nvidia.com/gpu": 8}},
                             env={"HF_HOME": "/cache/huggingface"}, **changes)


# ---------------------------------------------------------------- what the project writes (fast)


@pytest.mark.parametrize("version", VERSIONS)
def test_trainjob_and_runtime_are_valid_on_every_supported_trainer_version(version):
    assert problems(job(), schemas(version)["TrainJob"]) is None
    runtime = one(rendered_trainer_manifests(), "TrainingRuntime")
    assert problems(runtime, schemas(version)["TrainingRuntime"]) is None
    bad = job()
    bad["spec"]["trainer"]["numProcsPerNode"] = 8  # a typo strict validation must catch
    assert problems(bad, schemas(version)["TrainJob"]) == (400, 'strict decoding error: unknown field "spec.trainer.numProcsPerNode"')
    wrong = job()
    wrong["spec"]["trainer"]["numNodes"] = "four"
    assert problems(wrong, schemas(version)["TrainJob"])[0] == 422


def test_the_runtime_gives_every_node_the_model_volume_shared_memory_and_no_token():
    objects = rendered_trainer_manifests()
    runtime = one(objects, "TrainingRuntime")
    assert runtime["metadata"] == {**runtime["metadata"], "name": trainjob.RUNTIME, "namespace": NAMESPACE}
    replicated = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    assert [r["name"] for r in replicated] == ["node"]
    pod = replicated[0]["template"]["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == [trainjob.CONTAINER]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "srlm-models"
    assert one(objects, "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteMany"]
    assert not pod["automountServiceAccountToken"] and pod["securityContext"]["runAsNonRoot"]
    assert runtime["spec"]["mlPolicy"]["torch"] == {}  # v2.2 declares no torch fields: the TrainJob sets the counts


def test_the_launcher_may_manage_trainjobs_and_read_their_logs_and_nothing_else():
    objects = rendered_trainer_manifests()
    role = one(objects, "Role")
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): set(r["verbs"]) for r in role["rules"]}
    assert rules == {(("trainer.kubeflow.org",), ("trainjobs",)): {"create", "get", "watch", "delete"},
                     (("",), ("pods",)): {"get", "list"}, (("",), ("pods/log",)): {"get"}}
    binding = one(objects, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "srlm-pipeline-runner", "namespace": NAMESPACE}]


def test_job_names_are_stable_across_retries_and_valid():
    first = trainjob.job_name("9f1c2b6e-5d2a-4c1e-8f3a-0b7e6d5c4a3b", "dpo", 2)
    assert first == trainjob.job_name("9f1c2b6e-5d2a-4c1e-8f3a-0b7e6d5c4a3b", "dpo", 2)
    assert first != trainjob.job_name("9f1c2b6e-5d2a-4c1e-8f3a-0b7e6d5c4a3b", "dpo", 3)
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", first) and len(first) <= 40


# ---------------------------------------------------------------- the launcher against the stand-in


@pytest.fixture
def api(tmp_path):
    with StandIn("2.3.0", tmp_path / "pods") as standin:
        standin.cluster.create("trainingruntimes", NAMESPACE, one(rendered_trainer_manifests(), "TrainingRuntime"),
                               strict=True)
        yield standin


def command_job(name, code):
    body = job(name)
    body["spec"]["trainer"].update(command=[sys.executable, "-c", code], numNodes=2, numProcPerNode=1)
    body["spec"]["trainer"].pop("resourcesPerNode")
    return body


def test_a_failing_job_fails_the_task_with_its_message_and_logs(api):
    out = io.StringIO()
    code = "import os, sys; print('rank', os.environ['PET_NODE_RANK'], 'of', os.environ['PET_NNODES']); sys.exit(3)"
    with pytest.raises(SrlmError, match=r"TrainJob srlm-fails failed: trainer node 0 exited with status 3"):
        trainjob.run(command_job("srlm-fails", code), NAMESPACE, timeout_s=60, poll_s=0.2, api_client=api.client, out=out)
    assert "[srlm-fails-node-0-0] rank 0 of 2" in out.getvalue() and "[srlm-fails-node-0-1] rank 1 of 2" in out.getvalue()
    assert ("trainjobs", NAMESPACE, "srlm-fails") not in api.cluster.objects  # deleted when over


def test_a_job_past_its_timeout_is_deleted_and_the_task_fails(api):
    with pytest.raises(SrlmError, match=r"TrainJob srlm-slow did not finish within 1.5 s; it was deleted"):
        trainjob.run(command_job("srlm-slow", "import time; time.sleep(120)"), NAMESPACE, timeout_s=1.5, poll_s=0.2,
                     api_client=api.client, out=io.StringIO())
    assert not api.cluster.objects.get(("trainjobs", NAMESPACE, "srlm-slow"))
    assert "srlm-slow" not in api.cluster.processes  # its nodes were stopped


def test_a_retry_finds_the_job_of_the_earlier_try_instead_of_starting_another(api):
    body = command_job("srlm-retry", "import time; time.sleep(1); print('trained once')")
    assert api.cluster.create("trainjobs", NAMESPACE, body, strict=True)[0] == 201  # the first try, then it died
    out = io.StringIO()
    finished = trainjob.run(body, NAMESPACE, timeout_s=60, poll_s=0.2, api_client=api.client, out=out)
    assert trainjob.finished(finished) == ("Complete", "all nodes succeeded")
    assert api.cluster.created == ["srlm-retry"] and "found from an earlier try" in out.getvalue()


def test_an_unknown_field_is_refused_not_dropped(api):
    body = command_job("srlm-typo", "print(1)")
    body["spec"]["trainer"]["numProcsPerNode"] = 2
    with pytest.raises(SrlmError, match=r'TrainJob srlm-typo: the Kubernetes API refused it \(400 .*\): strict decoding '
                                        r'error: unknown field "spec.trainer.numProcsPerNode"'):
        trainjob.run(body, NAMESPACE, timeout_s=60, poll_s=0.2, api_client=api.client, out=io.StringIO())
    assert api.cluster.created == []


@pytest.mark.slow
def test_seed_sft_on_two_nodes_through_a_trainjob(api, tiny_model, seed_dir, tmp_path):
    """The real work behind the stand-in: the TrainJob's torchrun command on 2 "nodes" trains the tiny model with the
    project's entry point, from a request in a directory every node sees (the shared volume's stand-in)."""
    config = training.SFTConfig.load("tiny", max_steps=4, logging_steps=1)
    shared = tmp_path / "models"
    shared.mkdir()
    out = shared / "m1"
    request = distributed.write_request(shared, {
        "stage": "sft", "model": str(tiny_model), "ift": str(seed_dir / "ift.jsonl"),
        "eft": str(seed_dir / "eft_train.jsonl"), "out": str(out), "config": config.to_dict()})
    body = trainjob.manifest(trainjob.job_name("run-1", "sft", 1), str(request), image="srlm-sft", nodes=2,
                             nproc_per_node=1, env={"OMP_NUM_THREADS": "1"})
    log = io.StringIO()
    trainjob.run(body, NAMESPACE, timeout_s=600, poll_s=0.5, api_client=api.client, out=log)
    metrics = distributed.read_result(shared, 0)
    assert metrics["processes"] == 2 and metrics["steps"] == 4
    check_model_dir(out)
    assert read_lineage(out)["metrics"]["processes"] == 2
    assert f"[{body['metadata']['name']}-node-0-1]" in log.getvalue()  # the second node's log reached the task log


@pytest.mark.slow
def test_a_training_stage_with_two_nodes_runs_as_a_trainjob(api, tiny_model, seed_dir, tmp_path, monkeypatch):
    """training.nodes = 2: run_sft stages its inputs under shared_dir, the TrainJob trains there, the model comes
    back to the stage's output; the launcher finds the API through a kubeconfig, as outside a cluster."""
    monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig(tmp_path / "kubeconfig", NAMESPACE)))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    shared = tmp_path / "models"
    config = training.SFTConfig.load("tiny", max_steps=4, logging_steps=1, nodes=2, shared_dir=str(shared),
                                     trainjob_image="srlm-sft", trainjob_namespace=NAMESPACE)
    out = tmp_path / "outputs" / "m1"
    metrics = training.run_sft(config, tiny_model, seed_dir / "ift.jsonl", out, eft=seed_dir / "eft_train.jsonl")
    assert metrics["processes"] == 2 and len(api.cluster.created) == 1
    check_model_dir(out)
    assert read_lineage(out)["metrics"]["processes"] == 2
    assert list(shared.iterdir()) == []  # the job's work directory (staged inputs, the model) is gone
    with pytest.raises(SrlmError, match="needs launcher trainjob"):
        training.SFTConfig.load("tiny", nodes=2, launcher="pod")
    with pytest.raises(SrlmError, match="a TrainJob needs shared_dir"):
        training.SFTConfig.load("tiny", nodes=2)
