"""Compile-time settings of the pipeline: what is fixed in the YAML rather than passed per run.

Two profiles: ``CLUSTER`` (paper presets, a Hugging Face base model imported by URI, the EFT
build from OpenAssistant data, one GPU per GPU task, tolerations and a node selector, MLflow at
the in-cluster service) and ``TINY`` (tiny presets, the tiny model built in the pipeline,
bundled EFT data, no GPU requests, MLflow from the environment: the local run's SQLite store).
``python -m pipelines.compile --set key=value`` changes any field (values parsed as YAML), e.g.
``--set shards=4``: each round's sampling and judging run as 4 GPU tasks each plus a merge.

Run-time parameters (the settings groups of ``srlm.stages.GROUPS``, plus ``mlflow``) default to
``defaults`` below; a run can pass any group as JSON.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from kfp import kubernetes

from components.images import image
from srlm.context import RUN_ID_ENV
from srlm.resume import PROGRESS_ENV
from srlm.stages import GROUP_ORDER, RESOURCES, TASKS
from srlm.storage import MODES as MODEL_STORAGE

# What a task asks of the cluster (``resources`` of its stage in the registry); the GPU kinds get GPUs.
GPU_KINDS = tuple(kind for kind in RESOURCES if kind != "cpu")
RUN_ID_FIELD = "metadata.labels['pipeline/runid']"  # the label KFP puts on every pod of a run
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"  # per-GPU memory in MiB, set by NVIDIA's GPU feature discovery
MODELS_MOUNT = "/models"  # where models_pvc is mounted


def run_id(settings: PipelineSettings) -> Any:
    """What tasks get as their ``kfp_run_id`` input: the run id placeholder, or "" when it comes from the pod."""
    from kfp import dsl

    return dsl.PIPELINE_JOB_ID_PLACEHOLDER if settings.run_id_from == "input" else ""


@dataclasses.dataclass(frozen=True)
class PipelineSettings:
    name: str = "self-rewarding-lm"
    description: str = "Self-Rewarding Language Models: seed SFT, then DPO rounds on self-judged pairs, tracked in MLflow."
    iterations: int = 3  # M1..M<iterations>: the seed SFT plus iterations-1 DPO rounds
    base_model: str = "hf"  # tiny: build the tiny model in the pipeline; hf: import a model directory by URI
    eft_build: bool = True  # build EFT data with an IFT-only SFT baseline judging the seed's EFT pool
    shards: int = 1  # K: sampling and judging fan out over K GPU tasks each, then merge (same output for any K)
    defaults: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    accelerator_type: str = "nvidia.com/gpu"
    gpus: dict[str, int] = dataclasses.field(default_factory=lambda: {kind: 1 for kind in GPU_KINDS})
    # Per task kind (cpu, generation, training, evaluation): {"cpu": "8", "memory": "64Gi"} requests.
    requests: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    # GPU tasks land only on nodes whose GPUs have more than this much memory (MiB; the GPU feature discovery
    # label nvidia.com/gpu.memory), so an 8B task cannot land on a 24 GB card. 0 = any GPU.
    min_gpu_memory_mib: dict[str, int] = dataclasses.field(default_factory=dict)
    model_cache_pvc: str = ""  # mounted at /cache on GPU tasks (HF_HOME, compile caches): manifests/base/model-cache.yaml
    # Mounted at /models on training tasks: the RWX volume TrainJob nodes share (manifests/trainer/models-volume.yaml;
    # training.shared_dir: /models), and with model_storage pvc on every task that reads or writes a model. Empty = none.
    models_pvc: str = ""
    # Where the run's models live (srlm.storage). artifacts: in each KFP Model artifact, copied through the object
    # store by every stage (right for small models). workspace: written once on KFP's per-run pipeline workspace (an
    # RWX PVC KFP creates and deletes with the run; backend >= 2.15) and read in place; the base model is downloaded
    # there once. pvc: the same on models_pvc (at /models, under srlm-models/<run id>/; nothing deletes it). Either
    # way the registered models are copied to MLflow's artifact store: they leave the run.
    model_storage: str = "artifacts"
    workspace_size: str = "1Ti"  # the pipeline workspace's size (model_storage workspace): every M(t) of a run
    workspace_storage_class: str = ""  # its StorageClass (ReadWriteMany); "" = the cluster's default
    scratch: str = ""  # size of a per-pod scratch volume on GPU tasks at /scratch (TMPDIR): training work files
    # Size of the /dev/shm Memory volume on tasks with more than one GPU: NCCL between the training processes,
    # vLLM's tensor-parallel workers (a container's default /dev/shm is 64 MiB).
    shm: str = "16Gi"
    tolerations: tuple[dict[str, Any], ...] = ()
    node_selector: dict[str, str] = dataclasses.field(default_factory=dict)
    mlflow_tracking_uri: str = ""  # set as MLFLOW_TRACKING_URI on every task; "" = the environment's
    # the Secret (keys username, password) every task gets as MLFLOW_TRACKING_USERNAME/PASSWORD: the MLflow
    # server of manifests/ runs MLflow's basic-auth app; "" = no credentials (a local store, an open server)
    mlflow_credentials_secret: str = ""
    # KFP retries of a failed task (a preempted node, an evicted pod, a server that did not answer): every task but
    # validate, whose failures are the settings' own. Exponential backoff from retry_backoff, times retry_backoff_factor
    # per try, at most retry_backoff_max. A deterministic failure (a bad input) is retried too: KFP cannot tell.
    retries: int = 0
    retry_backoff: str = "60s"
    retry_backoff_factor: float = 2.0
    retry_backoff_max: str = "1h"
    env: dict[str, str] = dataclasses.field(default_factory=dict)  # more plain env vars (never secrets)
    secret_env: dict[str, Any] = dataclasses.field(default_factory=dict)  # {"secret": NAME, "keys": {KEY: ENV_VAR}}
    # Where a task learns its KFP run id (its MLflow parent run): "pod" = the pod's pipeline/runid label through
    # the downward API (KFP_RUN_ID), so the run id is no input and KFP's cache reuses a deterministic task across
    # runs; "input" = a task input (kfp.local has no pods; it has no cache either).
    run_id_from: str = "pod"

    def hardware(self) -> dict[str, dict[str, int]]:
        """What each GPU task kind gets, for validation's fit check: GPUs and the memory floor of each."""
        return {kind: {"gpus": self.gpus.get(kind, 0), "gpu_memory_mib": self.min_gpu_memory_mib.get(kind, 0)}
                for kind in GPU_KINDS}

    def model_volume(self) -> str:
        """What the tasks that read or write models get as ``model_volume``: where the models are stored."""
        from kfp import dsl

        return {"artifacts": "", "workspace": dsl.WORKSPACE_PATH_PLACEHOLDER, "pvc": MODELS_MOUNT}[self.model_storage]

    def pipeline_config(self) -> Any:
        """The pipeline's config: the per-run workspace (ReadWriteMany) when models are stored there."""
        from kfp import dsl

        if self.model_storage != "workspace":
            return None
        patch: dict[str, Any] = {"accessModes": ["ReadWriteMany"]}
        if self.workspace_storage_class:
            patch["storageClassName"] = self.workspace_storage_class
        return dsl.PipelineConfig(workspace=dsl.WorkspaceConfig(
            size=self.workspace_size, kubernetes=dsl.KubernetesWorkspaceConfig(pvcSpecPatch=patch)))

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0, not {self.retries}")
        if self.model_storage not in MODEL_STORAGE:
            raise ValueError(f"model_storage must be one of {list(MODEL_STORAGE)}, got {self.model_storage!r}")
        if self.model_storage == "pvc" and not self.models_pvc:
            raise ValueError("model_storage pvc needs models_pvc, the ReadWriteMany claim to store the models on")
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if isinstance(self.shards, bool) or not isinstance(self.shards, int) or self.shards < 1:
            raise ValueError(f"shards must be an integer >= 1, got {self.shards!r}")
        if self.run_id_from not in ("pod", "input"):
            raise ValueError(f"run_id_from must be pod or input, got {self.run_id_from!r}")
        if self.base_model not in ("tiny", "hf"):
            raise ValueError(f"base_model must be tiny or hf, got {self.base_model!r}")
        unknown = sorted(set(self.gpus) - set(GPU_KINDS))
        if unknown:
            raise ValueError(f"gpus: unknown task kind(s) {unknown}; known: {list(GPU_KINDS)}")
        for name, table in (("requests", self.requests), ("min_gpu_memory_mib", self.min_gpu_memory_mib)):
            unknown = sorted(set(table) - set(RESOURCES))
            if unknown:
                raise ValueError(f"{name}: unknown task kind(s) {unknown}; known: {list(RESOURCES)}")
        for kind, request in self.requests.items():
            if set(request) - {"cpu", "memory"}:
                raise ValueError(f"requests.{kind}: only cpu and memory, got {sorted(request)}")
        for key in self.env:
            if any(word in key.upper() for word in ("SECRET", "PASSWORD", "TOKEN", "KEY")):
                raise ValueError(f"env {key}: put credentials in a Kubernetes secret (secret_env), not in the YAML")
        if self.secret_env and not ({"secret", "keys"} <= set(self.secret_env)):
            raise ValueError("secret_env needs 'secret' (the Kubernetes secret name) and 'keys' ({secret key: env var})")

    def replace(self, **changes: Any) -> PipelineSettings:
        return dataclasses.replace(self, **changes)


GROUPS = (*GROUP_ORDER, "mlflow")

CLUSTER = PipelineSettings(
    defaults={
        "base_model": {"uri": ""},
        "data": {"preset": "paper", "seed": {"source": "OpenAssistant/oasst1"}},
        "sampling": {"preset": "paper"},
        "judging": {"preset": "paper"},
        "training": {"preset": "paper"},
        "evaluation": {"preset": "paper"},
        "mlflow": {"enabled": True, "experiment": "self-rewarding-lm", "model_name": "srlm"},
    },
    # Sized for a 7-8B model (the paper preset): loading bf16 weights takes 16 GB of host memory, training
    # with AdamW states much more; generation needs 40+ GB GPUs, full-parameter training 80 GB ones.
    requests={"cpu": {"cpu": "1", "memory": "4Gi"}, "generation": {"cpu": "8", "memory": "64Gi"},
              "evaluation": {"cpu": "8", "memory": "64Gi"}, "training": {"cpu": "16", "memory": "192Gi"}},
    min_gpu_memory_mib={"generation": 40000, "evaluation": 40000, "training": 70000},
    model_cache_pvc="srlm-model-cache",
    scratch="200Gi",
    tolerations=({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},),
    node_selector={"nvidia.com/gpu.present": "true"},
    mlflow_tracking_uri="http://mlflow.srlm.svc.cluster.local:5000",
    mlflow_credentials_secret="srlm-mlflow-client",
    retries=2,
)

TINY = PipelineSettings(
    name="self-rewarding-lm-tiny",
    description="Self-Rewarding Language Models on a tiny locally built model (CPU, minutes; numbers mean nothing).",
    base_model="tiny",
    eft_build=False,
    defaults={
        "base_model": {"preset": "tiny"},
        "data": {"preset": "tiny"},
        "sampling": {"preset": "tiny"},
        "judging": {"preset": "tiny"},
        "training": {"preset": "tiny"},
        "evaluation": {"preset": "tiny", "benchmarks": ["alpaca_eval", "mt_bench", "ifeval"]},
        "mlflow": {"enabled": True, "experiment": "srlm-demo", "model_name": "srlm-tiny"},
    },
    gpus={kind: 0 for kind in GPU_KINDS},
    run_id_from="input",
)

PROFILES = {"cluster": CLUSTER, "tiny": TINY}


def configure(task: Any, stage: str, settings: PipelineSettings, display_name: str) -> Any:
    """Display name, caching and GPU request (from the stage's registry entry), tolerations, node selector
    and MLflow env (from ``settings``) for one task."""
    if stage not in TASKS:
        raise KeyError(f"unknown stage {stage!r}; known: {sorted(TASKS)}")
    task.set_display_name(display_name)
    if settings.retries and stage != "validate":
        task.set_retry(num_retries=settings.retries, backoff_duration=settings.retry_backoff,
                       backoff_factor=settings.retry_backoff_factor, backoff_max_duration=settings.retry_backoff_max)
    # A stored model's artifact is only a reference to a volume the next run may not have: such tasks run again.
    task.set_caching_options(TASKS[stage].cached and not (TASKS[stage].writes_model and settings.model_volume()))
    if settings.run_id_from == "pod":
        kubernetes.use_field_path_as_env(task, env_name=RUN_ID_ENV, field_path=RUN_ID_FIELD)
    kind = TASKS[stage].resources
    request = settings.requests.get(kind, {})
    if "cpu" in request:
        task.set_cpu_request(request["cpu"])
    if "memory" in request:
        task.set_memory_request(request["memory"])
    gpus = settings.gpus.get(kind, 0)
    if gpus:
        task.set_accelerator_type(settings.accelerator_type).set_accelerator_limit(gpus)
        for toleration in settings.tolerations:
            kubernetes.add_toleration(task, **toleration)
        for key, value in sorted(settings.node_selector.items()):
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        if settings.min_gpu_memory_mib.get(kind):
            kubernetes.add_node_affinity(task, match_expressions=[
                {"key": GPU_MEMORY_LABEL, "operator": "Gt", "values": [str(settings.min_gpu_memory_mib[kind])]}])
        if settings.model_cache_pvc:
            kubernetes.mount_pvc(task, pvc_name=settings.model_cache_pvc, mount_path="/cache")
            # the saved progress of a long stage (srlm.resume) outlives the pod there: a retry continues from it
            task.set_env_variable(PROGRESS_ENV, "/cache")
        if gpus > 1 and settings.shm:
            kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                                       size_limit=settings.shm)
        if settings.scratch:
            kubernetes.add_ephemeral_volume(task, volume_name="scratch", mount_path="/scratch",
                                            access_modes=["ReadWriteOnce"], size=settings.scratch)
            task.set_env_variable("TMPDIR", "/scratch")
    if settings.models_pvc and (kind == "training" or (settings.model_storage == "pvc" and TASKS[stage].uses_models)):
        kubernetes.mount_pvc(task, pvc_name=settings.models_pvc, mount_path=MODELS_MOUNT)
    task.set_env_variable("SRLM_IMAGE", image(stage))  # a training stage's TrainJob nodes run the same image
    if settings.mlflow_tracking_uri:
        task.set_env_variable("MLFLOW_TRACKING_URI", settings.mlflow_tracking_uri)
    for key, value in sorted(settings.env.items()):
        task.set_env_variable(key, value)
    if settings.mlflow_credentials_secret:
        kubernetes.use_secret_as_env(task, secret_name=settings.mlflow_credentials_secret, secret_key_to_env={
            "username": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD"})
    if settings.secret_env:
        kubernetes.use_secret_as_env(task, secret_name=settings.secret_env["secret"],
                                     secret_key_to_env=dict(settings.secret_env["keys"]),
                                     optional=bool(settings.secret_env.get("optional", False)))
    return task
