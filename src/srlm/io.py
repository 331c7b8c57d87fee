"""JSONL record kinds shared by the stages, validated on read, written atomically.

Every dataset artifact is JSONL, one record per line. A reader checks each record against its
kind and fails with ``file:line`` and the field at fault. Writers go through a temporary file in
the same directory and an ``os.replace``, so a reader never sees half a file and a failed stage
leaves nothing behind.
"""

from __future__ import annotations

import codecs
import contextlib
import gzip
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from srlm.errors import SrlmError

Record = dict[str, Any]


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_nonempty_str(v: Any) -> bool:
    return isinstance(v, str) and v.strip() != ""


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_score(v: Any) -> bool:
    return _is_number(v) and 0 <= v <= 5


def _is_optional_score(v: Any) -> bool:
    return v is None or _is_score(v)


ROLES = ("system", "user", "assistant")


def _is_messages(v: Any) -> bool:
    return isinstance(v, list) and len(v) >= 2 and all(isinstance(m, dict) for m in v)


def _messages_problem(messages: list[dict]) -> str | None:
    """What is wrong with a conversation's turns (None: nothing): roles, empty texts, the last turn."""
    for i, m in enumerate(messages):
        if m.get("role") not in ROLES:
            return f"message {i} has role {m.get('role')!r}; roles are {', '.join(ROLES)}"
        if not _is_nonempty_str(m.get("content")):
            return f"message {i} ({m['role']}) has no text in 'content'"
    if messages[-1]["role"] != "assistant":
        return f"the last message is the {messages[-1]['role']}'s; it must be the assistant's (what SFT learns)"
    return None


def _is_str_list(min_len: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and len(v) >= min_len and all(_is_str(x) for x in v)


def _is_judged_replies(v: Any) -> bool:
    return isinstance(v, list) and len(v) >= 1 and all(
        isinstance(r, dict)
        and _is_str(r.get("text"))
        and _is_str_list(0)(r.get("judge_outputs"))
        and isinstance(r.get("scores"), list)
        and all(_is_optional_score(s) for s in r["scores"])
        and _is_optional_score(r.get("mean"))
        for r in v
    )


# kind -> {field: (check, what the field must be)}
SCHEMAS: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "ift": {
        "messages": (_is_messages, "a list of at least 2 {role, content} messages ending with an assistant turn"),
    },
    "eft": {
        "prompt": (_is_nonempty_str, "a non-empty string"),
        "response": (_is_nonempty_str, "a non-empty string"),
        "judgement": (_is_nonempty_str, "a non-empty string ending with the score line"),
        "score": (_is_number, "a number from 0 to 5"),
    },
    "eft_eval": {
        "prompt": (_is_nonempty_str, "a non-empty string"),
        "replies": (_is_str_list(2), "a list of at least 2 reply strings"),
        "ranks": (lambda v: isinstance(v, list) and all(isinstance(r, int) for r in v), "a list of int ranks (0 = best)"),
    },
    "prompt": {
        "id": (_is_nonempty_str, "a non-empty string"),
        "prompt": (_is_nonempty_str, "a non-empty string"),
    },
    "candidates": {
        "id": (_is_nonempty_str, "a non-empty string"),
        "prompt": (_is_nonempty_str, "a non-empty string"),
        "replies": (_is_str_list(1), "a list of reply strings"),
    },
    "judgements": {
        "id": (_is_nonempty_str, "a non-empty string"),
        "prompt": (_is_nonempty_str, "a non-empty string"),
        "replies": (_is_judged_replies, "a list of {text, judge_outputs, scores, mean} objects, each score and mean "
                                        "null or a finite number from 0 to 5"),
    },
    "pair": {
        "prompt": (_is_nonempty_str, "a non-empty string"),
        "chosen": (_is_nonempty_str, "a non-empty string"),
        "rejected": (_is_str, "a string (an empty reply is a legitimate worst reply)"),
        "chosen_score": (_is_number, "a finite number"),
        "rejected_score": (_is_number, "a finite number"),
    },
}


UNIQUE_IDS = ("prompt", "candidates", "judgements")  # kinds whose records later stages find by id


def _check_record(kind: str, record: Any, where: str) -> None:
    if not isinstance(record, dict):
        raise SrlmError(f"{where}: expected a JSON object ({kind} record), got {type(record).__name__}")
    for name, (check, what) in SCHEMAS[kind].items():
        if name not in record:
            raise SrlmError(f"{where}: missing field '{name}' ({kind} record needs {', '.join(SCHEMAS[kind])})")
        if not check(record[name]):
            raise SrlmError(f"{where}: field '{name}' must be {what}")
    if kind == "ift" and (problem := _messages_problem(record["messages"])):
        raise SrlmError(f"{where}: field 'messages': {problem}")
    if kind == "eft" and not 0 <= record["score"] <= 5:
        raise SrlmError(f"{where}: field 'score' must be from 0 to 5, got {record['score']}")
    if kind == "pair":
        if record["chosen"] == record["rejected"]:
            raise SrlmError(f"{where}: 'chosen' and 'rejected' are the same text: DPO learns nothing from the pair")
        if record["chosen_score"] < record["rejected_score"]:
            raise SrlmError(f"{where}: chosen_score {record['chosen_score']} is below rejected_score "
                            f"{record['rejected_score']}: the pair is inverted (swap chosen and rejected)")
    if kind == "eft_eval" and (
        len(record["ranks"]) != len(record["replies"]) or len(set(record["ranks"])) != len(record["ranks"])
    ):
        raise SrlmError(f"{where}: field 'ranks' must give one distinct rank per reply")


def validate(kind: str, record: Any, where: str = "<record>") -> Record:
    """Check one record of ``kind``; raise SrlmError naming ``where`` and the field at fault."""
    if kind not in SCHEMAS:
        raise ValueError(f"unknown record kind {kind!r}; known: {', '.join(SCHEMAS)}")
    _check_record(kind, record, where)
    return record


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def iter_located(path: str | os.PathLike) -> Iterator[tuple[str, Any]]:
    """Yield ``("file:line", record)`` for each JSON line (gzip too), so later checks can name the line.
    UTF-8 only; a byte-order mark (as Windows tools write) and CRLF line ends are fine; NaN and Infinity are not
    JSON numbers and are refused."""
    path = Path(path)
    if not path.is_file():
        raise SrlmError(f"{path}: no such file")
    opener = gzip.open if path.name.endswith(".gz") else open
    lineno = 0
    try:
        with opener(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                where = f"{path}:{lineno}"
                if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                    raw = raw[len(codecs.BOM_UTF8):]
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise SrlmError(f"{where}: not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1}); "
                                    "save the file as UTF-8") from None
                if not line.strip():
                    continue
                try:
                    record = json.loads(line, parse_constant=_no_constant)
                except json.JSONDecodeError as e:
                    raise SrlmError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
                except ValueError as e:
                    raise SrlmError(f"{where}: not valid JSON ({e})") from None
                yield where, record
    except (OSError, EOFError) as e:  # unreadable, truncated or corrupt (.gz) file
        raise SrlmError(f"{path}: cannot read after line {lineno} ({type(e).__name__}: {e})") from None


BUNDLED = "bundled:"  # a data file shipped in the package (srlm/data/<name>), e.g. the tiny benchmark sets


def data_file(path: str | os.PathLike) -> Path:
    """``path`` itself, or for ``bundled:<name>`` the package's own file ``srlm/data/<name>``."""
    text = str(path)
    if text.startswith(BUNDLED):
        return Path(__file__).parent / "data" / text[len(BUNDLED):]
    return Path(path)


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def is_hub_id(source: str) -> bool:
    """``name`` or ``owner/name`` without a data-file suffix: what ``datasets.load_dataset`` would look up (the
    caller checks first that no such local path exists)."""
    return bool(_HUB_ID.match(source)) and not source.endswith((".jsonl", ".json", ".gz", ".parquet"))


def hub_rows(source: str, split: str, local_hint: str) -> list[Record]:
    """The rows of split ``split`` ("" = the first) of dataset ``source`` (a hub id, or a local dataset directory)
    through ``datasets.load_dataset``; SrlmError saying how to pass a local file instead (``local_hint``)."""
    try:
        import datasets

        data = datasets.load_dataset(source, split=split or None)
        if isinstance(data, datasets.DatasetDict):
            data = data[next(iter(data))]
    except Exception as e:  # network, auth and format errors all end here
        offline = any(os.environ.get(v, "").lower() in ("1", "true", "yes")
                      for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
        raise SrlmError(
            f"{source!r} is not a local file or directory, and loading it as a hub dataset (split "
            f"{split or 'the first'!r}) failed: "
            f"{type(e).__name__}: {e}. "
            + ("Hub access is switched off here (HF_HUB_OFFLINE). " if offline else "This machine may be offline. ")
            + f"Download the data elsewhere and pass a local path: {local_hint}") from None
    return [dict(row) for row in data]


def read_records(source: str | os.PathLike, local_hint: str = "a JSONL file") -> list[Record]:
    """Rows of a JSONL file (``bundled:<name>`` too), or of a dataset: a hub id or a local dataset directory, with
    ``#<split>`` to pick a split (``tatsu-lab/alpaca_eval#eval``)."""
    text = str(source)
    path = data_file(text)
    if path.is_file():
        return read_jsonl(path)
    name, _, split = text.partition("#")
    if Path(name).is_dir() or (is_hub_id(name) and not Path(name).exists()):
        rows = hub_rows(name, split, local_hint)
        if not rows:
            raise SrlmError(f"{source}: the dataset is empty")
        return rows
    raise SrlmError(f"{source}: no such file (nor a dataset: a hub id owner/name or a local dataset directory)")


def iter_jsonl(path: str | os.PathLike, kind: str | None = None) -> Iterator[Record]:
    """Yield the records of a JSONL file (``bundled:<name>``: one of the package's), validated against ``kind``."""
    path = data_file(path)
    if not path.is_file():
        raise SrlmError(f"{path}: no such file" + (f" (expected {kind} records in JSONL)" if kind else ""))
    seen: dict[str, str] = {}
    for where, record in iter_located(path):
        if kind is not None:
            _check_record(kind, record, where)
        if kind in UNIQUE_IDS:
            _claim_id(seen, record["id"], where)
        yield record


def _claim_id(seen: dict[str, str], record_id: str, where: str) -> None:
    """Refuse an id already used (stages match records by id); remember where it was used first."""
    if record_id in seen:
        raise SrlmError(f"{where}: id {record_id!r} is already used at {seen[record_id]} "
                        "(ids must be unique: records are matched by id)")
    seen[record_id] = where


def read_jsonl(path: str | os.PathLike, kind: str | None = None, allow_empty: bool = False) -> list[Record]:
    """Read and validate a whole JSONL file; an empty file is an error unless ``allow_empty``."""
    records = list(iter_jsonl(path, kind))
    if not records and not allow_empty:
        raise SrlmError(f"{path}: file is empty (expected {kind or 'JSONL'} records, one per line)")
    return records


def check_output_free(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse to replace an existing output unless asked to (nothing is touched either way)."""
    path = Path(path)
    if path.exists() and not overwrite:
        if path.is_dir() and not any(path.iterdir()):
            return path  # an empty directory (as KFP pre-creates) is free to use
        raise SrlmError(f"{path}: output already exists; choose another path or pass --overwrite")
    return path


def current_umask() -> int:
    """The process's umask (read without changing it where /proc tells it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; on success move it into place, on error remove it."""
    path = Path(path)
    if not directory and path.is_dir():
        raise SrlmError(f"{path}: is a directory; this output is a file: give a file path")
    if directory and path.exists() and not path.is_dir():
        raise SrlmError(f"{path}: is a file; this output is a directory: give a directory path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next(p for p in (path.parent, *path.parent.parents) if p.exists() and not p.is_dir())
        raise SrlmError(f"{path}: cannot be written: {blocker} is a file, not a directory") from None
    mode = 0o777 & ~current_umask()  # mkstemp/mkdtemp make 0600/0700: the umask decides, as for any new file
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        tmp.chmod(mode)
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, mode & 0o666)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if directory and path.is_dir():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_jsonl(path: str | os.PathLike, records: Iterable[Record], kind: str | None = None) -> int:
    """Write records atomically (validated against ``kind`` first when given); return the count."""
    records = list(records)
    if kind is not None:
        for i, record in enumerate(records, start=1):
            _check_record(kind, record, f"{path} (record {i}, before writing)")
    with atomic_path(path) as tmp:
        with tmp.open("w", encoding="utf-8") as f:
            for i, record in enumerate(records, start=1):
                try:
                    f.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
                except ValueError:
                    raise SrlmError(f"{path} (record {i}): NaN or Infinity in a record; JSON has no such numbers") from None
    return len(records)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write one JSON document atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, for lineage."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def read_prompts(path: str | os.PathLike) -> list[Record]:
    """Prompt records ``{id, prompt}``; also takes AlpacaEval-style ``instruction`` rows.

    Records without an id get ``p<line number>``, so a plain list of instructions works too.
    """
    rows: list[Record] = []
    seen: dict[str, str] = {}
    for i, record in enumerate(read_jsonl(path), start=1):
        where = f"{path}:{i}"
        if isinstance(record, dict) and "prompt" not in record and "instruction" in record:
            record = {**record, "prompt": record["instruction"]}
        if isinstance(record, dict) and "id" not in record:
            record = {**record, "id": f"p{i}"}
        elif isinstance(record, dict):
            record = {**record, "id": str(record["id"])}
        rows.append(validate("prompt", record, where))
        _claim_id(seen, record["id"], where)
    return rows
