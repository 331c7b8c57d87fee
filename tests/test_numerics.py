"""Portable CPU numerics: a seeded run hashes to the same value on any x86-64 processor with AVX2.

The fingerprint is a short seeded SFT + generation run (``python -m srlm.numerics fingerprint``).
Its committed value below was computed with ``SRLM_CPU_NUMERICS=portable`` on an AMD EPYC (Zen 5,
AVX-512) and reproduced bit for bit under qemu emulating an Intel Haswell (AVX2, Intel's MKL path).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from srlm import SrlmError, numerics

# Refresh after an intended change of numerics (torch/transformers/TRL upgrade, a change to the tiny
# model, SFT or generation code): SRLM_CPU_NUMERICS=portable .venv/bin/python -m srlm.numerics fingerprint
FINGERPRINT = {"weights": "18f43f7cd38f417b", "logits": "489506f79ade8514", "replies": "19bb9a4fb23e3abf"}
REFRESH = ("The portable numerics fingerprint changed: a seeded SFT + generation run no longer computes the "
           "committed bits. If you upgraded torch/transformers/TRL or changed the tiny model, SFT or generation on "
           "purpose, refresh FINGERPRINT in tests/test_numerics.py with the output of "
           "`SRLM_CPU_NUMERICS=portable .venv/bin/python -m srlm.numerics fingerprint`; otherwise a change altered "
           "numerics it should not have.")


def run_fingerprint(mode: str, preset: dict[str, str] | None = None, prefix: tuple[str, ...] = (),
                    timeout: int = 600) -> dict:
    """The fingerprint in a fresh process on ``mode`` numerics, its kernel-choosing variables preset to ``preset``."""
    env = {**numerics.child_environment(mode), **(preset or {})}
    done = subprocess.run([*prefix, sys.executable, "-m", "srlm.numerics", "fingerprint"], env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def hashes(result: dict) -> dict:
    return {k: result[k] for k in FINGERPRINT}


@pytest.mark.slow
def test_portable_fingerprint_matches_the_committed_value():
    result = run_fingerprint("portable")
    assert result["kernels"]["cpu_capability"] == "AVX2" and result["kernels"]["mkl_branch"] == "COMPATIBLE"
    assert result["threads"] == 1
    assert hashes(result) == FINGERPRINT, REFRESH


@pytest.mark.slow
@pytest.mark.parametrize("preset", [
    {"ATEN_CPU_CAPABILITY": "avx512", "MKL_CBWR": "AUTO", "MKL_ENABLE_INSTRUCTIONS": "AVX512",
     "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX", "OMP_NUM_THREADS": "2", "MKL_DYNAMIC": "TRUE"},
    {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
     "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_NUM_THREADS": "2"},
], ids=["widest", "narrowest"])
def test_portable_fingerprint_ignores_preset_kernel_variables(preset):
    """Whatever the environment asked for, portable mode computes the same bits."""
    assert hashes(run_fingerprint("portable", preset)) == FINGERPRINT, REFRESH


@pytest.mark.slow
def test_native_numerics_follow_the_kernels():
    """Without the pinning another kernel choice gives another model: the fingerprint sees kernel changes."""
    result = run_fingerprint("native", {"ATEN_CPU_CAPABILITY": "default"})
    assert result["kernels"]["cpu_capability"] == "DEFAULT" and result["kernels"]["mkl_branch"] == "OFF"
    assert result["weights"] != FINGERPRINT["weights"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("qemu-x86_64") is None,
                    reason="qemu-x86_64 not installed (apt-get install qemu-user; .ci/run installs it)")
def test_portable_fingerprint_on_an_emulated_intel_processor():
    """The same bits on another vendor's processor: qemu emulates an Intel Haswell (AVX2, no AVX-512), where MKL
    dispatches to its Intel code paths (this takes about 90 s of emulation)."""
    result = run_fingerprint("portable", prefix=("qemu-x86_64", "-cpu", "Haswell-v4"), timeout=1200)
    assert hashes(result) == FINGERPRINT, REFRESH


def test_check_refuses_kernels_chosen_before_pinning():
    """torch fixes its kernels at its first operation: portable mode asked for after that is refused, loudly."""
    code = ("import os, torch; (torch.ones(2, 2) @ torch.ones(2, 2)).sum(); os.environ['SRLM_CPU_NUMERICS'] = 'portable'\n"
            "import srlm.numerics as n\n"
            "try:\n    n.check()\nexcept n.SrlmError as e:\n    print(e)\n")
    done = subprocess.run([sys.executable, "-c", code], env=numerics.child_environment("native"), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "chose its kernels before srlm could pin them" in done.stdout, done.stdout


def test_mode_is_checked(monkeypatch):
    monkeypatch.setenv(numerics.ENV, "fast")
    with pytest.raises(SrlmError, match="SRLM_CPU_NUMERICS='fast': choose native or portable"):
        numerics.mode()
    monkeypatch.setenv(numerics.ENV, "Portable")
    assert numerics.portable()
