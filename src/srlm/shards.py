"""Fan-out: a generation stage split into K shards (one task each), merged back to exactly the K = 1 output.

The generator decides which work items a shard produces (``generate(..., shard=(k, K))``: the
transformers backend takes every K-th global batch, vLLM every K-th prompt) and seeds them by
their global position, so the items of all K shards together are the unsharded output. A
shard writes only its items, each with its global ``index``; ``gather`` puts them back in
order and checks that every item is there exactly once. Nothing here depends on which shard
produced an item, so the merged file is the same for any K, and the order in which the shard
files arrive (KFP's ``dsl.Collected`` promises none) does not matter.

A shard file is JSONL. Line 1 is the header, then one line per item of this shard::

    {"srlm_shard": {"kind": "candidates", "shard": 1, "shards": 4, "items": 250,
                    "counts": {"sequences": 250, "truncated": 3}}}
    {"index": 3, "id": "p4", "prompt": "...", "replies": ["...", "..."]}

``items`` is the number of work items over all shards (prompts when sampling, judge requests
when judging). ``counts`` are the shard's generation counts, which the merge sums (the output's
records do not say whether a reply hit the token limit). A shard may hold no item at all (more shards than batches): its header still
says which shard it is, so a missing shard file is told apart from an empty one.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from srlm.errors import SrlmError
from srlm.generation import check_shard
from srlm.io import Record, atomic_path, iter_located

HEADER = "srlm_shard"
KINDS = ("candidates", "judgements")

__all__ = ["HEADER", "KINDS", "ShardHeader", "gather", "is_sharded", "read_shard", "shard_paths_param",
           "write_shard"]


def is_sharded(shard: tuple[int, int] | None) -> bool:
    """True for ``(k, K)`` with K > 1 (a shard writes a shard file); None or K = 1 is the plain stage."""
    return shard is not None and check_shard(shard)[1] > 1


@dataclasses.dataclass(frozen=True)
class ShardHeader:
    path: str
    kind: str
    shard: int
    shards: int
    items: int
    counts: dict[str, int] = dataclasses.field(default_factory=dict)


def write_shard(
    path: str | os.PathLike, kind: str, shard: tuple[int, int], items: int, records: Iterable[tuple[int, Record]],
    counts: dict[str, int] | None = None,
) -> int:
    """Write shard ``shard`` of a ``kind`` output of ``items`` work items: ``(index, record)`` pairs (atomic),
    with the shard's generation ``counts`` in the header."""
    if kind not in KINDS:
        raise ValueError(f"unknown shard kind {kind!r}; known: {', '.join(KINDS)}")
    k, total = check_shard(shard)
    count = 0
    with atomic_path(path) as tmp:
        with tmp.open("w", encoding="utf-8") as f:
            header = {HEADER: {"kind": kind, "shard": k, "shards": total, "items": items, "counts": dict(counts or {})}}
            f.write(json.dumps(header) + "\n")
            for index, record in records:
                if not 0 <= index < items:
                    raise ValueError(f"item index {index} out of range for {items} items")
                f.write(json.dumps({"index": index, **record}, ensure_ascii=False) + "\n")
                count += 1
    return count


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def read_shard(path: str | os.PathLike, kind: str) -> tuple[ShardHeader, list[tuple[str, Record]]]:
    """The header and the ``(file:line, record)`` items of one shard file of ``kind``."""
    located = iter(iter_located(path))
    first = next(located, None)
    if first is None:
        raise SrlmError(f"{path}: empty file, not a shard file (expected a {HEADER!r} header on line 1)")
    where, header = first
    meta = header.get(HEADER) if isinstance(header, dict) else None
    if not isinstance(meta, dict):
        raise SrlmError(f"{where}: not a shard file (line 1 must be the {HEADER!r} header a sharded stage writes; "
                        "a plain output needs no merge)")
    if meta.get("kind") != kind:
        raise SrlmError(f"{where}: a shard of {meta.get('kind')!r} records, expected {kind!r}")
    if not all(_is_count(meta.get(key)) for key in ("shard", "shards", "items")) or not meta["shard"] < meta["shards"]:
        raise SrlmError(f"{where}: bad shard header {meta!r} (need 0 <= shard < shards and an item count)")
    counts = meta.get("counts") or {}
    if not isinstance(counts, dict) or not all(_is_count(v) for v in counts.values()):
        raise SrlmError(f"{where}: bad shard header counts {counts!r} (need non-negative integers)")
    head = ShardHeader(str(path), kind, meta["shard"], meta["shards"], meta["items"], counts)
    records = []
    for where, record in located:
        if not isinstance(record, dict) or not _is_count(record.get("index")):
            raise SrlmError(f"{where}: a shard record must be a JSON object with a non-negative int 'index'")
        if record["index"] >= head.items:
            raise SrlmError(f"{where}: index {record['index']} out of range ({head.items} items over all shards)")
        records.append((where, record))
    return head, records


def gather(paths: Sequence[str | os.PathLike], kind: str) -> tuple[list[Record], int, dict[str, int]]:
    """All items of the K shard files ``paths`` (any order) in their original order, ``index`` removed; K;
    and the shards' generation counts summed.

    SrlmError, naming the file at fault, when a shard file is missing or given twice, the files
    disagree on K or the item count, an item is in two files, or an item is in none.
    """
    if not paths:
        raise SrlmError(f"no {kind} shard files to merge")
    heads: list[ShardHeader] = []
    slots: list[tuple[str, Record] | None] = []
    for path in paths:
        head, records = read_shard(path, kind)
        if heads:
            first = heads[0]
            if (head.shards, head.items) != (first.shards, first.items):
                raise SrlmError(
                    f"{path}: shard {head.shard} of {head.shards} over {head.items} items, but {first.path} is shard "
                    f"{first.shard} of {first.shards} over {first.items} items: shards of different runs")
            twin = next((h for h in heads if h.shard == head.shard), None)
            if twin is not None:
                raise SrlmError(f"{path}: shard {head.shard} of {head.shards} again (also {twin.path})")
        else:
            slots = [None] * head.items
        heads.append(head)
        for where, record in records:
            index = record["index"]
            if slots[index] is not None:
                raise SrlmError(f"{where}: item {index} is also in {slots[index][0]}")
            slots[index] = (where, record)
    total = heads[0].shards
    if len(heads) != total:
        have = sorted(h.shard for h in heads)
        missing = sorted(set(range(total)) - set(have))
        raise SrlmError(f"{len(heads)} {kind} shard file(s) for {total} shards: shard(s) {missing} missing "
                        f"(got shard(s) {have}: {', '.join(h.path for h in heads)})")
    missing_items = [i for i, slot in enumerate(slots) if slot is None]
    if missing_items:
        shown = ", ".join(map(str, missing_items[:10])) + (", ..." if len(missing_items) > 10 else "")
        raise SrlmError(f"{len(missing_items)} of {heads[0].items} {kind} items are in no shard file (items {shown}); "
                        f"shard files: {', '.join(h.path for h in sorted(heads, key=lambda h: h.shard))}")
    out = []
    for slot in slots:
        item = dict(slot[1])  # type: ignore[index]  # every slot is filled (checked above)
        del item["index"]
        out.append(item)
    counts: dict[str, int] = {}
    for head in heads:
        for key, value in head.counts.items():
            counts[key] = counts.get(key, 0) + value
    return out, total, counts


def shard_paths_param(paths: Sequence[str | os.PathLike]) -> dict[str, str]:
    """``{"path.shard.<i>": path}`` for a stage's logged params."""
    return {f"path.shard.{i}": str(Path(p)) for i, p in enumerate(paths)}
