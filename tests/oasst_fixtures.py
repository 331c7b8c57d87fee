"""Small OpenAssistant-shaped fixtures written for these tests (original text, not from oasst).

``trees()`` is the canonical data in the nested shape; the writers turn it into every shape the
reader accepts: flat message rows (JSONL, JSONL.gz, parquet) and nested trees (JSONL).

What the data holds, so the expected results can be read off:

- English first-turn prompts with a usable rank-0 reply (IFT-eligible): t-basil (3 ranked
  replies, one with a second turn below it), t-bread (1 reply), t-rust (2 ranked + 1 deleted),
  t-sleep (4 ranked), t-tides, t-knots, t-moss, t-chess (2 ranked each) -> 8.
- Pool-eligible (>= 2 usable ranked replies): all of those but t-bread, plus t-kite, whose
  rank-0 reply is deleted (no IFT example; pool ranks re-numbered 1,2 -> 0,1) -> 8.
- Never used: t-garten (German), t-cocina (Spanish), t-gone (deleted prompt), t-spam (failed
  review), t-robot (synthetic prompt), t-unranked (replies without ranks), t-empty (no replies).
"""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path
from typing import Any

ENGLISH_IFT = ["t-basil", "t-bread", "t-rust", "t-sleep", "t-tides", "t-knots", "t-moss", "t-chess"]
ENGLISH_POOL = ["t-basil", "t-rust", "t-sleep", "t-tides", "t-knots", "t-moss", "t-chess", "t-kite"]
SECOND_TURN_TEXT = "And how often should I feed it?"


def _msg(mid: str, role: str, text: str, rank: int | None = None, lang: str = "en", replies=None, **extra) -> dict:
    m = {
        "message_id": mid,
        "text": text,
        "role": role,
        "lang": lang,
        "review_count": 3,
        "review_result": True,
        "deleted": False,
        "rank": rank,
        "synthetic": False,
        "model_name": None,
        "replies": replies or [],
    }
    m.update(extra)
    return m


def _tree(mid: str, text: str, replies: list[dict], lang: str = "en", **extra) -> dict:
    return {
        "message_tree_id": mid,
        "tree_state": "ready_for_export",
        "prompt": _msg(mid, "prompter", text, lang=lang, replies=replies, **extra),
    }


def trees() -> list[dict[str, Any]]:
    a = "assistant"
    return [
        _tree(
            "t-basil",
            "My basil plant keeps wilting on the kitchen windowsill. What am I doing wrong?",
            [
                _msg(
                    "t-basil-r0",
                    a,
                    "Basil wilts mostly from thirst or from cold glass at night. Water when the top "
                    "centimetre of soil is dry, and pull the pot back from the window after sunset.",
                    rank=0,
                    replies=[
                        _msg(
                            "t-basil-r0-p",
                            "prompter",
                            SECOND_TURN_TEXT,
                            replies=[
                                _msg(
                                    "t-basil-r0-p-r0",
                                    a,
                                    "Every two to three weeks in summer, with a weak liquid feed.",
                                    rank=0,
                                ),
                            ],
                        ),
                    ],
                ),
                _msg("t-basil-r1", a, "It probably needs a bigger pot.", rank=1),
                _msg("t-basil-r2", a, "Plants are hard. Maybe buy a plastic one.", rank=2),
            ],
        ),
        _tree(
            "t-bread",
            "Why did my bread come out dense?",
            [
                _msg("t-bread-r0", a, "Usually the dough did not rise long enough, or the yeast was old.", rank=0),
            ],
        ),
        _tree(
            "t-rust",
            "How can I get light rust off a bicycle chain?",
            [
                _msg(
                    "t-rust-r0",
                    a,
                    "Scrub it with a stiff brush and a little degreaser, wipe it dry, then oil every link.",
                    rank=0,
                ),
                _msg("t-rust-r1", a, "Use some oil on it.", rank=1),
                _msg("t-rust-r2", a, "Buy a new bike.", rank=2, deleted=True),
            ],
        ),
        _tree(
            "t-sleep",
            "Give me three tips to fall asleep faster.",
            [
                _msg(
                    "t-sleep-r0",
                    a,
                    "1. Keep the same bedtime. 2. No screens for the last hour. 3. Keep the room cool.",
                    rank=0,
                ),
                _msg("t-sleep-r1", a, "Keep a steady bedtime and avoid coffee after lunch.", rank=1),
                _msg("t-sleep-r2", a, "Count sheep.", rank=2),
                _msg("t-sleep-r3", a, "I do not sleep, I am a program.", rank=3),
            ],
        ),
        _tree(
            "t-tides",
            "What causes the tides?",
            [
                _msg(
                    "t-tides-r0",
                    a,
                    "Mainly the Moon's gravity pulling on the oceans, with a smaller push from the Sun.",
                    rank=0,
                ),
                _msg("t-tides-r1", a, "The wind.", rank=1),
            ],
        ),
        _tree(
            "t-knots",
            "Which knot should I use to tie a boat to a post?",
            [
                _msg(
                    "t-knots-r0",
                    a,
                    "A clove hitch is quick; a round turn and two half hitches holds better under load.",
                    rank=0,
                ),
                _msg("t-knots-r1", a, "Any knot works if you pull it tight.", rank=1),
            ],
        ),
        _tree(
            "t-moss",
            "How do I get rid of moss on a patio?",
            [
                _msg(
                    "t-moss-r0",
                    a,
                    "Brush it off when dry, then improve drainage and sunlight so it does not return.",
                    rank=0,
                ),
                _msg("t-moss-r1", a, "Pour boiling water on it.", rank=1),
            ],
        ),
        _tree(
            "t-chess",
            "What is a good first move in chess for a beginner?",
            [
                _msg(
                    "t-chess-r0", a, "Moving the king's pawn two squares opens lines for your queen and bishop.", rank=1
                ),
                _msg(
                    "t-chess-r1",
                    a,
                    "Push the king's pawn two squares: it controls the centre and frees two pieces.",
                    rank=0,
                ),
            ],
        ),
        _tree(
            "t-kite",
            "How do I fly a kite when there is little wind?",
            [
                _msg("t-kite-r0", a, "Deleted answer.", rank=0, deleted=True),
                _msg(
                    "t-kite-r1",
                    a,
                    "Choose a light kite, find open ground, and let line out slowly as it climbs.",
                    rank=1,
                ),
                _msg("t-kite-r2", a, "Run fast.", rank=2),
            ],
        ),
        _tree(
            "t-garten",
            "Wie oft sollte ich meinen Rasen mähen?",
            [
                _msg("t-garten-r0", a, "Im Sommer etwa einmal pro Woche.", rank=0, lang="de"),
                _msg("t-garten-r1", a, "Wenn er hoch ist.", rank=1, lang="de"),
            ],
            lang="de",
        ),
        _tree(
            "t-cocina",
            "¿Cómo hago un buen gazpacho?",
            [
                _msg(
                    "t-cocina-r0",
                    a,
                    "Tomates maduros, pepino, pimiento, ajo, aceite y vinagre, bien triturados y fríos.",
                    rank=0,
                    lang="es",
                ),
                _msg("t-cocina-r1", a, "Con tomate.", rank=1, lang="es"),
            ],
            lang="es",
        ),
        _tree(
            "t-gone",
            "This prompt was removed by its author.",
            [
                _msg("t-gone-r0", a, "An answer to a removed prompt.", rank=0),
                _msg("t-gone-r1", a, "Another answer to it.", rank=1),
            ],
            deleted=True,
        ),
        _tree(
            "t-spam",
            "buy cheap watches now now now",
            [
                _msg("t-spam-r0", a, "I cannot help with that.", rank=0),
                _msg("t-spam-r1", a, "Sure.", rank=1),
            ],
            review_result=False,
        ),
        _tree(
            "t-robot",
            "Write a short poem about the sea.",
            [
                _msg(
                    "t-robot-r0",
                    a,
                    "Grey waves fold / over stones grown old.",
                    rank=0,
                    synthetic=True,
                    model_name="made-up-model",
                ),
                _msg("t-robot-r1", a, "The sea is big.", rank=1, synthetic=True, model_name="made-up-model"),
            ],
            synthetic=True,
            model_name="made-up-model",
        ),
        _tree(
            "t-unranked",
            "Is it safe to eat raw cookie dough?",
            [
                _msg("t-unranked-r0", a, "Raw flour and raw egg can carry germs, so it is safer baked.", rank=None),
                _msg("t-unranked-r1", a, "Yes.", rank=None),
            ],
        ),
        _tree("t-empty", "Does anyone read these?", []),
    ]


def flat_rows(tree_list: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The hub's flat shape: one row per message with parent_id and message_tree_id, no replies."""
    rows = []

    def walk(node: dict, parent: str | None, tree_id: str) -> None:
        row = {k: v for k, v in node.items() if k != "replies"}
        row.update({"parent_id": parent, "message_tree_id": tree_id, "user_id": "u-" + node["message_id"]})
        rows.append(row)
        for child in node["replies"]:
            walk(child, node["message_id"], tree_id)

    for tree in copy.deepcopy(tree_list if tree_list is not None else trees()):
        walk(tree["prompt"], None, tree["message_tree_id"])
    return rows[::-1]  # children before parents: the reader must not depend on row order


def nested_trees_for_file() -> list[dict[str, Any]]:
    """Trees as a release file has them: replies carry parent_id, the root does not."""
    out = copy.deepcopy(trees())

    def walk(node: dict) -> None:
        for child in node["replies"]:
            child["parent_id"] = node["message_id"]
            walk(child)

    for tree in out:
        walk(tree["prompt"])
    return out


def _write_jsonl(path: Path, records: list[dict], compress: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if compress:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def write_flat_jsonl(path: Path) -> Path:
    return _write_jsonl(path, flat_rows())


def write_flat_jsonl_gz(path: Path) -> Path:
    return _write_jsonl(path, flat_rows(), compress=True)


def write_trees_jsonl(path: Path) -> Path:
    return _write_jsonl(path, nested_trees_for_file())


def write_flat_parquet(path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    rows = flat_rows()
    # As on the hub: rank is a nullable integer column, the rest plain columns.
    schema = pa.schema(
        [
            ("message_id", pa.string()),
            ("parent_id", pa.string()),
            ("user_id", pa.string()),
            ("text", pa.string()),
            ("role", pa.string()),
            ("lang", pa.string()),
            ("review_count", pa.int32()),
            ("review_result", pa.bool_()),
            ("deleted", pa.bool_()),
            ("rank", pa.int32()),
            ("synthetic", pa.bool_()),
            ("model_name", pa.string()),
            ("message_tree_id", pa.string()),
        ]
    )
    table = pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows], schema=schema)
    pq.write_table(table, path)
    return path
