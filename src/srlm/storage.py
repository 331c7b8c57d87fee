"""Where a run's models live: in their KFP artifacts (the default), or once on a shared volume.

A 70B model is 140 GB: copied through the object store by every stage that reads it, a run moves
terabytes. With a model volume (KFP's per-run pipeline workspace, or a named ReadWriteMany PVC)
a stage that makes a model (``tiny_model``, ``sft``, ``dpo``) writes it once under
``<volume>/srlm-models/<run>/<stage>-<key>`` and its KFP ``Model`` artifact holds only a
reference file (:data:`REF_FILE`: the directory, the stage, the size). Every stage that reads a
model follows the reference (:func:`resolve`) and reads the weights in place. Only models that
leave the run, the registered ones, are copied to the object store (MLflow's artifact store, by
the ``register`` step).

The directory's key is a digest of the task's own output path, so a retried task writes to the
same place (its earlier attempt's leftovers are removed first) and no two tasks share one; the
reference is written last, so a reader never sees half a model.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from srlm.errors import SrlmError
from srlm.io import write_json

REF_FILE = "srlm_model_ref.json"
MODES = ("artifacts", "workspace", "pvc")
MODELS_DIR = "srlm-models"


def stored_dir(out: str | Path, volume: str | Path, stage: str, run_id: str = "") -> Path:
    """The directory on ``volume`` where the model of the task whose KFP output is ``out`` lives."""
    key = hashlib.sha256(str(Path(out).resolve()).encode()).hexdigest()[:12]
    return Path(volume) / MODELS_DIR / (run_id or "local") / f"{stage}-{key}"


def prepare(target: Path) -> Path:
    """An empty ``target``: what an earlier attempt of the same task left there is removed."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    return target


def write_ref(out: str | Path, target: str | Path, stage: str) -> dict[str, Any]:
    """Make ``out`` (the task's KFP Model artifact) a reference to the model in ``target``; its metadata."""
    target = Path(target).resolve()
    files = [p for p in target.rglob("*") if p.is_file()]
    ref = {"path": str(target), "stage": stage, "files": len(files), "bytes": sum(p.stat().st_size for p in files)}
    write_json(Path(out) / REF_FILE, ref)
    return ref


def read_ref(path: str | Path) -> dict[str, Any] | None:
    """The reference in ``path`` (a model artifact), or None when ``path`` holds the model itself."""
    ref_file = Path(path) / REF_FILE
    if not ref_file.is_file():
        return None
    try:
        ref = json.loads(ref_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SrlmError(f"{ref_file}: not a model reference ({e})") from None
    if not isinstance(ref, dict) or not isinstance(ref.get("path"), str):
        raise SrlmError(f"{ref_file}: not a model reference (no 'path')")
    return ref


def resolve(path: str | Path) -> str:
    """The directory holding the model of artifact ``path``: the referenced one on the model volume, or ``path``."""
    ref = read_ref(path)
    if ref is None:
        return str(path)
    target = Path(ref["path"])
    if not target.is_dir():
        raise SrlmError(f"{path}: the model it refers to, {target}, is not on this task's file system: the model "
                        "volume (model_storage workspace or pvc) is not mounted here, or the run that wrote it is over")
    return str(target)
