"""Shared fixtures: one tiny model and one SFT'd M1 per test session (built locally, real weights)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests run on portable CPU numerics (srlm.numerics): the same bits on any x86-64 processor with AVX2.
os.environ.setdefault("SRLM_CPU_NUMERICS", "portable")

import srlm  # noqa: E402,F401  (pins torch's CPU kernels before any test runs torch)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """M0: the locally built tiny Llama with its BPE tokenizer and chat template."""
    from srlm import tiny_model as tm

    out = tmp_path_factory.mktemp("models") / "m0"
    tm.run(tm.TinyModelConfig.load("tiny"), out)
    return out


@pytest.fixture(scope="session")
def seed_dir(tmp_path_factory) -> Path:
    """The bundled seed set written by the seed stage (ift, eft_train, eft_eval)."""
    from srlm import seed_data

    out = tmp_path_factory.mktemp("seed") / "seed"
    seed_data.run(seed_data.SeedConfig.load("tiny"), out)
    return out


@pytest.fixture(scope="session")
def sft_model(tiny_model, seed_dir, tmp_path_factory) -> Path:
    """M1: the tiny model after seed SFT on IFT + EFT (tiny preset), shared by the stage tests."""
    from srlm import training

    out = tmp_path_factory.mktemp("models") / "m1"
    training.run_sft(
        training.SFTConfig.load("tiny"),
        model=tiny_model,
        ift=seed_dir / "ift.jsonl",
        eft=seed_dir / "eft_train.jsonl",
        out=out,
    )
    return out


def pytest_collection_modifyitems(config, items):
    """The proof-of-learning run first: make test hands each worker one file at a time (pytest-xdist, loadfile),
    so the testbed's file (its two pipeline runs use both cores) starts at once while another worker takes the rest."""
    items.sort(key=lambda item: item.get_closest_marker("testbed") is None)
