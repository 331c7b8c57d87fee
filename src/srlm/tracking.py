"""MLflow helpers: one experiment per pipeline, a parent run per pipeline run, a child run per
stage, every M(t) a version of one registered model, and an explicit promotion rule.

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

Registry: by reference
    :func:`register_model` creates a version whose ``source`` is the model's artifact URI; the
    weights are not copied. What a source may be depends on the store:

    * SQLite/file store (the embedded default): any local directory (plain path or ``file://``).
    * Tracking server (``http(s)://``): only URIs the server accepts, checked by the server
      (MLflow 3.17.2, ``server/handlers.py``):

      - object-store URIs: ``s3://bucket/key`` (KFP on a cluster: the ``Model`` artifact's
        ``.uri``), ``gs://``, ... - accepted as they are, no ``run_id`` needed. KFP's default
        MinIO store writes ``minio://bucket/key``; it is registered as ``s3://bucket/key`` (the
        same object through MinIO's S3 API; set ``MLFLOW_S3_ENDPOINT_URL`` to load it) and the
        original URI is kept in the tag ``kfp_artifact_uri``;
      - ``runs:/<run_id>/<path>``: accepted when ``run_id`` is that run (taken from the URI when
        not given);
      - ``mlflow-artifacts:/<...>/<run_id>/artifacts/<path>`` (the run's artifact URI with
        ``--serve-artifacts``): accepted when it lies inside the artifact root of ``run_id``
        (taken from the URI when not given);
      - a local path or ``file://`` URI: refused (unless the run's own artifact root is a local
        directory on the server and the path lies inside it). ``register_model`` then raises
        SrlmError, or with ``upload_local=True`` copies the directory into the run's artifacts
        and registers ``runs:/<run_id>/<artifact_path>`` (a real copy: only for small models).

    Tags on each version: ``iteration``, ``parent_version``, the caller's tags (data digests etc.;
    nested dicts flattened, values stringified), lineage read from a local model directory
    (``lineage.*``, ``data_digest.<name>``), and key metrics as ``metric.<key>``. The version gets
    the alias ``iter-<t>`` (aliases are unique per model: it moves to the newest M(t) registered).
    Registering the same source for the same iteration again returns the existing version
    (a retried KFP task does not add a duplicate).

Promotion rule (:class:`PromotionRule`, :func:`promote`)
    Aliases only (stages are deprecated). :func:`promote` sets ``challenger`` on the version
    considered (default: the newest) and moves ``champion`` to it only when the rule holds:

    1. No champion yet: the challenger becomes champion (nothing to compare against).
    2. The challenger is the champion already: nothing moves.
    3. Otherwise let W be the challenger's head-to-head win rate against the current champion,
       for ``metric`` = ``adjusted_win_rate`` ((wins + ties/2) / prompts, the default: 0.5 means
       "as good as") or ``win_rate`` (wins / prompts), taken from the first of

       - ``<metric>_vs_champion`` in the ``metrics=`` argument (measured just now, against the
         current champion);
       - ``<metric>_vs_v<N>`` where N is the champion's version (measured against exactly it);
       - ``<metric>_vs_previous`` when the champion is the challenger's parent (its
         ``parent_version`` tag is the champion's version), as every iteration measures M(t) vs
         M(t-1).

       Promote when **W >= min_win_rate** (default 0.5) **and** the challenger's RM metric
       (``rm_metric``, default ``pairwise_accuracy``; higher is better) is **not lower than the
       champion's by more than rm_tolerance** (absolute, default 0.02). ``rm_metric=""`` drops
       the RM check.

    Metrics are read from the versions' tags ``metric.<key>``; the ``metrics=`` argument adds the
    challenger's fresh ones (overriding its tags) and is recorded as tags on it. A
    ``<metric>_vs_champion`` value is never stored under that name (it would go stale when the
    champion moves): :func:`register_model` and :func:`promote` store it as ``<metric>_vs_v<N>``
    for the champion N of that moment (and drop it when there is no champion). When a metric the
    rule needs is missing on either side, :func:`promote` raises SrlmError naming what is missing
    and changes nothing (with ``require_metrics=False`` instead: no promotion, the reason says
    what is missing, ``challenger`` is set). An unknown metric name is rejected when the rule is
    built (:meth:`PromotionRule.validate`). The decision is written on the challenger as tags
    ``promotion.promoted`` / ``promotion.reason``. :func:`head_to_head_metrics` turns an
    ``srlm winrate`` result (A = challenger) into these metric keys.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
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

from srlm.config import StageConfig, setting
from srlm.errors import SrlmError
from srlm.metrics import RM_METRICS, WIN_METRICS, flatten, metric_key, numeric_metrics
from srlm.modeldir import read_lineage

log = logging.getLogger(__name__)

ENV_URI = "MLFLOW_TRACKING_URI"
PIPELINE_KIND = "pipeline"
STAGE_KIND = "stage"
KIND_TAG = "srlm.kind"
CHAMPION = "champion"
CHALLENGER = "challenger"
METRIC_TAG_PREFIX = "metric."
MAX_ARTIFACT_BYTES = 50 * 1024 * 1024

_ALIAS_RE = re.compile(r"^[\w\-]*$")
_RUN_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_MAX_PARAM = 6000
_MAX_TAG = 5000


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


def _is_http(uri: str) -> bool:
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
    if _is_http(uri):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                status = response.status
        except urllib.error.HTTPError as e:
            status = e.code
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise SrlmError(f"MLflow tracking server {_redact(uri)} does not answer ({reason}); is it running and reachable?") from None
        if status != 200:
            raise SrlmError(f"MLflow tracking server {_redact(uri)} answered HTTP {status} on /health; is this an MLflow server?")
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
            raise SrlmError(f"MLflow store {_redact(uri)} cannot be opened: {type(e).__name__}: {str(e).splitlines()[0]}") from None


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


def _redact(uri: str) -> str:
    parsed = urllib.parse.urlparse(uri)
    if parsed.password:
        return uri.replace(f":{parsed.password}@", ":***@")
    return uri


_REACHED: set[str] = set()


def _client(uri: str | None = None):
    """An MlflowClient for ``uri``; the store is checked once per process first (fail fast)."""
    from mlflow.tracking import MlflowClient

    uri = uri or tracking_uri()
    if uri not in _REACHED:
        check_reachable(uri)
        _REACHED.add(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=os.environ.get("MLFLOW_REGISTRY_URI") or uri)


@contextlib.contextmanager
def _mlflow_errors(what: str) -> Iterator[None]:
    """Turn MLflow's exceptions into one-line SrlmErrors that name the store."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as e:
        message = " ".join(str(e.message).split())
        if len(message) > 600:
            message = message[:600] + " ..."
        raise SrlmError(f"MLflow ({_redact(tracking_uri())}): {what}: {message}") from None


def _error_code(e: Exception) -> str:
    return str(getattr(e, "error_code", ""))


# --------------------------------------------------------------------------- flattening


def _as_text(value: Any, limit: int) -> str:
    if isinstance(value, (list, tuple)):
        text = json.dumps(list(value), default=str, ensure_ascii=False)
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def flatten_params(params: Mapping[str, Any] | None) -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``; lists as JSON; long values truncated."""
    return {metric_key(k): _as_text(v, _MAX_PARAM) for k, v in flatten(params or {}).items()}


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
    client = _client(uri)
    with _mlflow_errors(f"experiment {name!r}"):
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            from mlflow.exceptions import MlflowException

            try:
                return client.create_experiment(name, artifact_location=artifact_location)
            except MlflowException as e:  # created concurrently by another task
                if _error_code(e) != "RESOURCE_ALREADY_EXISTS":
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
    client = _client()
    with _mlflow_errors(f"parent run of KFP run {kfp_run_id}"):
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


def end_pipeline_run(experiment: str, kfp_run_id: str, status: str = "FINISHED") -> str:
    """Mark the parent run finished (or ``FAILED``/``KILLED``); returns its run id."""
    run_id = pipeline_run(experiment, kfp_run_id)
    with _mlflow_errors(f"ending parent run {run_id}"):
        _terminate(_client(), run_id, status)
    return run_id


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
    parent = pipeline_run(experiment, kfp_run_id)
    client = _client()
    experiment_id = ensure_experiment(experiment)
    tags = {
        "mlflow.parentRunId": parent,
        "kfp_run_id": kfp_run_id,
        "stage": stage,
        KIND_TAG: STAGE_KIND,
    }
    if iteration is not None:
        tags["iteration"] = str(iteration)
    name = f"iter{iteration}-{stage}" if iteration is not None else stage
    now = int(time.time() * 1000)
    with _mlflow_errors(f"stage run {name} of KFP run {kfp_run_id}"):
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


# --------------------------------------------------------------------------- registry


def _local_path(uri: str) -> Path | None:
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        return Path(urllib.parse.unquote(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        return Path(uri)
    return None


def _run_id_from_source(source: str) -> str | None:
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme == "runs":
        parts = parsed.path.strip("/").split("/")
        return parts[0] or None
    if parsed.scheme == "mlflow-artifacts" or "/mlflow-artifacts/artifacts/" in parsed.path:
        parts = parsed.path.strip("/").split("/")
        for i, part in enumerate(parts[:-1]):
            if _RUN_ID_RE.match(part) and parts[i + 1] == "artifacts":
                return part
    return None


def _validate_alias(alias: str) -> str:
    if not alias or not _ALIAS_RE.match(alias) or alias == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise SrlmError(f"{alias!r} is not a valid model alias (letters, digits, _ and -; not 'latest' or v<digits>)")
    return alias


def _existing_version(client, name: str, source: str, iteration: int):
    from mlflow.exceptions import MlflowException

    if "'" in source:
        return None
    try:
        versions = client.search_model_versions(f"name = '{name}' and source_path = '{source}'")
    except MlflowException:
        return None
    same = [v for v in versions if v.source == source and v.tags.get("iteration") == str(iteration)]
    return max(same, key=lambda v: int(v.version)) if same else None


def register_model(
    name: str,
    model_uri: str,
    iteration: int,
    *,
    run_id: str | None = None,
    parent_version: str | None = None,
    tags: dict | None = None,
    metrics: dict | None = None,
    lineage: dict | None = None,
    upload_local: bool = False,
    artifact_path: str = "model",
    description: str | None = None,
) -> str:
    """Register M(t) as a version of ``name`` by reference to ``model_uri``; returns the version.

    Creates the registered model when missing; the version's source is ``model_uri`` (a local
    path made absolute; ``minio://`` written as ``s3://``), no copy of the weights (see the module
    docstring for what a tracking server accepts). Tags: ``iteration``, ``parent_version``,
    ``tags`` (flattened, stringified), lineage (``lineage`` or, for a local directory, its
    ``srlm_lineage.json``), and ``metrics`` (numeric, as ``metric.<key>``). Sets alias
    ``iter-<iteration>``. ``upload_local=True``: through a tracking server, a local directory is
    copied into the artifacts of ``run_id`` under ``artifact_path`` and registered as
    ``runs:/<run_id>/<artifact_path>``.
    """
    if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0:
        raise SrlmError(f"iteration must be a whole number >= 0, not {iteration!r}")
    if not name or not name.strip():
        raise SrlmError("registered model name is empty")
    uri = tracking_uri()
    source, extra_tags = _resolve_source(model_uri)
    local = _local_path(source)
    if lineage is None and local is not None:
        lineage = read_lineage(local) if local.is_dir() else {}
    client = _client(uri)
    if local is not None and _is_http(uri):
        if not upload_local:
            raise SrlmError(
                f"{model_uri}: a tracking server ({uri}) does not accept a local path as a model version source; "
                "register the model's remote artifact URI (s3://..., or runs:/<run_id>/... of a run that logged it), "
                "or pass upload_local=True to copy it into the run's artifacts"
            )
        if not run_id:
            raise SrlmError(f"{model_uri}: upload_local needs the run_id of the run to copy the model into")
        with _mlflow_errors(f"uploading {local} to run {run_id}"):
            client.log_artifacts(run_id, str(local), artifact_path=artifact_path)
        extra_tags["uploaded_from"] = str(local)
        source = f"runs:/{run_id}/{artifact_path}"
    if run_id is None:
        run_id = _run_id_from_source(source)

    all_tags: dict[str, str] = {"iteration": str(iteration)}
    if parent_version is not None:
        all_tags["parent_version"] = str(parent_version)
    all_tags.update(extra_tags)
    all_tags.update(_lineage_tags(lineage or {}))
    all_tags.update({metric_key(k): _as_text(v, _MAX_TAG) for k, v in flatten(tags or {}).items()})
    alias = _validate_alias(f"iter-{iteration}")

    from mlflow.exceptions import MlflowException

    with _mlflow_errors(f"registering {source} as a version of model {name!r}"):
        try:
            client.create_registered_model(name, description="Self-Rewarding LM iterations M(t) (srlm)")
        except MlflowException as e:
            if _error_code(e) != "RESOURCE_ALREADY_EXISTS":
                raise
        key_metrics = numeric_metrics(metrics)
        if any(k.endswith("_vs_champion") for k in key_metrics):
            champion = _get_alias(client, name, CHAMPION)
            key_metrics = _pin_champion_metrics(key_metrics, str(champion.version) if champion else None)
        all_tags.update({METRIC_TAG_PREFIX + k: repr(v) for k, v in key_metrics.items()})
        existing = _existing_version(client, name, source, iteration)
        if existing is not None:
            version = existing.version
            for key, value in all_tags.items():
                if existing.tags.get(key) != value:
                    client.set_model_version_tag(name, version, key, value)
            log.info("model %s: %s is already version %s (iteration %d)", name, source, version, iteration)
        else:
            mv = client.create_model_version(
                name, source=source, run_id=run_id, tags=all_tags, description=description
            )
            version = mv.version
        client.set_registered_model_alias(name, alias, version)
    log.info("model %s version %s (iteration %d) <- %s", name, version, iteration, source)
    return str(version)


def _resolve_source(model_uri: str) -> tuple[str, dict[str, str]]:
    if not model_uri or not str(model_uri).strip():
        raise SrlmError("model URI is empty")
    model_uri = str(model_uri)
    parsed = urllib.parse.urlparse(model_uri)
    if parsed.scheme == "minio":
        return urllib.parse.urlunparse(parsed._replace(scheme="s3")), {"kfp_artifact_uri": model_uri}
    local = _local_path(model_uri)
    if local is not None:
        if not local.exists():
            raise SrlmError(f"{model_uri}: model directory not found")
        if parsed.scheme == "":
            return os.path.abspath(local), {}
    return model_uri, {}


def _lineage_tags(lineage: Mapping[str, Any]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for key in ("stage", "iteration", "parent", "parent_iteration", "created"):
        if lineage.get(key) is not None:
            tags[f"lineage.{key}"] = _as_text(lineage[key], _MAX_TAG)
    for data_name, digest in (lineage.get("data_digests") or {}).items():
        tags[f"data_digest.{metric_key(data_name)}"] = str(digest)
    return tags


# --------------------------------------------------------------------------- promotion


@dataclasses.dataclass
class PromotionRule(StageConfig):
    """When ``champion`` moves to the challenger (the exact rule: this module's docstring)."""

    metric: str = setting(
        "adjusted_win_rate",
        "head-to-head win-rate metric of the challenger against the champion: win_rate (wins / prompts) or "
        "adjusted_win_rate ((wins + ties/2) / prompts); read as <metric>_vs_champion (fresh), <metric>_vs_v<N> "
        "(N = the champion's version) or <metric>_vs_previous (when the champion is the challenger's parent)",
    )
    min_win_rate: float = setting(0.5, "promote only when the challenger's win rate against the champion is >= this")
    rm_metric: str = setting(
        "pairwise_accuracy",
        f"reward-model metric that must not drop ({', '.join(RM_METRICS)}; '' = no RM check)",
    )
    rm_tolerance: float = setting(0.02, "largest allowed drop of rm_metric from the champion's value (absolute)")
    require_metrics: bool = setting(
        True, "a missing metric is an error (false: no promotion, the reason says what is missing)"
    )

    def validate(self) -> None:
        if self.metric not in WIN_METRICS:
            raise SrlmError(f"unknown promotion metric {self.metric!r}; choose from {', '.join(WIN_METRICS)}")
        if self.rm_metric and self.rm_metric not in RM_METRICS:
            raise SrlmError(f"unknown RM metric {self.rm_metric!r}; choose from {', '.join(RM_METRICS)} (or '' for none)")
        if not 0.0 <= self.min_win_rate <= 1.0:
            raise SrlmError(f"min_win_rate must be within [0, 1] (a fraction, not a percentage), not {self.min_win_rate}")
        if self.rm_tolerance < 0:
            raise SrlmError(f"rm_tolerance must be >= 0, not {self.rm_tolerance}")


def head_to_head_metrics(winrate: Mapping[str, Any], against: str = "previous") -> dict[str, float]:
    """``srlm winrate`` stats (A = challenger) -> ``win_rate_vs_<against>``, ``adjusted_win_rate_vs_<against>``, ...

    ``against`` is ``previous`` (B was the challenger's parent) or ``champion`` (B was the
    current champion). Rates are fractions in [0, 1].
    """
    if not _ALIAS_RE.match(against) or not against:
        raise SrlmError(f"{against!r}: name what the challenger was compared against, e.g. previous or champion")
    try:
        n = int(winrate["prompts"])
        wins, ties, losses = (int(winrate[k]) for k in ("wins", "ties", "losses"))
    except (KeyError, TypeError, ValueError):
        raise SrlmError("win-rate result needs prompts, wins, ties and losses (from `srlm winrate`)") from None
    if n <= 0:
        raise SrlmError("win-rate result has 0 prompts: nothing to compare")
    return {
        f"win_rate_vs_{against}": wins / n,
        f"adjusted_win_rate_vs_{against}": (wins + 0.5 * ties) / n,
        f"tie_rate_vs_{against}": ties / n,
        f"loss_rate_vs_{against}": losses / n,
    }


def _pin_champion_metrics(metrics: Mapping[str, float], champion_version: str | None) -> dict[str, float]:
    """``<m>_vs_champion`` -> ``<m>_vs_v<N>``: a tag must say which champion it was measured against."""
    out = {}
    for key, value in metrics.items():
        if key.endswith("_vs_champion"):
            if champion_version is None:
                log.info("no champion yet: %s is not recorded", key)
                continue
            key = key[: -len("champion")] + f"v{champion_version}"
        out[key] = value
    return out


def _tag_metrics(tags: Mapping[str, str]) -> dict[str, float]:
    out = {}
    for key, value in tags.items():
        if key.startswith(METRIC_TAG_PREFIX):
            try:
                out[key[len(METRIC_TAG_PREFIX):]] = float(value)
            except ValueError:
                continue
    return out


def _get_alias(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        if _error_code(e) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def get_version(name: str, version: str | None = None, *, alias: str | None = None) -> dict[str, Any] | None:
    """``{name, version, source, run_id, tags, aliases}`` of a version of ``name`` given by number
    or by ``alias`` (e.g. ``champion``), or None when the model, version or alias does not exist."""
    from mlflow.exceptions import MlflowException

    if (version is None) == (alias is None):
        raise SrlmError("give either a version or an alias")
    client = _client()
    with _mlflow_errors(f"model {name!r} {'@' + alias if alias else 'version ' + str(version)}"):
        try:
            mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, str(version))
        except MlflowException as e:
            if _error_code(e) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                return None
            raise
    return {
        "name": name,
        "version": str(mv.version),
        "source": mv.source,
        "run_id": mv.run_id,
        "tags": dict(mv.tags),
        "aliases": list(getattr(mv, "aliases", []) or []),
    }


def _newest_version(client, name: str) -> str:
    versions = client.search_model_versions(f"name = '{name}'")
    if not versions:
        raise SrlmError(f"registered model {name!r} has no versions to promote")
    return str(max(int(v.version) for v in versions))


def evaluate_rule(
    rule: PromotionRule,
    challenger: Mapping[str, Any],
    champion: Mapping[str, Any],
    *,
    champion_is_parent: bool,
    champion_version: str | None = None,
) -> tuple[bool | None, str, dict[str, Any], list[str]]:
    """Apply ``rule`` to the challenger's and champion's metrics (``metric.*`` without the prefix).

    The head-to-head win rate is ``<metric>_vs_champion`` (fresh), else ``<metric>_vs_v<N>`` with N
    the champion's version, else ``<metric>_vs_previous`` when the champion is the challenger's
    parent. Returns (True/False, or None when it cannot be evaluated; the reason; the values
    compared; what is missing).
    """
    missing: list[str] = []
    compared: dict[str, Any] = {}
    reasons: list[str] = []
    checks: list[bool] = []

    fresh = f"{rule.metric}_vs_champion"
    pinned = f"{rule.metric}_vs_v{champion_version}" if champion_version else None
    previous = f"{rule.metric}_vs_previous"
    if fresh in challenger:
        win_key = fresh
    elif pinned and pinned in challenger:
        win_key = pinned
    elif champion_is_parent and previous in challenger:
        win_key = previous
    else:
        win_key = None
        options = " or ".join(k for k in (fresh, pinned, previous if champion_is_parent else None) if k)
        note = "" if champion_is_parent else f" ({previous} does not count: the champion is not its parent)"
        missing.append(f"challenger has no head-to-head win rate against the champion: {options}{note}")
    if win_key:
        value = float(challenger[win_key])
        ok = value >= rule.min_win_rate
        compared["win_rate"] = {"key": win_key, "challenger": value, "min": rule.min_win_rate, "ok": ok}
        checks.append(ok)
        reasons.append(f"{win_key} {value:.3f} {'>=' if ok else '<'} {rule.min_win_rate}")

    if rule.rm_metric:
        mine, theirs = challenger.get(rule.rm_metric), champion.get(rule.rm_metric)
        if mine is None:
            missing.append(f"challenger has no {rule.rm_metric}")
        if theirs is None:
            missing.append(f"champion has no {rule.rm_metric}")
        if mine is not None and theirs is not None:
            drop = float(theirs) - float(mine)
            ok = drop <= rule.rm_tolerance + 1e-12
            compared["rm"] = {
                "metric": rule.rm_metric,
                "challenger": float(mine),
                "champion": float(theirs),
                "tolerance": rule.rm_tolerance,
                "ok": ok,
            }
            checks.append(ok)
            reasons.append(
                f"{rule.rm_metric} {float(mine):.3f} vs champion {float(theirs):.3f} "
                f"({'within' if ok else 'drops more than'} tolerance {rule.rm_tolerance})"
            )
    if missing:
        return None, "cannot evaluate the promotion rule: " + "; ".join(missing), compared, missing
    holds = all(checks)
    return holds, ("rule holds: " if holds else "rule does not hold: ") + "; ".join(reasons), compared, missing


def promote(
    name: str,
    version: str | None = None,
    rule: PromotionRule | None = None,
    *,
    metrics: dict | None = None,
) -> dict:
    """Set ``challenger`` on ``version`` (default: newest) and move ``champion`` when the rule holds.

    Returns ``{promoted, reason, challenger, champion_before, champion_after, compared, name,
    rule}``. SrlmError (and no alias changed) when the rule cannot be evaluated and
    ``rule.require_metrics``; see the module docstring for the rule.
    """
    rule = rule or PromotionRule()
    rule.validate()
    client = _client()
    with _mlflow_errors(f"promoting a version of model {name!r}"):
        from mlflow.exceptions import MlflowException

        try:
            client.get_registered_model(name)
        except MlflowException as e:
            if _error_code(e) == "RESOURCE_DOES_NOT_EXIST":
                raise SrlmError(f"registered model {name!r} not found in {_redact(tracking_uri())}") from None
            raise
        version = str(version) if version is not None else _newest_version(client, name)
        try:
            candidate = client.get_model_version(name, version)
        except MlflowException as e:
            if _error_code(e) == "RESOURCE_DOES_NOT_EXIST":
                raise SrlmError(f"model {name!r} has no version {version}") from None
            raise
        champion = _get_alias(client, name, CHAMPION)
        champion_before = str(champion.version) if champion is not None else None
        fresh = numeric_metrics(metrics)
        compared: dict[str, Any] = {}
        if champion is None:
            promoted, reason = True, "no champion yet: the first challenger becomes champion"
        elif champion_before == version:
            promoted, reason = False, f"version {version} is already the champion"
        else:
            mine = {**_tag_metrics(candidate.tags), **fresh}
            theirs = _tag_metrics(champion.tags)
            holds, reason, compared, _ = evaluate_rule(
                rule,
                mine,
                theirs,
                champion_is_parent=candidate.tags.get("parent_version") == champion_before,
                champion_version=champion_before,
            )
            reason = f"version {version} vs champion {champion_before}: {reason}"
            if holds is None and rule.require_metrics:
                raise SrlmError(f"model {name!r}: {reason}")
            promoted = bool(holds)
        client.set_registered_model_alias(name, CHALLENGER, version)
        if promoted:
            client.set_registered_model_alias(name, CHAMPION, version)
        for key, value in _pin_champion_metrics(fresh, champion_before).items():
            client.set_model_version_tag(name, version, METRIC_TAG_PREFIX + key, repr(value))
        if champion_before != version:
            client.set_model_version_tag(name, version, "promotion.promoted", str(promoted).lower())
            client.set_model_version_tag(name, version, "promotion.reason", _as_text(reason, _MAX_TAG))
    champion_after = version if promoted else champion_before
    log.info("model %s: %s", name, reason)
    return {
        "name": name,
        "promoted": promoted,
        "reason": reason,
        "challenger": version,
        "champion_before": champion_before,
        "champion_after": champion_after,
        "compared": compared,
        "rule": rule.to_dict(),
    }


def run_promote(config: PromotionRule, name: str, version: str | None = None, overwrite: bool = False) -> dict:
    """``srlm promote --name NAME [--version V]``: the CLI adapter (``overwrite`` is unused)."""
    del overwrite
    return promote(name, version, config)
