"""srlm.tracking against real MLflow: a SQLite store in tmp_path and a real `mlflow server` process.

The SQLite store is created once for the module (a new DB migrates for seconds); the server starts
at the beginning of the module in the background and is waited for only by the server tests.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from srlm import cli, model_registry, promotion, tracking
from srlm.errors import SrlmError
from srlm.metrics import numeric_metrics
from srlm.modeldir import write_lineage
from srlm.promotion import PromotionRule

ROOT = Path(__file__).resolve().parent.parent

MODEL_FILES = ("model.safetensors", "config.json", "tokenizer.json")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fake_model(root: Path, name: str, data: Path, parent: Path | None = None) -> Path:
    """A small HF-like model directory (a few files) with a lineage file."""
    path = root / name
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "name": name}))
    (path / "model.safetensors").write_bytes(name.encode() * 64)
    (path / "tokenizer.json").write_text("{}")
    write_lineage(path, stage="sft" if parent is None else "dpo", parent=parent, data={"ift": data})
    return path


def _client():
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def _aliases(name: str) -> dict[str, str]:
    # a SQL store gives version numbers as int, the REST client as str
    return {k: str(v) for k, v in _client().get_registered_model(name).aliases.items()}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def server_process(tmp_path_factory):
    """Start `mlflow server` at module start (it boots while the SQLite tests run)."""
    root = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    log_path = root / "server.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
             "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
             "--artifacts-destination", str(root / "artifacts"), "--serve-artifacts", "--workers", "1"],
            cwd=root, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
    yield {"proc": proc, "uri": f"http://127.0.0.1:{port}", "log": log_path, "root": root}
    _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, wait, then SIGKILL whatever is left of it."""
    pgid = proc.pid  # start_new_session: the group id is the server's pid
    with _ignore(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        with _ignore(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    with _ignore(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


class _ignore:
    def __init__(self, *errors):
        self.errors = errors

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        return kind is not None and issubclass(kind, self.errors)


@pytest.fixture
def server(server_process, monkeypatch):
    """The running server's URI, set as MLFLOW_TRACKING_URI (waits up to 60 s for /health)."""
    uri, proc = server_process["uri"], server_process["proc"]
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited ({proc.returncode}):\n{server_process['log'].read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"mlflow server did not answer /health in 60 s:\n{server_process['log'].read_text()[-3000:]}")
        time.sleep(0.3)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    return uri


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory):
    """One SQLite store for the module (migrated once), artifacts in an explicit location."""
    root = tmp_path_factory.mktemp("mlflow_sqlite")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    artifacts = root / "artifacts"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        tracking.ensure_experiment("srlm-test", artifact_location=str(artifacts))
    data = root / "ift.jsonl"
    data.write_text('{"messages": []}\n')
    return {"uri": uri, "root": root, "artifacts": artifacts, "data": data}


@pytest.fixture
def sqlite(sqlite_store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_store["uri"])
    return sqlite_store


# --------------------------------------------------------------------------- pure parts


def test_tracking_uri_unset_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(SrlmError, match="MLFLOW_TRACKING_URI is not set"):
        tracking.tracking_uri()


def test_flattening_keeps_params_and_numeric_metrics():
    assert tracking.flatten_params({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": "1", "a.c": "[1, 2]", "d": "None"}
    metrics = {"loss": 0.5, "n": 3, "skip": None, "flag": True, "text": "x", "list": [1], "rm": {"pairwise_accuracy": 0.7}}
    assert numeric_metrics(metrics) == {"loss": 0.5, "n": 3.0, "rm.pairwise_accuracy": 0.7}


def test_rule_rejects_unknown_metrics_and_bad_values():
    with pytest.raises(SrlmError, match="metric: 'bogus' is not allowed; choose from 'win_rate', 'adjusted_win_rate'"):
        PromotionRule.load(metric="bogus")
    with pytest.raises(SrlmError, match="rm_metric: 'accuracy' is not allowed; choose from 'pairwise_accuracy'"):
        PromotionRule.load(rm_metric="accuracy")
    with pytest.raises(SrlmError, match="fraction"):
        PromotionRule.load(min_win_rate=55)
    assert PromotionRule.load(rm_metric="").rm_metric == ""


def test_rule_evaluation():
    rule = PromotionRule()
    good = {"adjusted_win_rate_vs_previous": 0.6, "pairwise_accuracy": 0.69}
    holds, reason, compared, _ = promotion.evaluate_rule(rule, good, {"pairwise_accuracy": 0.70}, champion_is_parent=True)
    assert holds and compared["win_rate"]["key"] == "adjusted_win_rate_vs_previous"
    # the RM metric drops by more than the tolerance
    holds, reason, compared, _ = promotion.evaluate_rule(rule, good, {"pairwise_accuracy": 0.75}, champion_is_parent=True)
    assert holds is False and "drops more than" in reason and compared["rm"]["ok"] is False
    # "vs previous" does not count when the champion is not the parent; "vs champion" does
    holds, reason, _, missing = promotion.evaluate_rule(rule, good, {"pairwise_accuracy": 0.7}, champion_is_parent=False)
    assert holds is None and "adjusted_win_rate_vs_champion" in reason and len(missing) == 1
    pinned = {**good, "adjusted_win_rate_vs_v7": 0.55}
    holds, _, compared, _ = promotion.evaluate_rule(
        rule, pinned, {"pairwise_accuracy": 0.7}, champion_is_parent=False, champion_version="7"
    )
    assert holds and compared["win_rate"]["key"] == "adjusted_win_rate_vs_v7"
    fresh = {**good, "adjusted_win_rate_vs_champion": 0.4}
    holds, reason, _, _ = promotion.evaluate_rule(rule, fresh, {"pairwise_accuracy": 0.7}, champion_is_parent=True)
    assert holds is False and "0.400 < 0.5" in reason
    # missing RM metric on the champion's side
    holds, reason, _, missing = promotion.evaluate_rule(rule, good, {}, champion_is_parent=True)
    assert holds is None and missing == ["champion has no pairwise_accuracy"]


def test_head_to_head_metrics():
    stats = {"prompts": 10, "wins": 4, "ties": 2, "losses": 4}
    assert promotion.head_to_head_metrics(stats) == {
        "win_rate_vs_previous": 0.4,
        "adjusted_win_rate_vs_previous": 0.5,
        "tie_rate_vs_previous": 0.2,
        "loss_rate_vs_previous": 0.4,
    }
    with pytest.raises(SrlmError, match="0 prompts"):
        promotion.head_to_head_metrics({"prompts": 0, "wins": 0, "ties": 0, "losses": 0})


# --------------------------------------------------------------------------- SQLite store


def test_check_reachable_on_local_stores(sqlite, tmp_path):
    tracking.check_reachable()  # the module's store opens
    with pytest.raises(SrlmError, match="sqlite:////nonexistent/dir/mlflow.db"):
        tracking.check_reachable("sqlite:////nonexistent/dir/mlflow.db")
    not_a_db = tmp_path / "junk.db"
    not_a_db.write_text("this is not a database " * 100)
    with pytest.raises(SrlmError, match="not a database"):
        tracking.check_reachable(f"sqlite:///{not_a_db}")
    with pytest.raises(SrlmError, match="cannot be opened"):
        tracking.check_reachable(f"file://{not_a_db}/mlruns")


def test_parent_run_is_idempotent_and_stages_are_children(sqlite, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # to see that nothing lands in ./mlruns
    parent = tracking.pipeline_run("srlm-test", "kfp-run-1", params={"data": {"ift": "seed"}, "iterations": 3})
    assert tracking.pipeline_run("srlm-test", "kfp-run-1") == parent
    assert tracking.pipeline_run("srlm-test", "kfp-run-1", params={"iterations": 3, "extra": 1}) == parent
    assert tracking.pipeline_run("srlm-test", "kfp-run-2") != parent

    report = tmp_path / "rm_report.md"
    report.write_text("# RM report\n")
    samples = tmp_path / "samples"
    samples.mkdir()
    (samples / "pairs.jsonl").write_text("{}\n")
    child = tracking.log_stage(
        "srlm-test", "kfp-run-1", "pairs",
        params={"config": {"min_gap": 0.5, "tie": "drop"}, "inputs": ["a", "b"]},
        metrics={"pair_yield": 0.8, "pairs": 12, "note": "n/a", "missing": None, "rm": {"pairwise_accuracy": 0.6}},
        artifacts={"report.md": str(report), "samples": str(samples)},
        iteration=2,
    )
    second = tracking.log_stage("srlm-test", "kfp-run-1", "judge", {}, {"parse_failures": 0}, iteration=2)

    client = _client()
    run = client.get_run(child)
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert (run.data.tags["stage"], run.data.tags["iteration"], run.data.tags["kfp_run_id"]) == ("pairs", "2", "kfp-run-1")
    assert run.data.params == {"config.min_gap": "0.5", "config.tie": "drop", "inputs": '["a", "b"]'}
    assert run.data.metrics == {"pair_yield": 0.8, "pairs": 12.0, "rm.pairwise_accuracy": 0.6}
    assert run.info.status == "FINISHED"
    assert sorted(a.path for a in client.list_artifacts(child)) == ["report.md", "samples"]
    assert run.info.artifact_uri.startswith(sqlite["artifacts"].as_uri())  # the explicit location, not ./mlruns
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert {r.info.run_id for r in children} == {child, second}
    assert client.get_run(parent).data.params == {"data.ift": "seed", "iterations": "3", "extra": "1"}
    assert not (tmp_path / "mlruns").exists()

    with pytest.raises(SrlmError, match="not found"):
        tracking.log_stage("srlm-test", "kfp-run-1", "eval", {}, {}, artifacts={"r.md": str(tmp_path / "nope.md")})


def test_register_by_reference_aliases_and_promotion(sqlite, tmp_path):
    name = "srlm-sqlite"
    data = sqlite["data"]
    m1 = _fake_model(tmp_path, "m1", data)
    m2 = _fake_model(tmp_path, "m2", data, parent=m1)
    m3 = _fake_model(tmp_path, "m3", data, parent=m2)
    run_id = tracking.log_stage("srlm-test", "kfp-run-3", "register", {}, {}, iteration=1)

    v1 = model_registry.register_model(name, str(m1), 1, run_id=run_id, tags={"kfp_run_id": "kfp-run-3"},
                                 metrics={"pairwise_accuracy": 0.60, "mean_length": 120})
    v2 = model_registry.register_model(name, m2.as_uri(), 2, parent_version=v1,
                                 metrics={"pairwise_accuracy": 0.65, "adjusted_win_rate_vs_previous": 0.40})
    v3 = model_registry.register_model(name, m3.as_uri(), 3, parent_version=v2,
                                 metrics={"pairwise_accuracy": 0.64, "adjusted_win_rate_vs_previous": 0.70})
    assert (v1, v2, v3) == ("1", "2", "3")
    assert model_registry.register_model(name, str(m1), 1, run_id=run_id) == v1  # a retried task adds no version

    client = _client()
    mv1, mv3 = client.get_model_version(name, v1), client.get_model_version(name, v3)
    assert mv1.source == str(m1) and mv1.run_id == run_id
    assert mv3.source == m3.as_uri()
    assert mv3.tags["iteration"] == "3" and mv3.tags["parent_version"] == "2"
    assert mv3.tags["lineage.stage"] == "dpo" and mv3.tags["lineage.parent"] == str(m2)
    assert mv3.tags["data_digest.ift"].startswith("sha256:")
    assert mv1.tags["metric.pairwise_accuracy"] == "0.6" and mv1.tags["kfp_run_id"] == "kfp-run-3"
    aliases = _aliases(name)
    assert {aliases[f"iter-{t}"] for t in (1, 2, 3)} == {"1", "2", "3"} and aliases["iter-2"] == "2"
    # by reference: no copy of the weights anywhere under the artifact root
    copied = [p for p in sqlite["root"].rglob("*") if p.name in MODEL_FILES]
    assert copied == []

    first = model_registry.promote(name, v1)
    assert first["promoted"] and first["champion_before"] is None and first["champion_after"] == "1"

    worse = model_registry.promote(name, v2)  # 0.40 vs previous (= the champion)
    assert not worse["promoted"] and worse["champion_after"] == "1" and worse["compared"]["win_rate"]["challenger"] == 0.4
    aliases = _aliases(name)
    assert aliases["challenger"] == "2" and aliases["champion"] == "1"
    assert client.get_model_version(name, v2).tags["promotion.promoted"] == "false"

    # v3's "vs previous" is against v2, not the champion v1: the rule cannot be evaluated
    with pytest.raises(SrlmError, match="adjusted_win_rate_vs_champion") as e:
        model_registry.promote(name)
    assert "version 3 vs champion 1" in str(e.value)
    assert _aliases(name)["challenger"] == "2"  # nothing changed
    lenient = model_registry.promote(name, rule=PromotionRule.load(require_metrics=False))
    assert not lenient["promoted"] and "cannot evaluate" in lenient["reason"]
    assert _aliases(name)["challenger"] == "3"

    better = model_registry.promote(name, metrics={"adjusted_win_rate_vs_champion": 0.7})
    assert better["promoted"] and better["champion_before"] == "1" and better["champion_after"] == "3"
    assert better["compared"]["rm"] == {"metric": "pairwise_accuracy", "challenger": 0.64, "champion": 0.6,
                                        "tolerance": 0.02, "ok": True}
    aliases = _aliases(name)
    assert aliases["champion"] == "3" and aliases["challenger"] == "3"
    tags = client.get_model_version(name, v3).tags  # the fresh value, pinned to the champion it was measured against
    assert tags["metric.adjusted_win_rate_vs_v1"] == "0.7" and "metric.adjusted_win_rate_vs_champion" not in tags
    assert tags["promotion.promoted"] == "true" and "rule holds" in tags["promotion.reason"]

    champion = model_registry.get_version(name, alias="champion")
    assert champion["version"] == "3" and champion["source"] == m3.as_uri() and "champion" in champion["aliases"]
    assert model_registry.get_version(name, "9") is None and model_registry.get_version("no-such-model", alias="champion") is None

    with pytest.raises(SrlmError, match="has no version 9"):
        model_registry.promote(name, "9")
    with pytest.raises(SrlmError, match="not found"):
        model_registry.promote("no-such-model")
    with pytest.raises(SrlmError, match="model directory not found"):
        model_registry.register_model(name, str(tmp_path / "missing"), 4)


def test_cli_promote(sqlite, tmp_path, capsys):
    model = _fake_model(tmp_path, "m1", sqlite["data"])
    model_registry.register_model("srlm-cli", str(model), 1, metrics={"pairwise_accuracy": 0.5})
    assert cli.main(["promote", "--name", "srlm-cli", "--min-win-rate", "0.6"]) == 0
    decision = json.loads(capsys.readouterr().out)
    assert decision["promoted"] and decision["champion_after"] == "1" and decision["rule"]["min_win_rate"] == 0.6

    with pytest.raises(SystemExit) as exit_:  # the flag lists its choices
        cli.main(["promote", "--name", "srlm-cli", "--metric", "bogus"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("argument --metric: invalid choice: 'bogus' (choose from 'win_rate', 'adjusted_win_rate')"), err
    rule = tmp_path / "rule.yaml"
    rule.write_text("metric: bogus\n")  # a value from a file is checked against the same list
    assert cli.main(["promote", "--name", "srlm-cli", "--config", str(rule)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("srlm promote: error: config: metric: 'bogus' is not allowed") and "\n" not in err


# --------------------------------------------------------------------------- tracking server


def test_unreachable_server_fails_fast(monkeypatch):
    uri = f"http://127.0.0.1:{_free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    start = time.monotonic()
    with pytest.raises(SrlmError, match=uri.replace(".", r"\.")):
        tracking.check_reachable()
    assert time.monotonic() - start < 5


def test_server_registration_and_promotion(server, tmp_path):
    import mlflow

    tracking.check_reachable(server)
    name = "srlm-server"
    data = tmp_path / "ift.jsonl"
    data.write_text("{}\n")
    m1 = _fake_model(tmp_path, "m1", data)
    m2 = _fake_model(tmp_path, "m2", data, parent=m1)

    parent = tracking.pipeline_run("srlm-server", "kfp-srv-1", params={"iterations": 3})
    assert tracking.pipeline_run("srlm-server", "kfp-srv-1") == parent
    # the models as logged artifact directories of stage runs (what the server can reach)
    r1 = tracking.log_stage("srlm-server", "kfp-srv-1", "sft", {"lr": 1e-5}, {"loss": 1.0}, {"model": str(m1)}, iteration=1)
    r2 = tracking.log_stage("srlm-server", "kfp-srv-1", "dpo", {"beta": 0.1}, {"loss": 0.6}, {"model": str(m2)}, iteration=2)
    client = _client()
    assert client.get_run(r2).data.tags["mlflow.parentRunId"] == parent
    artifact_uri = client.get_run(r2).info.artifact_uri
    assert artifact_uri.startswith("mlflow-artifacts:/")

    # runs:/ and mlflow-artifacts:/ sources: the run id is taken from the URI
    v1 = model_registry.register_model(name, f"runs:/{r1}/model", 1, metrics={"pairwise_accuracy": 0.6})
    v2 = model_registry.register_model(name, f"{artifact_uri}/model", 2, parent_version=v1,
                                 metrics={"pairwise_accuracy": 0.55, "adjusted_win_rate_vs_previous": 0.9})
    assert model_registry.promote(name, v1)["promoted"]
    worse = model_registry.promote(name, v2)  # wins, but pairwise accuracy drops 0.05 > 0.02
    assert not worse["promoted"] and worse["compared"]["rm"]["ok"] is False

    # an object-store URI (a KFP artifact on a cluster) is registered as it is, by reference;
    # its win rate "vs champion" is stored against the champion of that moment (v1)
    v3 = model_registry.register_model(name, "s3://mlpipeline/v2/artifacts/run/dpo/model", 3, parent_version=v2,
                                 metrics={"pairwise_accuracy": 0.62, "adjusted_win_rate_vs_champion": 0.6})
    v4 = model_registry.register_model(name, "minio://mlpipeline/v2/artifacts/run/dpo2/model", 4)
    assert (v1, v2, v3, v4) == ("1", "2", "3", "4")
    assert client.get_model_version(name, v3).tags["metric.adjusted_win_rate_vs_v1"] == "0.6"
    mv1, mv2 = client.get_model_version(name, v1), client.get_model_version(name, v2)
    assert (mv1.source, mv1.run_id) == (f"runs:/{r1}/model", r1)
    assert (mv2.source, mv2.run_id) == (f"{artifact_uri}/model", r2)
    assert client.get_model_version(name, v3).source == "s3://mlpipeline/v2/artifacts/run/dpo/model"
    mv4 = client.get_model_version(name, v4)
    assert mv4.source == "s3://mlpipeline/v2/artifacts/run/dpo2/model"
    assert mv4.tags["kfp_artifact_uri"] == "minio://mlpipeline/v2/artifacts/run/dpo2/model"
    # the reference resolves to the files through the server
    local = Path(mlflow.artifacts.download_artifacts(mv1.source, dst_path=str(tmp_path / "dl")))
    assert (local / "model.safetensors").read_bytes() == (m1 / "model.safetensors").read_bytes()

    # a local path is refused by a server: a clear error, or an explicit upload
    with pytest.raises(SrlmError, match="does not accept a local path"):
        model_registry.register_model(name, str(m2), 5)
    v5 = model_registry.register_model("srlm-server-upload", str(m2), 2, run_id=r2, upload_local=True, artifact_path="m2")
    assert client.get_model_version("srlm-server-upload", v5).source == f"runs:/{r2}/m2"

    better = model_registry.promote(name, v3)
    assert better["promoted"] and better["compared"]["win_rate"]["key"] == "adjusted_win_rate_vs_v1"
    aliases = _aliases(name)
    assert aliases["champion"] == "3" and aliases["challenger"] == "3"
    assert {aliases[f"iter-{t}"] for t in (1, 2, 3, 4)} == {"1", "2", "3", "4"}
    assert client.get_model_version_by_alias(name, "champion").version == "3"


def test_a_failed_runs_versions_are_tagged_never_promoted_and_a_rerun_registers_once(sqlite, tmp_path):
    name = "srlm-failed-run"
    m1, m1_bad, m1_again = (_fake_model(tmp_path, n, sqlite["data"]) for n in ("m1", "m1-bad", "m1-rerun"))
    v1 = model_registry.register_model(name, str(m1), 1, tags={"kfp_run_id": "kfp-good"})
    failed = model_registry.register_model(name, str(m1_bad), 1, tags={"kfp_run_id": "kfp-bad"})
    # the same KFP run retried: its M1 is made again (another directory) but registered once
    assert model_registry.register_model(name, str(m1_again), 1, tags={"kfp_run_id": "kfp-bad"}) == failed != v1
    assert model_registry.mark_run_failed(name, "kfp-bad") == [failed]
    assert model_registry.get_version(name, failed)["tags"]["srlm.run_status"] == "FAILED"
    decision = model_registry.promote(name)  # the newest version that did not come from a failed run
    assert decision["challenger"] == v1 and decision["champion_after"] == v1
    with pytest.raises(SrlmError, match=rf"version {failed} was registered by a pipeline run that failed .*kfp-bad"):
        model_registry.promote(name, failed)
    assert _aliases(name)["champion"] == v1


LOAD_TASK = """
import sys
from pathlib import Path
from srlm import model_registry, tracking
k, root = int(sys.argv[1]), Path(sys.argv[2])
model = root / f"m{k}"
model.mkdir()
(model / "config.json").write_text('{"model_type": "llama"}')
(model / "model.safetensors").write_bytes(bytes([k]) * 4096)
report = root / f"report{k}.md"
report.write_text(f"# shard {k}\\n")
metrics = {f"m{j}": k * 1000 + j for j in range(50)}
run_id = tracking.log_stage("srlm-load", "kfp-load", "sample", {"shard": k, "shards": 8}, metrics,
                            {"report.md": str(report)}, iteration=k + 1)
model_registry.register_model("srlm-load", str(model), k + 1, run_id=run_id, upload_local=True,
                              tags={"kfp_run_id": "kfp-load"}, metrics={"shard": k})
"""


def test_eight_tasks_logging_to_one_server_at_once_lose_nothing(server, tmp_path):
    """8 shard tasks at once against the real server (each its own process, as on a cluster): one parent run,
    8 stage runs with all 50 metrics and their artifact each, 8 registered versions with their aliases."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}, "MLFLOW_TRACKING_URI": server}
    tasks = [subprocess.Popen([sys.executable, "-c", LOAD_TASK, str(k), str(tmp_path)], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for k in range(8)]
    outputs = [t.communicate(timeout=600)[0] for t in tasks]
    assert [t.returncode for t in tasks] == [0] * 8, "\n".join(o[-1500:] for o in outputs)
    client = _client()
    experiment = client.get_experiment_by_name("srlm-load").experiment_id
    parents = client.search_runs([experiment], "tags.kfp_run_id = 'kfp-load' and tags.`srlm.kind` = 'pipeline'")
    assert len(parents) == 1  # 8 racing creators leave one parent run
    stages = client.search_runs([experiment], "tags.kfp_run_id = 'kfp-load' and tags.stage = 'sample'")
    assert sorted(int(r.data.tags["iteration"]) for r in stages) == list(range(1, 9))
    for run in stages:
        k = int(run.data.params["shard"])
        assert run.data.metrics == {f"m{j}": float(k * 1000 + j) for j in range(50)}
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["model", "report.md"]  # + the upload
    versions = client.search_model_versions("name = 'srlm-load'")
    assert sorted(int(v.tags["iteration"]) for v in versions) == list(range(1, 9))
    assert {f"iter-{t}" for t in range(1, 9)} <= set(_aliases("srlm-load"))


def test_a_stage_that_failed_and_then_finished_on_a_retry_is_not_named_as_failed(sqlite):
    error = SrlmError("the judge server did not answer")
    tracking.log_stage_failure("srlm-test", "kfp-retried", "judge", error, iteration=2)
    tracking.log_stage("srlm-test", "kfp-retried", "judge", {}, {"replies": 4}, iteration=2)  # the retry
    tracking.log_stage_failure("srlm-test", "kfp-retried", "dpo", SrlmError("out of memory"), iteration=2)
    assert tracking.failed_stages("srlm-test", "kfp-retried") == [
        {"stage": "dpo", "iteration": "2", "error": "SrlmError: out of memory"}]
