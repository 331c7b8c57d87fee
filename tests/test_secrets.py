"""Secrets stay secret (srlm.secrets): a password planted in the judge server's URL goes through validation (the
run's settings logged to MLflow), a judged benchmark logged to MLflow, its reports and the logs, and appears
nowhere: not in the MLflow store's database or artifacts, the stage's files, or what the process printed."""

from __future__ import annotations

import logging
import math

from kfp import dsl
from openai_standin import OpenAIStandIn, completion

import components
from srlm import stages, tracking
from srlm.context import RunContext
from srlm.secrets import redact_params

PLANTED = "PLANTED-s3cr3t-9f8e7d"


def verdict(body):
    top = [{"token": "M", "logprob": math.log(0.7)}, {"token": "m", "logprob": math.log(0.3)}]
    return completion("M", "length", logprobs={"content": [{"token": "M", "logprob": math.log(0.7), "top_logprobs": top}]})


def test_a_planted_password_reaches_no_log_param_report_or_file(tmp_path, tiny_model, monkeypatch, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    root = tmp_path / "mlflow"
    root.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    tracking.ensure_experiment("secrets", (root / "artifacts").as_uri())
    mlflow = {"enabled": True, "experiment": "secrets", "model_name": "secrets"}
    with OpenAIStandIn(verdict) as judge:
        url = judge.url.replace("http://", f"http://judge-user:{PLANTED}@")
        evaluation = {"preset": "tiny", "alpaca_eval": {"references": "bundled:benchmarks/alpaca_eval.jsonl",
                                                        "judge_base_url": url, "judge_model": "judge-70b",
                                                        "max_instructions": 3, "max_new_tokens": 4}}
        groups = {g: {"preset": "tiny"} for g in ("base_model", "data", "sampling", "judging", "training")}
        components.validate.python_func(**groups, evaluation=evaluation, mlflow=mlflow, kfp_run_id="kfp-secret",
                                        base_model_kind="tiny", eft_build=False, iterations=3, hardware={},
                                        metrics=dsl.Metrics(uri=str(tmp_path / "metrics")))
        metrics = stages.run_stage("alpaca_eval", evaluation, RunContext.of(mlflow, "kfp-secret", 1),
                                   model=str(tiny_model), out=str(tmp_path / "out"))
    assert metrics["judged"] == 3 and metrics["judge"].startswith("judge-70b at http://judge-user:***@")
    printed = capfd.readouterr()
    places = {"the MLflow database": (root / "mlflow.db").read_bytes(), "the logs": caplog.text.encode(),
              "stdout and stderr": (printed.out + printed.err).encode()}
    places.update({str(p): p.read_bytes() for p in [*root.rglob("*"), *(tmp_path / "out").rglob("*")] if p.is_file()})
    assert len(places) > 8 and [where for where, data in places.items() if PLANTED.encode() in data] == []
    client = tracking.mlflow_client()
    parent = client.search_runs([client.get_experiment_by_name("secrets").experiment_id],
                                "tags.`srlm.kind` = 'pipeline'")[0]
    assert parent.data.params["evaluation.alpaca_eval.judge_base_url"].startswith("http://judge-user:***@127.0.0.1")


def test_values_under_secret_names_are_masked_and_key_variable_names_kept():
    masked = redact_params({"hf_token": "hf_abc", "db.password": "pw", "aws_secret": "x", "judge_api_key_env": "JUDGE_KEY",
                            "max_new_tokens": 8, "keyword": "owl", "empty_token": ""})
    assert masked == {"hf_token": "***", "db.password": "***", "aws_secret": "***", "judge_api_key_env": "JUDGE_KEY",
                      "max_new_tokens": 8, "keyword": "owl", "empty_token": ""}
