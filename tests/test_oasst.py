"""OpenAssistant reader and IFT / EFT-pool selection, on small original fixtures in every shape."""

from __future__ import annotations

import json
from pathlib import Path

import oasst_fixtures as fx
import pytest

from srlm import oasst, seed_data
from srlm.errors import SrlmError
from srlm.io import read_jsonl, validate
from srlm.seed_data import SeedConfig

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def config(source, **overrides) -> SeedConfig:
    return SeedConfig.load(source=str(source), **{"ift_count": 0, **overrides})


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("oasst")
    both = d / "dir"
    fx.write_flat_parquet(both / "data" / "train-00000-of-00001.parquet")
    # Another split's file in the same directory: must not be read for split=train.
    other = [fx.flat_rows()[0] | {"message_id": "other-split"}]
    fx._write_jsonl(both / "data" / "validation-00000-of-00001.jsonl", other)
    return {
        "flat_jsonl": fx.write_flat_jsonl(d / "messages.jsonl"),
        "flat_jsonl_gz": fx.write_flat_jsonl_gz(d / "messages.jsonl.gz"),
        "flat_parquet": fx.write_flat_parquet(d / "messages.parquet"),
        "trees_jsonl": fx.write_trees_jsonl(d / "trees.jsonl"),
        "directory": both,
    }


def build(source, **overrides):
    return oasst.build(config(source, **overrides))


def ift_ids(ift):
    return [r["id"] for r in ift]


# ---------------------------------------------------------------- shapes


def test_every_shape_gives_the_same_result(sources):
    results = {name: build(path, ift_count=5, seed=3) for name, path in sources.items()}
    reference = results["flat_jsonl"]
    for name, result in results.items():
        assert result == reference, name
    assert len(reference[0]) == 5 and reference[1]


def test_shape_detection():
    assert oasst.detect_shape({"message_tree_id": "x", "prompt": {"message_id": "a"}}, "w") == "trees"
    assert oasst.detect_shape({"message_id": "a", "parent_id": None, "text": "t", "role": "prompter"}, "w") == "flat"
    with pytest.raises(SrlmError, match=r"w: not OpenAssistant data.*lacks parent_id, role"):
        oasst.detect_shape({"message_id": "a", "text": "t"}, "w")


# ---------------------------------------------------------------- IFT


def test_ift_is_english_first_turn_rank0(sources):
    ift, _ = build(sources["flat_jsonl"])
    assert sorted(ift_ids(ift)) == sorted(fx.ENGLISH_IFT)
    by_id = {r["id"]: r for r in ift}
    for r in ift:
        validate("ift", r)
        assert r["source"] == "oasst"
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
    texts = [m["content"] for r in ift for m in r["messages"]]
    assert fx.SECOND_TURN_TEXT not in texts  # first turns only
    assert not any("Rasen" in t or "gazpacho" in t for t in texts)  # English only
    assert by_id["t-basil"]["messages"][1]["content"].startswith("Basil wilts")  # the rank-0 reply
    assert by_id["t-chess"]["messages"][1]["content"].startswith("Push the king's pawn")  # rank 0 listed second
    assert "t-kite" not in by_id  # its rank-0 reply was deleted: no IFT example


def test_ift_skips_deleted_failed_review_and_synthetic(sources):
    ift, pool = build(sources["flat_jsonl"], ift_count=1)
    used = set(ift_ids(ift)) | {r["id"] for r in pool}
    assert not used & {"t-gone", "t-spam", "t-robot", "t-unranked", "t-empty", "t-garten", "t-cocina"}
    ift, _ = oasst.build(config(sources["flat_jsonl"], skip_synthetic=False))
    assert "t-robot" in ift_ids(ift)


def test_ift_cap_and_seed(sources):
    first = build(sources["flat_jsonl"], ift_count=3, seed=7)
    again = build(sources["trees_jsonl"], ift_count=3, seed=7)
    assert first == again and len(first[0]) == 3
    others = [ift_ids(build(sources["flat_jsonl"], ift_count=3, seed=s)[0]) for s in range(1, 6)]
    assert any(set(o) != set(ift_ids(first[0])) for o in others)
    everything, _ = build(sources["flat_jsonl"], ift_count=0)
    assert len(everything) == len(fx.ENGLISH_IFT)
    more_than_there_are, _ = build(sources["flat_jsonl"], ift_count=100)
    assert len(more_than_there_are) == len(fx.ENGLISH_IFT)


# ---------------------------------------------------------------- EFT pool


def test_pool_is_disjoint_ranked_and_complete(sources):
    ift, pool = build(sources["flat_jsonl"], ift_count=3, seed=1)
    taken = set(ift_ids(ift))
    pool_ids = [r["id"] for r in pool]
    assert not taken & set(pool_ids)
    assert {r["messages"][0]["content"] for r in ift}.isdisjoint({r["prompt"] for r in pool})
    assert sorted(pool_ids) == sorted(set(fx.ENGLISH_POOL) - taken)
    for r in pool:
        validate("eft_eval", r)
        assert sorted(r["ranks"]) == list(range(len(r["replies"])))
        assert len(r["replies"]) >= 2


def test_same_prompt_text_cannot_be_in_both_sets(tmp_path):
    trees = fx.nested_trees_for_file()
    tides = next(t for t in trees if t["message_tree_id"] == "t-tides")
    twin = json.loads(json.dumps(tides).replace("t-tides", "t-twin"))
    twin["prompt"]["text"] = "  what causes the TIDES? "
    path = fx._write_jsonl(tmp_path / "twins.jsonl", [*trees, twin])
    for seed in range(6):
        ift, pool = build(path, ift_count=4, seed=seed)
        ids = set(ift_ids(ift)) | {r["id"] for r in pool}
        assert "t-twin" not in ids  # "t-tides" (smaller id) is kept, its twin dropped


def full_pool(source) -> dict[str, dict]:
    """The pool when the single IFT example is t-bread (one reply, never pool-eligible)."""
    for seed in range(100):
        ift, pool = build(source, ift_count=1, seed=seed)
        if ift_ids(ift) == ["t-bread"]:
            return {r["id"]: r for r in pool}
    raise AssertionError("no seed picks t-bread")


def test_pool_ranks_renumbered_and_order_free(sources):
    pool = full_pool(sources["flat_jsonl"])
    assert sorted(pool) == sorted(fx.ENGLISH_POOL)
    kite = pool["t-kite"]
    assert "Deleted answer." not in kite["replies"]
    assert dict(zip(kite["replies"], kite["ranks"], strict=True)) == {  # human ranks 1, 2 -> 0, 1
        "Choose a light kite, find open ground, and let line out slowly as it climbs.": 0,
        "Run fast.": 1,
    }
    rust = pool["t-rust"]
    assert "Buy a new bike." not in rust["replies"] and rust["ranks"] == [0, 1]  # deleted reply left out
    sleep = pool["t-sleep"]
    assert sleep["replies"][sleep["ranks"].index(0)].startswith("1. Keep the same bedtime")
    assert pool["t-chess"]["ranks"] == [1, 0]  # replies in message-id order, not rank order


def test_pool_min_replies(sources):
    _, pool = build(sources["flat_jsonl"], ift_count=1, min_replies=3)
    assert all(len(r["replies"]) >= 3 for r in pool)
    assert {r["id"] for r in pool} <= {"t-basil", "t-sleep"}
    with pytest.raises(SrlmError, match="min_replies must be >= 2"):
        build(sources["flat_jsonl"], min_replies=1)


def test_ift_takes_precedence_over_the_pool(sources):
    ift, pool = build(sources["flat_jsonl"], ift_count=0)
    assert len(ift) == len(fx.ENGLISH_IFT)
    assert [r["id"] for r in pool] == ["t-kite"]  # the only pool prompt without an IFT example


def test_seed_stage_writes_ift_and_pool(sources, tmp_path):
    ift, pool = build(sources["trees_jsonl"], ift_count=4)
    counts = seed_data.run(config(sources["trees_jsonl"], ift_count=4), tmp_path / "seed")
    assert counts == {"ift": 4, "eft_pool": len(pool)}
    assert read_jsonl(tmp_path / "seed" / "ift.jsonl", "ift") == ift
    assert read_jsonl(tmp_path / "seed" / "eft_pool.jsonl", "eft_eval") == pool


# ---------------------------------------------------------------- errors


def test_bad_shape_names_file_and_missing_fields(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"instruction": "hi", "output": "hello"}) + "\n")
    expected = r"bad\.jsonl:1: not OpenAssistant data.*lacks message_id, parent_id, text, role.*'prompt'"
    with pytest.raises(SrlmError, match=expected):
        build(bad)


def test_malformed_line_and_bad_record_report_file_and_line(tmp_path):
    rows = [json.dumps(r) for r in fx.flat_rows()[:3]]
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join([rows[0], "", rows[1], "{not json"]) + "\n")
    with pytest.raises(SrlmError, match=r"broken\.jsonl:4: not valid JSON"):
        build(broken)
    missing = tmp_path / "missing_role.jsonl"
    row = fx.flat_rows()[1]
    del row["role"]
    missing.write_text(rows[0] + "\n" + json.dumps(row) + "\n")
    with pytest.raises(SrlmError, match=r"missing_role\.jsonl:2: message lacks field\(s\) role"):
        build(missing)
    bad_tree = tmp_path / "bad_tree.jsonl"
    tree = fx.nested_trees_for_file()[0]
    del tree["prompt"]["replies"][1]["text"]
    bad_tree.write_text(json.dumps(tree) + "\n")
    with pytest.raises(SrlmError, match=r"bad_tree\.jsonl:1 \(prompt\.replies\[1\]\): message lacks field\(s\) text"):
        build(bad_tree)


def test_no_english_prompts(sources):
    with pytest.raises(SrlmError, match=r"no usable 'fr' first-turn prompts among 16 root prompts.*languages seen"):
        build(sources["flat_jsonl"], lang="fr")


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(SrlmError, match=r"not a local file or directory.*hub.*local path"):
        build("OpenAssistant/oasst1")


def test_missing_path_is_not_taken_for_a_hub_id(tmp_path):
    with pytest.raises(SrlmError, match="no such file or directory"):
        build(tmp_path / "nowhere.jsonl")
    with pytest.raises(SrlmError, match="no such file or directory"):
        build("data/oasst/messages.parquet")
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(SrlmError, match="holds no OpenAssistant data files"):
        build(empty)


def test_directory_reads_only_the_split(sources):
    messages = oasst.load_messages(str(sources["directory"]), "train")
    assert "other-split" not in {m["message_id"] for m in messages}
    messages = oasst.load_messages(str(sources["directory"]), "validation")
    assert {m["message_id"] for m in messages} == {"other-split"}


# ---------------------------------------------------------------- real data (optional)


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real OpenAssistant samples not present at {SHARED_DATA}")
def test_real_oasst_files():
    validation = SHARED_DATA / "oasst1_en_validation_messages.jsonl"
    messages = oasst.load_messages(str(validation))
    ift, pool, counts = oasst.select(messages, config(validation, ift_count=100))
    assert counts["root_prompts"] == 188 and counts["en_prompts"] == 188  # as the data README says
    assert len(ift) == 100
    assert 80 <= len(pool) <= 88
    assert {r["id"] for r in ift}.isdisjoint(r["id"] for r in pool)
    for r in pool:
        validate("eft_eval", r)
    replies_per_prompt = sum(len(r["replies"]) for r in pool) / len(pool)
    assert 2.5 <= replies_per_prompt <= 3.3  # paper: about 2.85
    _, _, all_counts = oasst.select(messages, config(validation, ift_count=1))
    assert 520 <= all_counts["eft_pool_pairs"] <= 531  # README: 531 better/worse pairs in all

    trees = SHARED_DATA / "oasst_model_eval_en_100_trees.jsonl"
    ift, pool, counts = oasst.select(oasst.load_messages(str(trees)), config(trees, ift_count=40))
    assert counts["root_prompts"] == 100
    assert counts.get("prompts_skipped_synthetic", 0) >= 1
    assert len(ift) == 40 and 40 <= len(pool) <= 60
