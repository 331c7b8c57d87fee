"""Resumable generation stages: sampling and judging save their work in chunks and a retry continues after the
last complete chunk.

A chunk is a shard (``srlm.shards``): chunk c of C of a stage that is shard (k, K) of its run is shard
(k + K*c, K*C), which the generator produces exactly as the full run would (the same global batches or
prompts, seeded by their global position). So the chunks together are byte for byte the uninterrupted output,
and each is written atomically: a chunk file that exists is complete. The chunk files live in a progress
directory beside the output (or, with a model volume, on it: a retried pod gets a fresh local disk), with a
manifest of what they were made from; a retry with other inputs or settings starts over.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from srlm.io import Record, file_digest, write_json
from srlm.shards import is_sharded, read_shard, write_shard

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def fingerprint(**inputs: Any) -> str:
    """A digest of what a stage's output is made from (settings, model path, input file digest, shard)."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


# A directory that outlives the task's pod (the pipeline sets it on GPU tasks: the model cache volume, /cache).
PROGRESS_ENV = "SRLM_PROGRESS_VOLUME"


def progress_dir(out: str | Path, volume: str = "", suffix: str = ".chunks") -> Path:
    """Where the saved progress of output ``out`` goes (its chunks, rounds; a training stage's checkpoints): on the
    model volume, else on the volume ``$SRLM_PROGRESS_VOLUME`` names (a KFP output path is on the pod's own disk,
    which a retried pod does not get back), else beside ``out``. On a volume it is keyed by the output path, which a
    retried task keeps."""
    volume = volume or os.environ.get(PROGRESS_ENV, "")
    if not volume:
        return Path(str(out) + suffix)
    key = hashlib.sha256(str(Path(out).resolve()).encode()).hexdigest()[:16]
    return Path(volume) / "srlm-progress" / f"{Path(out).name}-{key}{suffix}"


@dataclasses.dataclass
class Chunks:
    directory: Path
    parts: list[tuple[tuple[int, int], Path]]  # (the chunk's shard of the whole run, its file)
    resumed: int  # chunks found complete when the stage started

    def todo(self) -> list[tuple[tuple[int, int], Path]]:
        return [(shard, path) for shard, path in self.parts if not path.is_file()]

    def files(self) -> list[Path]:
        return [path for _, path in self.parts]

    def stats(self) -> dict[str, int]:
        return {"chunks": len(self.parts), "chunks_resumed": self.resumed}

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def plan(out: str | Path, items: int, config: Any, model: str | Path, input_path: str | Path,
         shard: tuple[int, int] | None, volume: str = "") -> Chunks | None:
    """The chunks of a generation stage over ``items`` work items, ``config.resume_chunk`` each (None: 0, or one
    chunk would hold them all). Chunks made from other settings, model, input or shard are removed first."""
    if not config.resume_chunk or items <= config.resume_chunk:
        return None
    count = math.ceil(items / config.resume_chunk)
    k, total = shard if shard is not None and is_sharded(shard) else (0, 1)
    made_from = fingerprint(settings=config.to_dict(), model=str(model), input=file_digest(input_path), shard=[k, total])
    directory = open_progress(progress_dir(out, volume),
                              {"made_from": made_from, "chunks": count, "shard": [k, total], "items": items})
    parts = [((k + total * c, total * count), directory / f"chunk-{c:05d}.jsonl") for c in range(count)]
    chunks = Chunks(directory, parts, 0)
    chunks.resumed = len(parts) - len(chunks.todo())
    if chunks.resumed:
        log.info("%s: %d of %d chunks already complete: continuing after them", directory, chunks.resumed, count)
    return chunks


def open_progress(directory: Path, manifest: Mapping[str, Any]) -> Path:
    """``directory`` ready for saved progress made from what ``manifest`` says: what another manifest's run left
    there (other inputs or settings) is removed first, so it is never mixed in."""
    found = directory / MANIFEST
    if found.is_file() and _read(found) != dict(manifest):
        log.warning("%s: saved progress of other inputs or settings: starting over", directory)
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if not found.is_file():
        write_json(found, dict(manifest))
    return directory


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def join_shard(chunks: Chunks, kind: str, out: str | Path, shard: tuple[int, int]
               ) -> tuple[list[Record], dict[str, int]]:
    """The chunks of shard ``shard`` of a fanned-out stage as that shard's file (what the pipeline's merge reads);
    its records (in order) and the generation counts summed."""
    items: list[tuple[int, Record]] = []
    counts: dict[str, int] = {}
    total = 0
    for path in chunks.files():
        head, records = read_shard(path, kind)
        total = head.items
        for _, record in records:
            items.append((record["index"], {k: v for k, v in record.items() if k != "index"}))
        for key, value in head.counts.items():
            counts[key] = counts.get(key, 0) + value
    items.sort(key=lambda item: item[0])
    write_shard(out, kind, shard, total, items, counts)
    return [record for _, record in items], counts


class Rounds:
    """The saved rounds of an iterative stage (prompt generation): round r's generated texts, one file each, in a
    directory with a manifest of what they were made from (other inputs or settings: start over)."""

    def __init__(self, directory: Path, made_from: str):
        self.directory = open_progress(directory, {"made_from": made_from})
        self.replayed = 0

    def load(self, round_no: int) -> list[str] | None:
        texts = _read(self.directory / f"round-{round_no:05d}.json")
        if texts is None:
            return None
        self.replayed += 1
        return texts

    def save(self, round_no: int, texts: list[str]) -> None:
        write_json(self.directory / f"round-{round_no:05d}.json", texts)

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
