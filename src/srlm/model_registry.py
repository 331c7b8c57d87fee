"""The MLflow model registry: every M(t) a version of one registered model, aliases moved by the policy.

By reference
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

Promotion: :func:`promote` applies ``srlm.promotion`` (the rule, with its exact wording there) to
the versions' ``metric.*`` tags and moves ``challenger`` and ``champion``.
"""

from __future__ import annotations

import logging
import os
import re
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from srlm.errors import SrlmError
from srlm.metrics import flatten, metric_key, numeric_metrics
from srlm.modeldir import read_lineage
from srlm.promotion import (
    CHALLENGER,
    CHAMPION,
    METRIC_TAG_PREFIX,
    PromotionRule,
    evaluate_rule,
    pin_champion_metrics,
    tag_metrics,
)
from srlm.secrets import redact_text
from srlm.tracking import MAX_TAG, as_text, error_code, is_http, mlflow_client, mlflow_errors, tracking_uri

log = logging.getLogger(__name__)

_ALIAS_RE = re.compile(r"^[\w\-]*$")
_RUN_ID_RE = re.compile(r"^[0-9a-f]{32}$")



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


def _existing_version(client, name: str, source: str, iteration: int, kfp_run_id: str | None = None):
    """The version this registration already made: the same M(t) of the same KFP run (a retried or rerun run
    registers it once), or the same source at the same iteration."""
    from mlflow.exceptions import MlflowException

    if kfp_run_id and "'" not in kfp_run_id:
        same_run = [v for v in _run_versions(client, name, kfp_run_id) if v.tags.get("iteration") == str(iteration)]
        if same_run:
            return min(same_run, key=lambda v: int(v.version))
    if "'" in source:
        return None
    try:
        versions = client.search_model_versions(f"name = '{name}' and source_path = '{source}'")
    except MlflowException:
        return None
    same = [v for v in versions if v.source == source and v.tags.get("iteration") == str(iteration)]
    return max(same, key=lambda v: int(v.version)) if same else None


def _run_versions(client, name: str, kfp_run_id: str) -> list:
    """The versions of ``name`` that KFP run ``kfp_run_id`` registered (none when the model does not exist yet)."""
    return client.search_model_versions(f"name = '{name}' and tags.kfp_run_id = '{kfp_run_id}'")


RUN_STATUS_TAG = "srlm.run_status"  # FAILED on the versions a pipeline run registered before it failed


def failed_run(version: Any) -> bool:
    return version.tags.get(RUN_STATUS_TAG) == "FAILED"


def mark_run_failed(name: str, kfp_run_id: str) -> list[str]:
    """Tag every version KFP run ``kfp_run_id`` registered as coming from a failed run; their numbers."""
    if "'" in kfp_run_id:
        raise SrlmError(f"{kfp_run_id!r}: quotes are not allowed in a KFP run id")
    client = mlflow_client()
    with mlflow_errors(f"tagging the versions of failed run {kfp_run_id}"):
        versions = _run_versions(client, name, kfp_run_id)
        for v in versions:
            client.set_model_version_tag(name, v.version, RUN_STATUS_TAG, "FAILED")
    return sorted((str(v.version) for v in versions), key=int)


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
    ``iter-<iteration>``. ``upload_local=True``: a local directory is copied into the artifacts of
    ``run_id`` under ``artifact_path`` and registered as ``runs:/<run_id>/<artifact_path>`` (needed
    through a tracking server; with a local store, for a directory that will not outlive the run).
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
    client = mlflow_client(uri)
    if local is not None and is_http(uri) and not upload_local:
        raise SrlmError(
            f"{model_uri}: a tracking server ({uri}) does not accept a local path as a model version source; "
            "register the model's remote artifact URI (s3://..., or runs:/<run_id>/... of a run that logged it), "
            "or pass upload_local=True to copy it into the run's artifacts"
        )
    if local is not None and upload_local:
        if not run_id:
            raise SrlmError(f"{model_uri}: upload_local needs the run_id of the run to copy the model into")
        with mlflow_errors(f"uploading {local} to run {run_id}"):
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
    all_tags.update({metric_key(k): as_text(v, MAX_TAG) for k, v in flatten(tags or {}).items()})
    alias = _validate_alias(f"iter-{iteration}")

    from mlflow.exceptions import MlflowException

    with mlflow_errors(f"registering {source} as a version of model {name!r}"):
        try:
            client.create_registered_model(name, description="Self-Rewarding LM iterations M(t) (srlm)")
        except MlflowException as e:
            if error_code(e) != "RESOURCE_ALREADY_EXISTS":
                raise
        key_metrics = numeric_metrics(metrics)
        if any(k.endswith("_vs_champion") for k in key_metrics):
            champion = _get_alias(client, name, CHAMPION)
            key_metrics = pin_champion_metrics(key_metrics, str(champion.version) if champion else None)
        all_tags.update({METRIC_TAG_PREFIX + k: repr(v) for k, v in key_metrics.items()})
        existing = _existing_version(client, name, source, iteration, (tags or {}).get("kfp_run_id"))
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
            tags[f"lineage.{key}"] = as_text(lineage[key], MAX_TAG)
    for data_name, digest in (lineage.get("data_digests") or {}).items():
        tags[f"data_digest.{metric_key(data_name)}"] = str(digest)
    return tags


def _get_alias(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        if error_code(e) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def get_version(name: str, version: str | None = None, *, alias: str | None = None) -> dict[str, Any] | None:
    """``{name, version, source, run_id, tags, aliases}`` of a version of ``name`` given by number
    or by ``alias`` (e.g. ``champion``), or None when the model, version or alias does not exist."""
    from mlflow.exceptions import MlflowException

    if (version is None) == (alias is None):
        raise SrlmError("give either a version or an alias")
    client = mlflow_client()
    with mlflow_errors(f"model {name!r} {'@' + alias if alias else 'version ' + str(version)}"):
        try:
            mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, str(version))
        except MlflowException as e:
            if error_code(e) in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
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
    """The newest version not registered by a failed pipeline run."""
    versions = client.search_model_versions(f"name = '{name}'")
    usable = [v for v in versions if not failed_run(v)]
    if not usable:
        failed = f" ({len(versions)} from failed runs)" if versions else ""
        raise SrlmError(f"registered model {name!r} has no versions to promote{failed}")
    return str(max(int(v.version) for v in usable))


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
    client = mlflow_client()
    with mlflow_errors(f"promoting a version of model {name!r}"):
        from mlflow.exceptions import MlflowException

        try:
            client.get_registered_model(name)
        except MlflowException as e:
            if error_code(e) == "RESOURCE_DOES_NOT_EXIST":
                raise SrlmError(f"registered model {name!r} not found in {redact_text(tracking_uri())}") from None
            raise
        version = str(version) if version is not None else _newest_version(client, name)
        try:
            candidate = client.get_model_version(name, version)
        except MlflowException as e:
            if error_code(e) == "RESOURCE_DOES_NOT_EXIST":
                raise SrlmError(f"model {name!r} has no version {version}") from None
            raise
        if failed_run(candidate):
            raise SrlmError(f"model {name!r} version {version} was registered by a pipeline run that failed (KFP run "
                            f"{candidate.tags.get('kfp_run_id', '?')}): it is never promoted; promote a version of a "
                            "run that finished")
        champion = _get_alias(client, name, CHAMPION)
        champion_before = str(champion.version) if champion is not None else None
        fresh = numeric_metrics(metrics)
        compared: dict[str, Any] = {}
        if champion is None:
            promoted, reason = True, "no champion yet: the first challenger becomes champion"
        elif champion_before == version:
            promoted, reason = False, f"version {version} is already the champion"
        else:
            mine = {**tag_metrics(candidate.tags), **fresh}
            theirs = tag_metrics(champion.tags)
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
        for key, value in pin_champion_metrics(fresh, champion_before).items():
            client.set_model_version_tag(name, version, METRIC_TAG_PREFIX + key, repr(value))
        if champion_before != version:
            client.set_model_version_tag(name, version, "promotion.promoted", str(promoted).lower())
            client.set_model_version_tag(name, version, "promotion.reason", as_text(reason, MAX_TAG))
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
