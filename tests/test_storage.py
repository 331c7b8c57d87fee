"""Models on a shared volume (srlm.storage): written once, referred to by their artifacts, read in place, and copied
to MLflow's artifact store only when registered. Real components (``python_func``) on the tiny model."""

import json
import shutil
import sys
from pathlib import Path

import pytest
from kfp import dsl

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import components  # noqa: E402
from srlm import stages, storage, tracking  # noqa: E402
from srlm.errors import SrlmError  # noqa: E402
from srlm.modeldir import check_model_dir, read_lineage  # noqa: E402


def art(cls, path):
    return cls(name=Path(path).name, uri=str(path))


def build_stored_model(tmp_path, volume, name="m0"):
    out = tmp_path / "kfp" / name  # the task's KFP output path (KFP creates the parent)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = art(dsl.Model, out)
    components.tiny_model.python_func(base_model={"preset": "tiny"}, mlflow={"enabled": False}, kfp_run_id="run-7",
                                      model=model, metrics=art(dsl.Metrics, tmp_path / f"{name}.metrics"),
                                      model_volume=str(volume))
    return out, model


def test_a_model_made_with_a_model_volume_is_stored_there_and_its_artifact_only_refers_to_it(tmp_path):
    volume = tmp_path / "volume"
    out, model = build_stored_model(tmp_path, volume)
    assert sorted(p.name for p in out.iterdir()) == [storage.REF_FILE]  # the artifact carries no weights
    target = Path(storage.resolve(out))
    assert target.parent == volume / "srlm-models" / "run-7" and target.name.startswith("tiny_model-")
    check_model_dir(target)
    ref = json.loads((out / storage.REF_FILE).read_text())
    assert ref["path"] == str(target) and ref["stage"] == "tiny_model" and ref["files"] >= 5
    assert ref["bytes"] == sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    assert model.metadata["path"] == str(target) and model.metadata["bytes"] == ref["bytes"]  # shown in the KFP UI


def test_a_retried_task_writes_to_the_same_place_and_replaces_what_its_failed_try_left(tmp_path):
    volume = tmp_path / "volume"
    out, _ = build_stored_model(tmp_path, volume)
    target = Path(storage.resolve(out))
    (target / "half-written.safetensors").write_bytes(b"the first try died here")
    shutil.rmtree(out)  # the retry gets a fresh output directory at the same path
    out_again, _ = build_stored_model(tmp_path, volume)
    assert Path(storage.resolve(out_again)) == target
    assert not (target / "half-written.safetensors").exists()
    other, _ = build_stored_model(tmp_path, volume, name="another-task")
    assert Path(storage.resolve(other)) != target  # no two tasks share a directory


def test_every_stage_that_reads_a_model_follows_the_reference(tmp_path):
    """The CLI's export-alpaca (a model reader like sampling and judging) on a stored model's artifact."""
    volume = tmp_path / "volume"
    out, _ = build_stored_model(tmp_path, volume)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "a", "prompt": "Name a colour."}\n{"id": "b", "prompt": "Count to three."}\n')
    stats = stages.run_stage("export_alpaca", {"preset": "tiny", "winrate": {"max_new_tokens": 4}}, model=str(out),
                             prompts=str(prompts), out=str(tmp_path / "outputs.json"))
    assert stats["prompts"] == 2 and len(json.loads((tmp_path / "outputs.json").read_text())) == 2
    readers = {name for name, s in stages.TASKS.items() if s.uses_models}
    assert readers == {"tiny_model", "build_eft", "sft", "prompts", "sample", "judge", "dpo", "evaluate", "register",
                       "gate"}


def test_a_reference_to_a_volume_this_task_cannot_see_is_one_clear_error(tmp_path):
    volume = tmp_path / "volume"
    out, _ = build_stored_model(tmp_path, volume)
    shutil.rmtree(volume)
    with pytest.raises(SrlmError, match=r"is not on this task's file system: the model volume .* is not mounted here"):
        stages.run_stage("export_alpaca", {"preset": "tiny"}, model=str(out), prompts=str(tmp_path / "p.jsonl"),
                         out=str(tmp_path / "o.json"))
    (out / storage.REF_FILE).write_text("{not json")
    with pytest.raises(SrlmError, match=r"srlm_model_ref.json: not a model reference"):
        storage.resolve(out)


def test_a_registered_stored_model_leaves_the_run_through_mlflows_artifact_store(tmp_path, monkeypatch):
    """register copies a stored model into the MLflow run's artifacts (runs:/<run>/model): when the run's volume is
    gone (KFP deletes the workspace with the run), the registered version still downloads and loads."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracking.ensure_experiment("storage-test", (tmp_path / "mlartifacts").as_uri())
    volume = tmp_path / "volume"
    out, model = build_stored_model(tmp_path, volume)
    evaluation = tmp_path / "eval"
    evaluation.mkdir()
    (evaluation / "summary.json").write_text(json.dumps({"pairwise_accuracy": 0.5}))
    version = components.register.python_func(
        model=model, evaluation=art(dsl.Dataset, evaluation), iteration=1, parent_version="",
        mlflow={"enabled": True, "experiment": "storage-test", "model_name": "stored"}, kfp_run_id="run-7",
        metrics=art(dsl.Metrics, tmp_path / "reg.metrics"), model_volume=str(volume))
    lineage = read_lineage(storage.resolve(out))
    shutil.rmtree(volume)
    client = tracking.mlflow_client()
    mv = client.get_model_version("stored", version)
    assert mv.source == f"runs:/{mv.run_id}/model" and mv.tags["uploaded_from"].startswith(str(volume))
    assert mv.tags["lineage.stage"] == lineage["stage"] and mv.tags["iteration"] == "1"
    import mlflow.artifacts

    downloaded = Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(tmp_path / "dl")))
    check_model_dir(downloaded)
