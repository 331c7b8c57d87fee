"""The run context of a stage: where its MLflow child run goes, which KFP run and iteration it belongs to.

One value, passed to every step (``srlm.steps``) by the pipeline's components and by the CLI:

    RunContext.of({"experiment": "srlm", "model_name": "srlm"}, kfp_run_id="abc", iteration=2)
    RunContext()                       # by hand: MLflow off

``mlflow`` settings (the pipeline's ``mlflow`` parameter): ``enabled`` (default true),
``experiment``, ``model_name``, ``artifact_location`` (optional). Logging needs a KFP run id: the
pipeline run's parent MLflow run is found by it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from srlm.errors import SrlmError

MLFLOW_KEYS = ("enabled", "experiment", "model_name", "artifact_location")
# On a cluster the pipeline hands tasks their KFP run id through this variable (the pod's pipeline/runid label),
# not as an input, so that KFP's cache can reuse a deterministic task across runs.
RUN_ID_ENV = "KFP_RUN_ID"
MLFLOW_DEFAULTS = {"enabled": True, "experiment": "srlm", "model_name": "srlm"}


def check_mlflow(mlflow: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``mlflow`` settings with their defaults; SrlmError for an unknown key or an empty name."""
    if mlflow is None:
        return {"enabled": False}
    if not isinstance(mlflow, Mapping):
        raise SrlmError(f"mlflow: expected a mapping of settings, got {mlflow!r}")
    unknown = sorted(set(mlflow) - set(MLFLOW_KEYS))
    if unknown:
        raise SrlmError(f"mlflow: unknown key(s) {unknown}; known: {list(MLFLOW_KEYS)}")
    settings = {**MLFLOW_DEFAULTS, **mlflow}
    if settings["enabled"]:
        for key in ("experiment", "model_name"):
            if not str(settings.get(key) or "").strip():
                raise SrlmError(f"mlflow.{key} is empty")
    return settings


@dataclasses.dataclass(frozen=True)
class RunContext:
    mlflow: Mapping[str, Any] = dataclasses.field(default_factory=lambda: {"enabled": False})
    kfp_run_id: str = ""
    iteration: int | None = None

    @classmethod
    def of(cls, mlflow: Mapping[str, Any] | None, kfp_run_id: str = "", iteration: int | None = None) -> RunContext:
        return cls(check_mlflow(mlflow), kfp_run_id or os.environ.get(RUN_ID_ENV, ""), iteration)

    @property
    def tracking(self) -> bool:
        """Whether stages log to MLflow (then the KFP run id must be set)."""
        if not self.mlflow.get("enabled"):
            return False
        if not self.kfp_run_id:
            raise SrlmError("MLflow is enabled but the KFP run id is empty: the component passes it")
        return True

    @property
    def experiment(self) -> str:
        return self.mlflow["experiment"]

    @property
    def model_name(self) -> str:
        return self.mlflow["model_name"]

    def at(self, iteration: int | None) -> RunContext:
        """The same context for another iteration."""
        return dataclasses.replace(self, iteration=iteration)
