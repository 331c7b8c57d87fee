"""OpenAssistant (oasst1 / oasst2) data -> IFT examples and the EFT candidate pool.

Reads either published shape and turns both into the same flat message list:

- **flat message rows** (the hub's parquet/JSONL, the release's ``*.messages.jsonl.gz``): one
  message per record with ``message_id``, ``parent_id`` (null for a tree's root), ``text``,
  ``role`` ("prompter"/"assistant"), ``lang``, ``rank``, ``deleted``, ``review_result``,
  ``synthetic``, ``message_tree_id``, ...
- **nested trees** (the release's ``*.trees.jsonl.gz``): ``{message_tree_id, prompt: {message_id,
  text, role, lang, ..., replies: [{..., rank, replies: [...]}]}}``.

The shape is detected per file from its first record. ``config.source`` is a file (``.jsonl``,
``.jsonl.gz``, ``.parquet``), a directory of such files (searched recursively; when some file
names carry the split name, e.g. ``train-00000.parquet``, only those of ``config.split`` are
read), or a Hugging Face hub id read with ``datasets.load_dataset(source, split=split)``.

Selection (``select``), all on messages that are usable: not deleted, ``review_result`` not
false, non-empty text, language ``config.lang``, and not synthetic when ``skip_synthetic``:

- **IFT**: root prompts (``parent_id`` null, role prompter) whose rank-0 assistant reply is
  usable -> ``{"id": <prompt message_id>, "messages": [user, assistant], "source": "oasst"}``.
  Only first turns; the strict rank 0 (a prompt whose best reply was deleted gives no IFT
  example). Eligible prompts are ordered by message id, shuffled with
  ``random.Random(config.seed)`` and capped at ``config.ift_count`` (0 = all).
- **EFT pool**: root prompts not taken for IFT (neither the same id nor the same text) with at
  least ``config.min_replies`` usable *ranked* assistant replies -> kind ``eft_eval``
  ``{"id", "prompt", "replies", "ranks", "source"}``. Ranks are re-numbered 0..k-1 in the human
  order over the replies that survive the filters (0 = best); replies are listed in message-id
  order, so their position says nothing about their rank.

Prompts are de-duplicated by text (case and surrounding space ignored; the smallest message id
is kept), so the same question cannot land in both IFT and the pool.
"""

from __future__ import annotations

import logging
import math
import os
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from srlm.errors import SrlmError
from srlm.io import Record, hub_rows, is_hub_id, iter_located

log = logging.getLogger(__name__)

FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")
FLAT_FIELDS = ("message_id", "parent_id", "text", "role")
NODE_FIELDS = ("message_id", "text", "role")
ROLES = ("prompter", "assistant")


# ---------------------------------------------------------------- reading


def _suffix_ok(path: Path) -> bool:
    return any(path.name.endswith(s) for s in FILE_SUFFIXES)


def source_files(path: Path, split: str | None = None) -> list[Path]:
    """The data files a local source names: the file itself, or those found under a directory."""
    if path.is_file():
        return [path]
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and _suffix_ok(p) and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        raise SrlmError(f"{path}: directory holds no OpenAssistant data files ({', '.join(FILE_SUFFIXES)})")
    if split:
        token = re.compile(rf"(^|[^a-z]){re.escape(split.lower())}([^a-z]|$)")
        of_split = [p for p in files if token.search(str(p.relative_to(path)).lower())]
        if of_split:
            if len(of_split) < len(files):
                log.info(
                    "%s: reading the %d file(s) of split %r, not the other %d",
                    path,
                    len(of_split),
                    split,
                    len(files) - len(of_split),
                )
            files = of_split
    return files


def _iter_parquet(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        import pyarrow.parquet as pq

        reader = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise SrlmError(f"{path}: cannot read as parquet ({type(e).__name__}: {e})") from None
    row = 0
    for batch in reader.iter_batches(batch_size=4096):
        for record in batch.to_pylist():
            row += 1
            yield f"{path} (row {row})", record


def iter_file(path: Path) -> Iterator[tuple[str, Any]]:
    """``(where, record)`` for each record of one data file; ``where`` is file:line or file (row N)."""
    if path.name.endswith(".parquet"):
        return _iter_parquet(path)
    return iter_located(path)


def detect_shape(record: Any, where: str) -> str:
    """``"flat"`` (message rows) or ``"trees"`` (nested), from one record; else a clear SrlmError."""
    if not isinstance(record, dict):
        raise SrlmError(
            f"{where}: expected a JSON object (an OpenAssistant message or tree), got {type(record).__name__}"
        )
    if isinstance(record.get("prompt"), dict):
        return "trees"
    missing = [f for f in FLAT_FIELDS if f not in record]
    if not missing:
        return "flat"
    fields = ", ".join(sorted(record)[:12]) or "none"
    raise SrlmError(
        f"{where}: not OpenAssistant data in either shape: a flat message row lacks {', '.join(missing)} "
        f"(needs {', '.join(FLAT_FIELDS)}) and a nested tree lacks 'prompt' (an object with "
        f"{', '.join(NODE_FIELDS)} and replies); fields found: {fields}"
    )


def _rank(value: Any, where: str) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer():
            return int(value)
    if isinstance(value, int):
        return value
    raise SrlmError(f"{where}: field 'rank' must be an integer or null, got {value!r}")


def normalize(
    raw: Any, where: str, parent_id: str | None = None, tree_id: str | None = None, nested: bool = False
) -> Record:
    """One message in the common flat form (missing optional fields get neutral defaults)."""
    if not isinstance(raw, dict):
        raise SrlmError(f"{where}: expected a message object, got {type(raw).__name__}")
    required = NODE_FIELDS if nested else FLAT_FIELDS
    missing = [f for f in required if f not in raw]
    if missing:
        raise SrlmError(
            f"{where}: message lacks field(s) {', '.join(missing)} "
            f"(an OpenAssistant message needs {', '.join(required)})"
        )
    if raw["role"] not in ROLES:
        raise SrlmError(f"{where}: field 'role' must be 'prompter' or 'assistant', got {raw['role']!r}")
    text = raw["text"]
    if text is not None and not isinstance(text, str):
        raise SrlmError(f"{where}: field 'text' must be a string, got {type(text).__name__}")
    message_id = str(raw["message_id"])
    parent = raw.get("parent_id", parent_id) if not nested else parent_id
    return {
        "message_id": message_id,
        "parent_id": None if parent is None else str(parent),
        "text": text or "",
        "role": raw["role"],
        "lang": raw.get("lang"),
        "rank": _rank(raw.get("rank"), where),
        "deleted": bool(raw.get("deleted") or False),
        "review_result": raw.get("review_result"),
        "synthetic": bool(raw.get("synthetic") or False),
        "message_tree_id": str(raw.get("message_tree_id") or tree_id or ""),
    }


def flatten_tree(tree: dict[str, Any], where: str) -> list[Record]:
    """A nested tree's messages in the flat form, parents before children."""
    root = tree["prompt"]
    tree_id = str(tree.get("message_tree_id") or (root.get("message_id") if isinstance(root, dict) else "") or "")
    out: list[Record] = []
    stack: list[tuple[Any, str | None, str]] = [(root, None, "prompt")]
    while stack:
        node, parent, path = stack.pop()
        message = normalize(node, f"{where} ({path})", parent_id=parent, tree_id=tree_id, nested=True)
        out.append(message)
        replies = node.get("replies") or []
        if not isinstance(replies, list):
            raise SrlmError(f"{where} ({path}): field 'replies' must be a list of messages")
        for i in range(len(replies) - 1, -1, -1):
            stack.append((replies[i], message["message_id"], f"{path}.replies[{i}]"))
    return out


def messages_from_records(records: Iterable[tuple[str, Any]]) -> Iterator[Record]:
    """Flat messages from ``(where, record)`` pairs of one file; the first record fixes the shape."""
    shape = None
    for where, record in records:
        if shape is None:
            shape = detect_shape(record, where)
        if shape == "trees":
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), dict):
                raise SrlmError(f"{where}: expected a nested tree like the first record (an object with 'prompt')")
            yield from flatten_tree(record, where)
        else:
            yield normalize(record, where)


def _hub_records(source: str, split: str) -> Iterator[tuple[str, Any]]:
    rows = hub_rows(source, split, "a .jsonl, .jsonl.gz or .parquet file of OpenAssistant messages or trees, or a "
                                   "directory of them")
    for i, record in enumerate(rows, start=1):
        yield f"{source} [{split}] (row {i})", record


def load_messages(source: str, split: str = "train") -> list[Record]:
    """Every message of a local path or hub id, in the common flat form (duplicates by id dropped)."""
    path = Path(os.path.expanduser(source))
    if path.exists():
        streams = [(str(p), iter_file(p)) for p in source_files(path, split)]
    elif not is_hub_id(source):
        raise SrlmError(
            f"{source}: no such file or directory (expected OpenAssistant data: {', '.join(FILE_SUFFIXES)})"
        )
    else:
        streams = [(source, _hub_records(source, split))]
    messages: list[Record] = []
    seen: set[str] = set()
    duplicates = 0
    for name, records in streams:
        count = 0
        for message in messages_from_records(records):
            count += 1
            if message["message_id"] in seen:
                duplicates += 1
                continue
            seen.add(message["message_id"])
            messages.append(message)
        if not count:
            log.warning("%s: no records", name)
    if duplicates:
        log.warning(
            "%s: %d messages appear more than once (same message_id); kept the first of each", source, duplicates
        )
    if not messages:
        raise SrlmError(f"{source}: no OpenAssistant messages found")
    return messages


# ---------------------------------------------------------------- selection


def _norm_text(text: str) -> str:
    return " ".join(text.split()).casefold()


def select(messages: list[Record], config: Any) -> tuple[list[Record], list[Record], dict[str, int]]:
    """IFT records, EFT pool records and the counts behind them, from flat messages."""
    lang = str(config.lang).lower()
    skip_synthetic = config.skip_synthetic
    counts: Counter[str] = Counter(messages=len(messages))

    def usable(m: Record) -> str | None:
        """None when usable, else why not."""
        if m["deleted"]:
            return "deleted"
        if m["review_result"] is False:
            return "failed_review"
        if not m["text"].strip():
            return "empty"
        if skip_synthetic and m["synthetic"]:
            return "synthetic"
        if str(m["lang"] or "").lower() != lang:
            return "other_lang"
        return None

    replies: dict[str, list[Record]] = defaultdict(list)
    for m in messages:
        if m["parent_id"] is not None and m["role"] == "assistant":
            replies[m["parent_id"]].append(m)

    roots = [m for m in messages if m["parent_id"] is None and m["role"] == "prompter"]
    counts["root_prompts"] = len(roots)
    langs = Counter(str(m["lang"]) for m in roots)
    prompts = []
    for m in roots:
        why = usable(m)
        if why:
            counts[f"prompts_skipped_{why}"] += 1
        else:
            prompts.append(m)
    counts[f"{lang}_prompts"] = sum(1 for m in roots if str(m["lang"] or "").lower() == lang)
    if not prompts:
        skipped = {k.removeprefix("prompts_skipped_"): v for k, v in counts.items() if k.startswith("prompts_skipped_")}
        raise SrlmError(
            f"{config.source}: no usable {lang!r} first-turn prompts among {len(roots)} root prompts "
            f"(languages seen: {dict(langs.most_common(8))}; skipped: {skipped})"
        )

    # De-duplicate prompts by text (smallest id kept), so one question cannot be in both sets.
    prompts.sort(key=lambda m: m["message_id"])
    by_text: dict[str, Record] = {}
    for m in prompts:
        by_text.setdefault(_norm_text(m["text"]), m)
    counts["prompts_duplicate_text"] = len(prompts) - len(by_text)
    prompts = sorted(by_text.values(), key=lambda m: m["message_id"])
    counts["prompts_usable"] = len(prompts)

    ranked: dict[str, list[Record]] = {}
    for m in prompts:
        ok = [r for r in replies.get(m["message_id"], []) if usable(r) is None]
        ranked[m["message_id"]] = sorted(
            (r for r in ok if r["rank"] is not None), key=lambda r: (r["rank"], r["message_id"])
        )

    counts["rankable_prompts"] = sum(1 for rs in ranked.values() if len(rs) >= config.min_replies)
    ift_eligible = [m for m in prompts if ranked[m["message_id"]] and ranked[m["message_id"]][0]["rank"] == 0]
    counts["ift_eligible"] = len(ift_eligible)
    if not ift_eligible:
        raise SrlmError(
            f"{config.source}: {len(prompts)} usable {lang!r} first-turn prompts, but none has a usable rank-0 "
            "assistant reply (not deleted, review passed, same language), so there is no IFT example to build"
        )
    rng = random.Random(config.seed)
    chosen = list(ift_eligible)
    rng.shuffle(chosen)
    if config.ift_count and config.ift_count > 0:
        chosen = chosen[: config.ift_count]
    ift = [
        {
            "id": m["message_id"],
            "messages": [
                {"role": "user", "content": m["text"]},
                {"role": "assistant", "content": ranked[m["message_id"]][0]["text"]},
            ],
            "source": "oasst",
        }
        for m in chosen
    ]
    ift_ids = {m["message_id"] for m in chosen}

    pool = []
    for m in prompts:
        if m["message_id"] in ift_ids:
            continue
        rs = ranked[m["message_id"]]
        if len(rs) < config.min_replies:
            counts["pool_skipped_too_few_ranked_replies"] += 1
            continue
        if len({r["rank"] for r in rs}) != len(rs):
            counts["pool_skipped_duplicate_ranks"] += 1
            continue
        order = {r["message_id"]: new_rank for new_rank, r in enumerate(rs)}
        listed = sorted(rs, key=lambda r: r["message_id"])
        pool.append(
            {
                "id": m["message_id"],
                "prompt": m["text"],
                "replies": [r["text"] for r in listed],
                "ranks": [order[r["message_id"]] for r in listed],
                "source": "oasst",
            }
        )
    counts["ift"] = len(ift)
    counts["eft_pool"] = len(pool)
    counts["eft_pool_replies"] = sum(len(r["replies"]) for r in pool)
    counts["eft_pool_pairs"] = sum(len(r["replies"]) * (len(r["replies"]) - 1) // 2 for r in pool)
    return ift, pool, dict(counts)


def build(config: Any) -> tuple[list[Record], list[Record]]:
    """(IFT records, EFT pool records) from ``config.source`` (a SeedConfig)."""
    if config.min_replies < 2:
        raise SrlmError(f"min_replies must be >= 2 (a pool prompt needs replies to compare), got {config.min_replies}")
    messages = load_messages(config.source, config.split)
    ift, pool, counts = select(messages, config)
    log.info("oasst %s: %s", config.source, counts)
    if not pool:
        rankable = counts["rankable_prompts"]
        if rankable:
            fix = (f"the {len(ift)} IFT examples (ift_count={config.ift_count}) took all {rankable} prompts with "
                   f">= {config.min_replies} ranked replies: set ift_count below {counts['ift_eligible']} (e.g. "
                   f"{max(1, counts['ift_eligible'] // 2)}) to leave prompts for the judge data")
        else:
            fix = f"no prompt has {config.min_replies} ranked replies: lower min_replies or give more data"
        raise SrlmError(f"{config.source}: the EFT pool would be empty, so the judge (EFT) data cannot be built: {fix}")
    return ift, pool
