"""Pipeline: mixing, max_samples, validation split, seeded shuffling, the tokenized-data cache, preview."""

from __future__ import annotations

import copy
import json

import pytest

from kit import RunConfig
from kit.config import ConfigError
from kit.data import DataError, build_tokenized, load_splits, register_dataset
from kit.preview import preview


def chat(i, tag="a"):
    return {
        "messages": [
            {"role": "user", "content": f"{tag} question {i}"},
            {"role": "assistant", "content": f"{tag} answer {i}"},
        ]
    }


@pytest.fixture(autouse=True)
def _fresh_cache(tmp_path, monkeypatch):
    """A cache folder per test, so hits come from this test's own first build."""
    import kit.data.pipeline as P

    monkeypatch.setattr(P, "data_cache_dir", lambda: tmp_path / "data-cache")


@pytest.fixture(autouse=True)
def _sets():
    register_dataset("mix_a", [chat(i, "a") for i in range(20)])
    register_dataset("mix_b", [chat(i, "b") for i in range(5)])


def cfg(tiny_model_dir, tmp_path, **kw):
    base = dict(model=str(tiny_model_dir), dataset="mix_a", cutoff_len=64, output_dir=str(tmp_path / "run"))
    base.update(kw)
    return RunConfig.from_kwargs(**base)


def tags(rows):
    return [r["messages"][0]["content"] for r in rows]


def test_concat_max_samples_and_seeded_shuffle(tiny_model_dir, tmp_path):
    plain = cfg(tiny_model_dir, tmp_path, dataset="mix_a,mix_b", max_samples=4)
    train, ev = load_splits(plain, "sft")
    both = [f"a question {i}" for i in range(4)] + [f"b question {i}" for i in range(4)]
    # no split, no packing: file order, the trainer's seeded sampler shuffles (as TRL/LLaMA-Factory)
    assert len(train) == 8 and ev == [] and tags(train) == both
    c = plain.replace(data__packing=True)  # packing: the order decides which rows share a row
    train = load_splits(c, "sft")[0]
    assert sorted(tags(train)) == sorted(both) and tags(train) != both
    assert tags(load_splits(c, "sft")[0]) == tags(train)  # same seed, same order
    assert tags(load_splits(c.replace(train__seed=7), "sft")[0]) != tags(train)  # another seed, another order
    unshuffled = load_splits(c.replace(data__shuffle=False), "sft")[0]
    assert tags(unshuffled)[:4] == [f"a question {i}" for i in range(4)]
    train, ev = load_splits(plain.replace(data__val_size=2), "sft")  # the held-out rows are drawn at random
    assert len(train) == 6 and len(ev) == 2 and tags(ev) != both[:2]


def test_interleave_probabilities(tiny_model_dir, tmp_path):
    under = cfg(
        tiny_model_dir,
        tmp_path,
        dataset="mix_a,mix_b",
        mix_strategy="interleave_under",
        interleave_probs=[0.5, 0.5],
        shuffle=False,
    )
    rows = load_splits(under, "sft")[0]
    # stops when the short set runs out: every b row once, a rows only as many as were drawn
    assert sum(t.startswith("b") for t in tags(rows)) == 5 and len(rows) < 25
    over = under.replace(data__mix_strategy="interleave_over")
    rows_over = load_splits(over, "sft")[0]
    a_rows = [t for t in tags(rows_over) if t.startswith("a")]
    assert len(set(a_rows)) == 20 and len(rows_over) > 25  # the short set is repeated
    assert tags(load_splits(over, "sft")[0]) == tags(rows_over)  # deterministic with the seed
    skew = under.replace(data__interleave_probs=[0.9, 0.1], data__mix_strategy="interleave_over")
    r = tags(load_splits(skew, "sft")[0])
    assert sum(t.startswith("a") for t in r) > 3 * sum(t.startswith("b") for t in r)
    # the one validator refuses it when the config is built, before any data is read
    with pytest.raises(ConfigError, match="has 3 values for 2 dataset"):
        under.replace(data__interleave_probs=[0.2, 0.3, 0.5])


def test_val_size_and_eval_dataset(tiny_model_dir, tmp_path):
    c = cfg(tiny_model_dir, tmp_path, val_size=0.25)
    train, ev = load_splits(c, "sft")
    assert len(train) == 15 and len(ev) == 5 and not set(tags(train)) & set(tags(ev))
    train2, ev2 = load_splits(c.replace(data__val_size=3), "sft")
    assert len(ev2) == 3 and len(train2) == 17
    # an eval_dataset replaces the split (val_size with it is refused by the config)
    train3, ev3 = load_splits(c.replace(data__eval_dataset="mix_b", data__val_size=0), "sft")
    assert len(train3) == 20 and tags(ev3) == [f"b question {i}" for i in range(5)]
    with pytest.raises(DataError, match="leaves no training rows"):
        load_splits(c.replace(data__val_size=20), "sft")


def test_cache_hit_and_invalidation(tiny_model_dir, tmp_path, default_tokenizer):
    tok = copy.deepcopy(default_tokenizer)
    c = cfg(tiny_model_dir, tmp_path, dataset="mix_b")
    t1, _, info1 = build_tokenized(c, tok, "sft")
    t2, _, info2 = build_tokenized(c, tok, "sft")
    assert not info1["cache_hit"] and info2["cache_hit"] and info1["cache"] == info2["cache"]
    assert t1.to_list() == t2.to_list()
    # each input of the key invalidates it
    for changed in (
        c.replace(data__train_on_prompt=True),
        c.replace(data__mask_history=True),
        c.replace(data__cutoff_len=60),
        c.replace(data__packing=not c.data.packing),
        c.replace(data__max_samples=3),
    ):
        _, _, info = build_tokenized(changed, tok, "sft")
        assert not info["cache_hit"] and info["cache"] != info1["cache"]
    tok.chat_template = tok.chat_template.replace("You are a helpful", "You are a useful")
    t3, _, info = build_tokenized(c, tok, "sft")
    assert not info["cache_hit"] and t3[0]["input_ids"] != t1[0]["input_ids"]
    register_dataset("mix_b", [chat(i, "b") for i in range(4)] + [chat(99, "b")])  # the data changed
    _, _, info = build_tokenized(c, default_tokenizer, "sft")
    assert not info["cache_hit"]
    off = c.replace(data__cache=False)
    _, _, info = build_tokenized(off, default_tokenizer, "sft")
    assert info == {"cache": None, "cache_hit": False}


def test_file_change_invalidates_the_cache(tiny_model_dir, tmp_path, default_tokenizer):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps(chat(i)) for i in range(3)))
    c = cfg(tiny_model_dir, tmp_path, dataset=str(p))
    assert not build_tokenized(c, default_tokenizer, "sft")[2]["cache_hit"]
    assert build_tokenized(c, default_tokenizer, "sft")[2]["cache_hit"]
    p.write_text("\n".join(json.dumps(chat(i)) for i in range(4)))
    train, _, info = build_tokenized(c, default_tokenizer, "sft")
    assert not info["cache_hit"] and len(train) == 4


def test_packed_sft_rows_fit_and_keep_every_example(tiny_model_dir, tmp_path, default_tokenizer):
    c = cfg(tiny_model_dir, tmp_path, packing=True, cutoff_len=128)
    train, _, _ = build_tokenized(c, default_tokenizer, "sft")
    assert all(len(r["input_ids"]) <= 128 and sum(r["seq_lens"]) == len(r["input_ids"]) for r in train)
    assert sum(len(r["seq_lens"]) for r in train) == 20 and len(train) < 20


def test_preview_marks_the_trained_part(tiny_model_dir, tmp_path, default_tokenizer):
    c = cfg(tiny_model_dir, tmp_path)
    items = preview(c, 2, tokenizer=default_tokenizer)
    assert len(items) == 2
    assert items[0]["rendered"].endswith("<|im_start|>assistant\n[[a answer 0<|im_end|>\n]]")
    assert items[0]["n_trained"] == len(default_tokenizer("a answer 0<|im_end|>\n")["input_ids"])
    html = preview(c, 1, tokenizer=default_tokenizer, style="html")[0]["rendered"]
    assert "background:#c8f7c5" in html and "a answer 0" in html
    register_dataset("pv_pref", [{"prompt": "hi", "chosen": "hello", "rejected": "go"}])
    pref = preview(c.replace(stage__name="dpo", data__dataset="pv_pref"), 1, tokenizer=default_tokenizer)[0]
    assert pref["rendered"].endswith("[[hello<|im_end|>\n]]")


def test_evaluation_sets_are_not_offered_for_training(tiny_model_dir, tmp_path):
    from kit.data import DataError, list_datasets
    from kit.widgets.panels import DataPanel

    assert "demo_mc" in list_datasets() and list_datasets()["demo_mc"].purpose == "eval"
    assert "demo_mc" not in list_datasets("train") and "demo_sft" in list_datasets("train")
    assert "demo_mc" not in DataPanel().form["data.dataset"].widget.options
    with pytest.raises(DataError, match="evaluation set") as e:
        load_splits(cfg(tiny_model_dir, tmp_path, dataset="demo_mc"), "sft")
    assert "demo_mc" in str(e.value)
    with pytest.raises(DataError, match="purpose"):
        register_dataset("x_bad", [], purpose="test")
