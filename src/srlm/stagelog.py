"""A stage's record: its numbers as KFP ``Metrics`` and, when MLflow is on, a child run of the pipeline run.

:func:`finish` is the last call of every step: it logs the stage's params, its numeric statistics
(flattened, ``srlm.metrics``) and small artifacts (reports, the first lines of large outputs) to
a child run named after the stage, and returns the flat metrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import resource
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from srlm.context import RunContext
from srlm.metrics import numeric_metrics


@dataclasses.dataclass(frozen=True)
class Head:
    """An artifact made of the first ``lines`` lines of a JSONL file (a sample of a large output)."""

    path: str | Path
    lines: int

    def write(self, dest: Path) -> Path | None:
        if not Path(self.path).is_file():
            return None
        with Path(self.path).open(encoding="utf-8") as f:
            dest.write_text("".join(line for _, line in zip(range(self.lines), f)), encoding="utf-8")
        return dest


Artifacts = Mapping[str, "str | Path | Head | None"]


@contextlib.contextmanager
def timed(stats: dict[str, Any]) -> Iterator[None]:
    """Adds ``wall_seconds`` and the process's peak memory (:func:`peak_memory`) to ``stats`` when the block ends."""
    started = time.perf_counter()
    yield
    stats["wall_seconds"] = round(time.perf_counter() - started, 2)
    stats.update(peak_memory())


def peak_memory() -> dict[str, float]:
    """``peak_rss_mb``; on a GPU also ``peak_gpu_memory_gb`` (what this process's torch allocated at most) and
    ``gpu_memory_in_use_gb`` (the whole device now, which counts a vLLM engine's own processes)."""
    out = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    torch = sys.modules.get("torch")  # a stage that never imported torch used no GPU
    if torch is not None and torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        out["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        out["gpu_memory_in_use_gb"] = round((total - free) / 2**30, 2)
    return out


def params_of(config: Any, **paths: Any) -> dict[str, Any]:
    """A config's settings plus its paths (``path.<name>``) as MLflow params."""
    return {**config.to_dict(), **{f"path.{k}": str(v) for k, v in paths.items() if v is not None}}


def log(ctx: RunContext, stage: str, params: Mapping[str, Any], metrics: Mapping[str, Any],
        artifacts: Mapping[str, str | Path] | None = None) -> str | None:
    """One child run of the pipeline run (when MLflow is on); its run id."""
    if not ctx.tracking:
        return None
    from srlm import tracking

    files = {name: str(path) for name, path in (artifacts or {}).items() if path and Path(path).exists()}
    return tracking.log_stage(ctx.experiment, ctx.kfp_run_id, stage, dict(params), dict(metrics), files or None,
                              ctx.iteration)


def finish(ctx: RunContext, stage: str, params: Mapping[str, Any], stats: Mapping[str, Any],
           artifacts: Artifacts | None = None) -> dict[str, float]:
    """Log the stage (params, numeric stats, small artifacts); its flat metrics."""
    metrics = numeric_metrics(stats)
    if ctx.tracking:
        with tempfile.TemporaryDirectory(prefix="srlm-artifacts-") as tmp:
            files: dict[str, str | Path] = {}
            for name, spec in (artifacts or {}).items():
                path = spec.write(Path(tmp) / Path(name).name) if isinstance(spec, Head) else spec
                if path is not None:
                    files[name] = path
            log(ctx, stage, params, metrics, files)
    return metrics


def to_kfp(metrics_artifact: Any, stats: Mapping[str, Any]) -> None:
    """Write the numeric entries of ``stats`` into a KFP ``Metrics`` artifact (sorted, for a stable UI)."""
    for key, value in sorted(numeric_metrics(stats).items()):
        metrics_artifact.log_metric(key, value)
