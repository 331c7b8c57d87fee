"""Training on several processes with PyTorch's own launcher: one entry point for every layout.

A training stage with ``gpus_per_node`` > 1 (0 = every GPU the task has) starts
``torchrun --standalone --nproc_per_node N -m srlm.distributed REQUEST`` and waits: every worker
runs the same stage code (:func:`srlm.training.train_request`) under DDP, FSDP2 or DeepSpeed ZeRO-3
(TRL's ``fsdp``/``deepspeed`` arguments, ``training.strategy``), rank 0 writes the model directory and
the result. Across nodes a Kubeflow Trainer TrainJob runs the same module under torchrun, which reads
``PET_NNODES``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR``... from the environment the Trainer sets.

The request is a JSON file in a work directory every rank sees: the stage, its config, its paths.
On CPU the workers use gloo (DDP; FSDP and ZeRO sharding need GPUs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from srlm.errors import SrlmError

DEEPSPEED_CONFIGS = Path(__file__).parent / "deepspeed"
RESULT, ERROR = "result.json", "error.txt"


def processes(config: Any) -> int:
    """How many training processes this task runs: ``gpus_per_node``, or with 0 every GPU it has (1 on CPU)."""
    if config.gpus_per_node > 0:
        return config.gpus_per_node
    import torch

    return max(1, torch.cuda.device_count())


def is_worker() -> bool:
    """True inside a torchrun worker (torchrun sets LOCAL_RANK and WORLD_SIZE)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def write_request(work: str | Path, request: dict[str, Any]) -> Path:
    path = Path(work) / "request.json"
    path.write_text(json.dumps(request, indent=1, default=str), encoding="utf-8")
    return path


def worker_command(request: Path, nproc_per_node: int, *, standalone: bool = True) -> list[str]:
    """The torchrun command line of one node (``standalone``: a local rendezvous on a free port)."""
    return [sys.executable, "-m", "torch.distributed.run", *(["--standalone"] if standalone else []),
            "--nproc_per_node", str(nproc_per_node), "-m", "srlm.distributed", str(request)]


def launch(request: dict[str, Any], work: str | Path, nproc_per_node: int) -> dict[str, Any]:
    """Run ``request`` on ``nproc_per_node`` local processes; the result rank 0 wrote, or SrlmError with a
    worker's own message."""
    path = write_request(work, request)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    completed = subprocess.run(worker_command(path, nproc_per_node), env=env, stdout=sys.stderr)
    return read_result(work, completed.returncode)


def read_result(work: str | Path, returncode: int) -> dict[str, Any]:
    work = Path(work)
    if returncode != 0:
        error = work / ERROR
        detail = error.read_text(encoding="utf-8").strip() if error.is_file() else "see the workers' log above"
        raise SrlmError(f"distributed training failed (torchrun exit status {returncode}): {detail}")
    return json.loads((work / RESULT).read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> int:
    """A torchrun worker: run the request; rank 0 writes the result, a failing rank its message."""
    import logging

    from srlm import training

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: torchrun ... -m srlm.distributed REQUEST.json", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format=f"[rank {os.environ.get('RANK', '0')}] %(levelname)s %(name)s: %(message)s")
    request_path = Path(args[0])
    work = request_path.parent
    try:
        request = json.loads(request_path.read_text(encoding="utf-8"))
        metrics = training.train_request(request, work)
    except SrlmError as e:
        (work / ERROR).write_text(str(e), encoding="utf-8")
        print(f"srlm.distributed: error: {e}", file=sys.stderr)
        return 2
    if is_main_process():
        (work / RESULT).write_text(json.dumps(metrics, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
