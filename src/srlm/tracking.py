"""MLflow tracking: one experiment per pipeline, a parent run per pipeline run, a child run per stage.

The model registry (every M(t) a version of one registered model) is ``srlm.model_registry``; the
promotion rule, a pure policy, is ``srlm.promotion``.

Tracking URI
    ``MLFLOW_TRACKING_URI`` (cluster: the tracking server from ``manifests/``; local: a SQLite
    file, ``sqlite:////abs/path/mlflow.db``). The registry is the tracking URI's (or
    ``MLFLOW_REGISTRY_URI``). Every function checks the store once per process with
    :func:`check_reachable` (one ``/health`` request) before using it, so an unreachable server is
    one clear error, not minutes of MLflow's HTTP retries.

Runs
    :func:`pipeline_run` gets or creates the parent run of a KFP run (tags ``kfp_run_id=<id>``,
    ``srlm.kind=pipeline``); :func:`log_stage` adds a child run (``mlflow.parentRunId``, tags
    ``stage``, ``iteration``, ``kfp_run_id``) with flattened params (``{"a": {"b": 1}}`` ->
    ``a.b``), numeric metrics only (``None``, booleans, strings and lists are skipped; nested dicts
    flattened) and small artifact files. On a local store the experiment always gets an explicit
    artifact location (default: ``mlartifacts/`` next to the SQLite file), never ``./mlruns``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from srlm.errors import SrlmError
from srlm.metrics import flatten, metric_key, numeric_metrics
from srlm.secrets import redact_params, redact_text

log = logging.getLogger(__name__)

ENV_URI = "MLFLOW_TRACKING_URI"
PIPELINE_KIND = "pipeline"
STAGE_KIND = "stage"
KIND_TAG = "srlm.kind"
MAX_ARTIFACT_BYTES = 50 * 1024 * 1024

MAX_PARAM = 6000
MAX_TAG = 5000


# --------------------------------------------------------------------------- URI and store


def tracking_uri() -> str:
    """The tracking URI from ``MLFLOW_TRACKING_URI``; SrlmError when it is not set."""
    uri = os.environ.get(ENV_URI, "").strip()
    if not uri:
        raise SrlmError(
            f"{ENV_URI} is not set; point it at the MLflow tracking server (http://host:5000) "
            "or a local store (sqlite:////abs/path/mlflow.db)"
        )
    return uri


def is_http(uri: str) -> bool:
    return uri.lower().startswith(("http://", "https://"))


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:"):
        return None
    rest = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
    rest = rest.split("?", 1)[0]
    if not rest or rest == ":memory:":
        raise SrlmError(f"{uri}: not a SQLite file URI; use sqlite:////abs/path/mlflow.db")
    return Path(rest)


def _file_store_path(uri: str) -> Path | None:
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        return Path(urllib.parse.unquote(parsed.path))
    if parsed.scheme == "" and uri and not uri.startswith("databricks"):
        return Path(uri)
    return None


def check_reachable(uri: str | None = None, timeout: float = 10.0) -> None:
    """Fail fast with SrlmError naming ``uri`` when the store cannot be used.

    http(s): ``GET <uri>/health`` must answer 200 within ``timeout`` seconds. SQLite: the file
    must open as a database (or, when it does not exist yet, its directory must be writable).
    File store: the directory must exist or be creatable. Database URLs (postgresql://, ...):
    a connection is opened with SQLAlchemy. Other schemes are not checked.
    """
    uri = uri or tracking_uri()
    if is_http(uri):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                status = response.status
        except urllib.error.HTTPError as e:
            status = e.code
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise SrlmError(f"MLflow tracking server {redact_text(uri)} does not answer ({reason}); is it running and reachable?") from None
        if status != 200:
            raise SrlmError(f"MLflow tracking server {redact_text(uri)} answered HTTP {status} on /health; is this an MLflow server?")
        return
    sqlite_path = _sqlite_path(uri)
    if sqlite_path is not None:
        _check_sqlite(uri, sqlite_path, timeout)
        return
    file_path = _file_store_path(uri)
    if file_path is not None:
        existing = next((p for p in (file_path, *file_path.parents) if p.exists()), None)
        if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK):
            raise SrlmError(f"MLflow store {uri} cannot be opened: {existing or file_path} is not a writable directory")
        return
    scheme = urllib.parse.urlparse(uri).scheme.split("+", 1)[0]
    if scheme in ("postgresql", "mysql", "mssql"):
        try:
            import sqlalchemy

            args = {"connect_timeout": max(1, int(timeout))} if scheme in ("postgresql", "mysql") else {}
            engine = sqlalchemy.create_engine(uri, connect_args=args)
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT 1"))
            engine.dispose()
        except Exception as e:  # driver errors vary
            raise SrlmError(f"MLflow store {redact_text(uri)} cannot be opened: {type(e).__name__}: {str(e).splitlines()[0]}") from None


def _check_sqlite(uri: str, path: Path, timeout: float) -> None:
    import sqlite3

    if path.exists():
        try:
            conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=timeout)
            try:
                conn.execute("PRAGMA schema_version").fetchone()
            finally:
                conn.close()
        except sqlite3.Error as e:
            raise SrlmError(f"MLflow store {uri} cannot be opened: {path}: {e}") from None
        return
    parent = path.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise SrlmError(f"MLflow store {uri} cannot be opened: directory {parent} does not exist or is not writable")


_REACHED: set[str] = set()


def mlflow_client(uri: str | None = None):
    """An MlflowClient for ``uri``; the store is checked once per process first (fail fast)."""
    from mlflow.tracking import MlflowClient

    uri = uri or tracking_uri()
    if uri not in _REACHED:
        check_reachable(uri)
        _REACHED.add(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=os.environ.get("MLFLOW_REGISTRY_URI") or uri)


@contextlib.contextmanager
def mlflow_errors(what: str) -> Iterator[None]:
    """Turn MLflow's exceptions into one-line SrlmErrors that name the store."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as e:
        message = " ".join(str(e.message).split())
        if len(message) > 600:
            message = message[:600] + " ..."
        hint = ""
        if "error code 401" in message or error_code(e) == "UNAUTHENTICATED":
            who = os.environ.get("MLFLOW_TRACKING_USERNAME")
            hint = (f" (the server refused user {who!r}: check MLFLOW_TRACKING_PASSWORD" if who else
                    " (the server asks for credentials: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
            hint += "; on the cluster they come from the srlm-mlflow-client Secret)"
        elif "error code 403" in message or error_code(e) == "PERMISSION_DENIED":
            hint = (f" (user {os.environ.get('MLFLOW_TRACKING_USERNAME')!r} lacks the permission: an MLflow admin "
                    "grants it, see manifests/README.md)")
        raise SrlmError(f"MLflow ({redact_text(tracking_uri())}): {what}: {message}{hint}") from None


def error_code(e: Exception) -> str:
    return str(getattr(e, "error_code", ""))


# --------------------------------------------------------------------------- flattening


def as_text(value: Any, limit: int) -> str:
    if isinstance(value, (list, tuple)):
        text = json.dumps(list(value), default=str, ensure_ascii=False)
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def flatten_params(params: Mapping[str, Any] | None) -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``; lists as JSON; long values truncated; secrets masked
    (``srlm.secrets``)."""
    return redact_params({metric_key(k): as_text(v, MAX_PARAM) for k, v in flatten(params or {}).items()})


# --------------------------------------------------------------------------- runs


def ensure_experiment(name: str, artifact_location: str | None = None) -> str:
    """The id of experiment ``name``, created when missing (restored when deleted).

    ``artifact_location`` is used when creating it. On a local store without one, the location
    is ``mlartifacts/`` next to the SQLite file (or inside the file store), never ``./mlruns``.
    On a server without one, the server's default (proxied) root is used.
    """
    if not name or not name.strip():
        raise SrlmError("MLflow experiment name is empty")
    uri = tracking_uri()
    if artifact_location is None:
        artifact_location = _default_artifact_location(uri)
    elif "://" not in artifact_location and not artifact_location.startswith(("mlflow-artifacts:", "runs:")):
        artifact_location = Path(artifact_location).resolve().as_uri()
    client = mlflow_client(uri)
    with mlflow_errors(f"experiment {name!r}"):
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            from mlflow.exceptions import MlflowException

            try:
                return client.create_experiment(name, artifact_location=artifact_location)
            except MlflowException as e:  # created concurrently by another task
                if error_code(e) != "RESOURCE_ALREADY_EXISTS":
                    raise
                experiment = client.get_experiment_by_name(name)
                if experiment is None:
                    raise
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        if artifact_location and experiment.artifact_location.rstrip("/") != artifact_location.rstrip("/"):
            log.info("experiment %r keeps its artifact location %s", name, experiment.artifact_location)
        return experiment.experiment_id


def _default_artifact_location(uri: str) -> str | None:
    sqlite_path = _sqlite_path(uri)
    if sqlite_path is not None:
        return (sqlite_path.resolve().parent / "mlartifacts").as_uri()
    file_path = _file_store_path(uri)
    if file_path is not None:
        return (file_path.resolve() / "mlartifacts").as_uri()
    return None


def _find_pipeline_runs(client, experiment_id: str, kfp_run_id: str) -> list:
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.kfp_run_id = '{_quote(kfp_run_id)}' and tags.`{KIND_TAG}` = '{PIPELINE_KIND}'",
        max_results=50,
    )
    return sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))


def _stage_runs(experiment: str, kfp_run_id: str, condition: str = "") -> list:
    """The stage (child) runs of KFP run ``kfp_run_id`` meeting ``condition`` (an MLflow filter), oldest first."""
    with mlflow_errors(f"stage runs of KFP run {kfp_run_id}"):
        runs = mlflow_client().search_runs(
            [ensure_experiment(experiment)],
            filter_string=(f"tags.kfp_run_id = '{_quote(kfp_run_id)}' and tags.`{KIND_TAG}` = '{STAGE_KIND}'"
                           + (f" and {condition}" if condition else "")),
            max_results=5000,
        )
    return sorted(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))


def stage_runs(experiment: str, kfp_run_id: str, stage: str) -> dict[int, Any]:
    """The finished child runs of ``stage`` in KFP run ``kfp_run_id``, by iteration (a retried task: its newest)."""
    runs = _stage_runs(experiment, kfp_run_id, f"tags.stage = '{_quote(stage)}' and attributes.status = 'FINISHED'")
    return {int(r.data.tags["iteration"]): r for r in runs if r.data.tags.get("iteration", "").isdigit()}


def pipeline_params(experiment: str, kfp_run_id: str) -> dict[str, str]:
    """The parent run's params (the run's settings groups, flattened, as the validate step logged them)."""
    client = mlflow_client()
    with mlflow_errors(f"parent run of KFP run {kfp_run_id}"):
        return dict(client.get_run(pipeline_run(experiment, kfp_run_id)).data.params)


def _quote(value: str) -> str:
    if "'" in value:
        raise SrlmError(f"{value!r}: quotes are not allowed in a KFP run id")
    return value


def pipeline_run(experiment: str, kfp_run_id: str, params: dict | None = None) -> str:
    """Get or create the parent run of KFP run ``kfp_run_id`` in ``experiment``; its run id.

    Idempotent: the run is found by its tags. ``params`` are logged (flattened); on an existing
    run only the ones not logged yet are added (a different value for a logged one is skipped
    with a warning: MLflow params cannot change). Two tasks racing to create it settle on the
    earliest run (the later one is deleted); the pipeline's first step creates it anyway.
    """
    if not kfp_run_id:
        raise SrlmError("the KFP run id is empty")
    from mlflow.entities import Param

    experiment_id = ensure_experiment(experiment)
    client = mlflow_client()
    with mlflow_errors(f"parent run of KFP run {kfp_run_id}"):
        runs = _find_pipeline_runs(client, experiment_id, kfp_run_id)
        if runs:
            run = runs[0]
        else:
            created = client.create_run(
                experiment_id,
                tags={"kfp_run_id": kfp_run_id, KIND_TAG: PIPELINE_KIND},
                run_name=f"kfp-{kfp_run_id}",
            )
            runs = _find_pipeline_runs(client, experiment_id, kfp_run_id)
            run = runs[0] if runs else created
            if run.info.run_id != created.info.run_id:
                client.delete_run(created.info.run_id)
        flat = flatten_params(params)
        if flat:
            logged = client.get_run(run.info.run_id).data.params
            for key in sorted(k for k in flat if k in logged and logged[k] != flat[k]):
                log.warning("parent run %s: param %s stays %r (not %r)", run.info.run_id, key, logged[key], flat[key])
            _log_batch(client, run.info.run_id, params=[Param(k, v) for k, v in flat.items() if k not in logged])
        return run.info.run_id


def end_pipeline_run(experiment: str, kfp_run_id: str, status: str = "FINISHED", tags: dict | None = None) -> str:
    """Mark the parent run finished (or ``FAILED``/``KILLED``), with ``tags``; returns its run id."""
    run_id = pipeline_run(experiment, kfp_run_id)
    with mlflow_errors(f"ending parent run {run_id}"):
        client = mlflow_client()
        for key, value in (tags or {}).items():
            client.set_tag(run_id, key, as_text(value, MAX_TAG))
        _terminate(client, run_id, status)
    return run_id


def log_stage_failure(experiment: str, kfp_run_id: str, stage: str, error: BaseException,
                      iteration: int | None = None) -> str:
    """A FAILED child run for a stage that raised: the run's exit handler names it, the MLflow UI shows why."""
    client = mlflow_client()
    tags, name = _stage_run(experiment, kfp_run_id, stage, iteration)
    tags["srlm.error"] = as_text(redact_text(f"{type(error).__name__}: {error}"), MAX_TAG)
    with mlflow_errors(f"stage run {name} of KFP run {kfp_run_id}"):
        run_id = client.create_run(ensure_experiment(experiment), tags=tags, run_name=name).info.run_id
        _terminate(client, run_id, "FAILED")
    return run_id


def failed_stages(experiment: str, kfp_run_id: str) -> list[dict[str, str]]:
    """The stages of KFP run ``kfp_run_id`` that logged a failure and did not finish on a retry, oldest first:
    name, iteration, error."""
    runs = _stage_runs(experiment, kfp_run_id)
    place = [(r.data.tags.get("stage", "?"), r.data.tags.get("iteration", "")) for r in runs]
    finished = {p for p, r in zip(place, runs) if r.info.status == "FINISHED"}
    return [{"stage": stage, "iteration": iteration, "error": r.data.tags.get("srlm.error", "")}
            for (stage, iteration), r in zip(place, runs)
            if r.info.status == "FAILED" and (stage, iteration) not in finished]


def _log_batch(client, run_id: str, metrics: list | None = None, params: list | None = None) -> None:
    metrics, params = metrics or [], params or []
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i : i + 100])
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i : i + 1000])


def log_stage(
    experiment: str,
    kfp_run_id: str,
    stage: str,
    params: dict,
    metrics: dict,
    artifacts: dict[str, str] | None = None,
    iteration: int | None = None,
    *,
    max_artifact_bytes: int = MAX_ARTIFACT_BYTES,
) -> str:
    """Log one stage as a child run of the pipeline's parent run; returns the child run id.

    ``params`` are flattened and stringified; ``metrics`` keep their numeric entries (flattened).
    ``artifacts`` maps a name inside the run's artifacts to a local file (stored under exactly
    that name, e.g. ``{"report.md": "/out/report.md"}``) or directory (its files under that
    name). Artifacts are for small files (reports, samples): each over ``max_artifact_bytes``
    is refused, and nothing is logged when an artifact is missing.
    """
    from mlflow.entities import Metric, Param

    checked = _check_artifacts(artifacts or {}, max_artifact_bytes)
    client = mlflow_client()
    experiment_id = ensure_experiment(experiment)
    tags, name = _stage_run(experiment, kfp_run_id, stage, iteration)
    now = int(time.time() * 1000)
    with mlflow_errors(f"stage run {name} of KFP run {kfp_run_id}"):
        run = client.create_run(experiment_id, tags=tags, run_name=name)
        run_id = run.info.run_id
        try:
            _log_batch(
                client,
                run_id,
                params=[Param(k, v) for k, v in flatten_params(params).items()],
                metrics=[Metric(k, v, now, 0) for k, v in numeric_metrics(metrics).items()],
            )
            for dest, src in checked:
                _log_artifact(client, run_id, dest, src)
        except BaseException:
            _terminate(client, run_id, "FAILED")
            raise
        _terminate(client, run_id, "FINISHED")
    return run_id


def _stage_run(experiment: str, kfp_run_id: str, stage: str, iteration: int | None) -> tuple[dict[str, str], str]:
    """The tags and name of a stage's child run under the pipeline's parent run."""
    tags = {"mlflow.parentRunId": pipeline_run(experiment, kfp_run_id), "kfp_run_id": kfp_run_id, "stage": stage,
            KIND_TAG: STAGE_KIND}
    if iteration is None:
        return tags, stage
    return {**tags, "iteration": str(iteration)}, f"iter{iteration}-{stage}"


def _terminate(client, run_id: str, status: str) -> None:
    # MLflow prints "View run ... at" links on stdout for a server; keep stdout for JSON results.
    with contextlib.redirect_stdout(sys.stderr):
        client.set_terminated(run_id, status=status)


def _check_artifacts(artifacts: Mapping[str, str], limit: int) -> list[tuple[str, Path]]:
    checked = []
    for dest, src in artifacts.items():
        path = Path(src)
        dest = str(dest).strip("/")
        if not dest or ".." in dest.split("/"):
            raise SrlmError(f"artifact name {dest!r} for {path}: give a relative name like 'report.md'")
        if not path.exists():
            raise SrlmError(f"{path}: artifact {dest!r} not found")
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for f in files:
            if f.stat().st_size > limit:
                raise SrlmError(
                    f"{f}: {f.stat().st_size} bytes is too large for a stage artifact (limit {limit}); "
                    "register models with register_model instead"
                )
        checked.append((dest, path))
    return checked


def _log_artifact(client, run_id: str, dest: str, src: Path) -> None:
    if src.is_dir():
        client.log_artifacts(run_id, str(src), artifact_path=dest)
        return
    directory, _, filename = dest.rpartition("/")
    if filename == src.name:
        client.log_artifact(run_id, str(src), artifact_path=directory or None)
        return
    with tempfile.TemporaryDirectory(prefix="srlm-artifact-") as tmp:
        copy = Path(tmp) / filename
        shutil.copyfile(src, copy)
        client.log_artifact(run_id, str(copy), artifact_path=directory or None)
