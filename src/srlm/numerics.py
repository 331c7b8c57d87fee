"""CPU numerics: the fastest kernels this processor has (``native``), or the same bits on every x86-64
processor with AVX2 (``portable``).

    SRLM_CPU_NUMERICS=portable make testbed        # what make test, demo, testbed and walkthrough set
    python -m srlm.numerics                         # the mode, and the kernels torch is running
    python -m srlm.numerics fingerprint             # a short seeded SFT + generation run, hashed

torch picks its CPU kernels by the processor's instruction set, and they round differently: ATen's
vectorised kernels come in AVX-512, AVX2 and plain builds, and MKL's GEMM has one code path per
vendor and instruction set. Thousands of training steps turn the last bit into a different model,
so a seeded run is only repeatable on the processor it ran on. ``portable`` pins every choice:

- ``ATEN_CPU_CAPABILITY=avx2``: ATen's AVX2 build on every processor (it uses no approximate
  instructions, so AVX2 hardware of any vendor computes the same bits);
- ``MKL_CBWR=COMPATIBLE``: MKL's conditional numerical reproducibility on its SSE2 branch, the one
  branch MKL runs alike on Intel and non-Intel processors (``MKL_CBWR=AVX2`` is Intel-only: on
  AMD MKL silently takes its own path), with ``MKL_DYNAMIC``/``OMP_DYNAMIC`` off as CNR requires;
- oneDNN capped at AVX2 in strict fp32 (fp32 training does not use it today; a later torch may);
- one torch thread unless a stage's ``threads`` says otherwise: with CNR the thread count is part
  of the result, so it must not follow the machine's core count.

The variables are read when torch runs its first operation, so ``import srlm`` sets them (over any
preset value) and :func:`check` refuses a process whose torch chose its kernels before that. The
cost is speed (MKL's SSE2 GEMM): see ``make bench``. GPUs and vLLM are unaffected.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from srlm.errors import SrlmError

ENV = "SRLM_CPU_NUMERICS"
MODES = ("native", "portable")
PORTABLE_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "COMPATIBLE",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
    "MKL_DYNAMIC": "FALSE",
    "OMP_DYNAMIC": "FALSE",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "ONEDNN_DEFAULT_FPMATH_MODE": "STRICT",
}
PORTABLE_THREADS = 1
# What the portable kernels report once torch runs: ATen's capability and MKL's CNR branch.
PORTABLE_KERNELS = {"cpu_capability": "AVX2", "mkl_branch": "COMPATIBLE"}


def mode() -> str:
    """The numerics mode asked for by ``SRLM_CPU_NUMERICS`` (default ``native``)."""
    value = os.environ.get(ENV, "native").strip().lower() or "native"
    if value not in MODES:
        raise SrlmError(f"{ENV}={os.environ[ENV]!r}: choose {' or '.join(MODES)}")
    return value


def portable() -> bool:
    return mode() == "portable"


def apply_environment() -> None:
    """In portable mode, set the kernel-choosing variables (over any preset value) before torch runs.

    Called by ``import srlm``; torch reads these at its first operation, not at import."""
    if not portable():
        return
    os.environ.update(PORTABLE_ENV)
    # torch's default thread count follows OMP_NUM_THREADS; explicit `threads` settings still win.
    os.environ["OMP_NUM_THREADS"] = str(PORTABLE_THREADS)
    os.environ["MKL_NUM_THREADS"] = str(PORTABLE_THREADS)


def child_environment(mode_: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment for a child process on ``mode_`` numerics: ``base`` (default this process's) without
    any kernel-choosing or thread variable, plus ``SRLM_CPU_NUMERICS``; the child's ``import srlm`` pins."""
    if mode_ not in MODES:
        raise SrlmError(f"unknown CPU numerics {mode_!r}; choose {' or '.join(MODES)}")
    dropped = {*PORTABLE_ENV, "OMP_NUM_THREADS", "MKL_NUM_THREADS"}
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in dropped}
    return {**env, ENV: mode_}


def set_threads(threads: int) -> None:
    """Set torch's CPU threads (0 = the mode's default: the machine's cores, or one when portable)
    and, when portable, check that the portable kernels are the ones running."""
    if threads and threads > 0:
        import torch

        torch.set_num_threads(threads)
    if portable():
        check()


def mkl_branch() -> str:
    """MKL's conditional-numerical-reproducibility branch for GEMM (``OFF`` when CNR is off), as MKL's
    own verbose line reports it for one small product."""
    import torch

    if not torch.backends.mkl.is_available():
        return "none"
    sys.stdout.flush()
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(1)
        os.dup2(captured.fileno(), 1)
        try:
            with torch.backends.mkl.verbose(torch.backends.mkl.VERBOSE_ON):
                torch.ones(2, 2) @ torch.ones(2, 2)
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        captured.seek(0)
        text = captured.read().decode(errors="replace")
    for word in text.split():
        if word.startswith("CNR:"):
            return word.removeprefix("CNR:")
    return "unknown"


@functools.cache
def kernels() -> dict[str, Any]:
    """What torch is running: the mode, ATen's CPU capability, MKL's branch, the thread count."""
    import torch

    return {"mode": mode(), "cpu_capability": torch.backends.cpu.get_cpu_capability(), "mkl_branch": mkl_branch(),
            "torch": torch.__version__}


def check() -> dict[str, Any]:
    """Raise SrlmError unless the portable kernels run (when portable is asked for); return :func:`kernels`."""
    running = kernels()
    if running["mode"] != "portable":
        return running
    wrong = {k: running[k] for k, v in PORTABLE_KERNELS.items() if running[k] != v}
    if not wrong:
        return running
    if "cpu_capability" in wrong and not _has_avx2():
        raise SrlmError(f"{ENV}=portable needs a processor with AVX2 and FMA; this one has neither: set {ENV}=native")
    raise SrlmError(
        f"{ENV}=portable, but torch is running {wrong} instead of {PORTABLE_KERNELS}: it chose its kernels "
        f"before srlm could pin them. Import srlm before running any torch operation, or export "
        + " ".join(f"{k}={v}" for k, v in PORTABLE_ENV.items()) + " before starting Python."
    )


def _has_avx2() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return False
    return " avx2" in flags and " fma" in flags


# ---- the fingerprint: a short seeded SFT + generation run, hashed --------------------------------

FINGERPRINT_PROMPTS = (
    "Give one tip for better sleep.",
    "Describe the sea in one sentence.",
    "What is a prime number?",
    "Name two uses of a paperclip.",
)


def _digest(chunks: Any) -> str:
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()[:16]


def fingerprint(workdir: str | Path | None = None) -> dict[str, Any]:
    """Hashes of a short seeded run on this machine's kernels: the tiny model built from its seed,
    8 SFT steps (TRL) on the bundled seed set, the trained model's logits on four prompts, and
    seeded sampled + greedy replies. Any change of numerics (a kernel, a library upgrade, the code
    of these stages) changes at least the weights' hash."""
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="srlm-fingerprint-"))
        return _fingerprint(Path(workdir))


def _fingerprint(work: Path) -> dict[str, Any]:
    import torch
    from safetensors.torch import load_file

    from srlm import seed_data, tiny_model, training
    from srlm.generation import GenerationOptions
    from srlm.transformers_backend import TransformersGenerator

    running = check()
    tiny_model.run(tiny_model.TinyModelConfig(vocab_size=512, hidden_size=64, num_layers=2, num_heads=2,
                                              intermediate_size=128, max_positions=512), work / "m0")
    seed_data.run(seed_data.SeedConfig.load("tiny"), work / "seed")
    sft = training.SFTConfig.load("tiny", max_steps=8, per_device_batch_size=4, max_length=256, logging_steps=8)
    training.run_sft(sft, model=work / "m0", ift=work / "seed" / "ift.jsonl", eft=work / "seed" / "eft_train.jsonl",
                     out=work / "m1")
    weights = load_file(str(work / "m1" / "model.safetensors"))
    generator = TransformersGenerator(work / "m1", GenerationOptions(backend="transformers"))
    batch = generator.tokenizer([generator.render(p) for p in FINGERPRINT_PROMPTS], return_tensors="pt",
                                padding=True, add_special_tokens=False)
    with torch.no_grad():
        logits = generator.model(**batch).logits
    sampled = generator.generate(list(FINGERPRINT_PROMPTS), n=2, temperature=0.7, top_p=0.9, max_new_tokens=16,
                                 seed=0, desc="fingerprint")
    greedy = generator.generate(list(FINGERPRINT_PROMPTS), n=1, temperature=0.0, max_new_tokens=16, seed=0,
                                desc="fingerprint")
    replies = json.dumps([sampled, greedy], ensure_ascii=False).encode()
    return {
        "weights": _digest(name.encode() + weights[name].numpy().tobytes() for name in sorted(weights)),
        "logits": _digest([logits.numpy().tobytes()]),
        "replies": _digest([replies]),
        "kernels": running,
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m srlm.numerics", description=__doc__.split("\n\n")[0])
    parser.add_argument("what", nargs="?", choices=("kernels", "fingerprint"), default="kernels")
    args = parser.parse_args(argv)
    try:
        result = fingerprint() if args.what == "fingerprint" else check()
    except SrlmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
