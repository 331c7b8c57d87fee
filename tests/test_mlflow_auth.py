"""The MLflow server the manifests deploy runs MLflow's basic-auth app: a real `mlflow server --app-name basic-auth`
here, its admin password from the environment (a Secret on the cluster), the pipeline's own user created by the
admin. The pipeline's client logs and registers with MLFLOW_TRACKING_USERNAME/PASSWORD (from a Secret on the
cluster); without them, or with a wrong password, it stops with one line that says what to set."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

import pytest

from srlm import model_registry, tracking
from srlm.errors import SrlmError

ADMIN_PASSWORD = "admin-Passw0rd-for-tests"  # noqa: S105 (a throwaway server's)
PIPELINE_USER, PIPELINE_PASSWORD = "srlm-pipeline", "pipeline-Passw0rd-for-tests"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow_auth")
    ini = root / "basic_auth.ini"
    ini.write_text("[mlflow]\ndefault_permission = READ\n"
                   f"database_uri = sqlite:///{root / 'auth.db'}\nadmin_username = admin\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
           "MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_FLASK_SERVER_SECRET_KEY": "tests-only"}
    log = (root / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", "--host",
                             "127.0.0.1", "--port", str(port), "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                             "--artifacts-destination", str(root / "artifacts"), "--serve-artifacts", "--workers", "1"],
                            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow basic-auth server did not start:\n{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.3)
    yield {"uri": uri, "root": root}
    proc.terminate()
    proc.wait(timeout=30)


def as_user(monkeypatch, uri, user=None, password=None):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    for name, value in (("MLFLOW_TRACKING_USERNAME", user), ("MLFLOW_TRACKING_PASSWORD", password)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    tracking._REACHED.clear()


def test_the_pipeline_user_logs_and_registers_and_nobody_else_gets_in(auth_server, monkeypatch, tmp_path):
    from mlflow.server.auth.client import AuthServiceClient

    uri = auth_server["uri"]
    as_user(monkeypatch, uri, "admin", ADMIN_PASSWORD)
    admin = AuthServiceClient(uri)
    admin.create_user(PIPELINE_USER, PIPELINE_PASSWORD)
    experiment = tracking.ensure_experiment("srlm-auth")
    admin.grant_user_permission(PIPELINE_USER, "experiment", experiment, "MANAGE")
    model_registry.register_model("srlm-auth", "s3://bucket/m0", 0)  # the admin creates the registered model
    admin.grant_user_permission(PIPELINE_USER, "registered_model", "srlm-auth", "MANAGE")

    as_user(monkeypatch, uri, PIPELINE_USER, PIPELINE_PASSWORD)
    run_id = tracking.log_stage("srlm-auth", "kfp-auth", "pairs", {"judging": {"pairs": {"min_margin": 0}}},
                                {"pairs": 12})
    version = model_registry.register_model("srlm-auth", "s3://bucket/m1", 1, run_id=run_id,
                                            tags={"kfp_run_id": "kfp-auth"}, metrics={"pairwise_accuracy": 0.6})
    assert version == "2" and model_registry.promote("srlm-auth", version)["champion_after"] == version

    for who, user, password in (("no credentials", None, None), ("a wrong password", PIPELINE_USER, "wrong")):
        as_user(monkeypatch, uri, user, password)
        with pytest.raises(SrlmError) as error:
            tracking.log_stage("srlm-auth", "kfp-auth", "pairs", {}, {"pairs": 1})
        message = str(error.value)
        assert "\n" not in message and "401" in message and "MLFLOW_TRACKING_" in message, (who, message)
