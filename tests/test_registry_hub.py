"""Hub datasets, local Hub-style folders and LLaMA-Factory dataset_info.json registries.

The Hub cannot be reached here: Hub ids are tested up to the download, with
``kit.data.hub._load_dataset`` (the one call that reaches the Hub) replaced to check its arguments.
"""

from __future__ import annotations

import json

import datasets
import pytest

from kit import RunConfig
from kit.data import hub as hub_mod
from kit.data.formats import DataError
from kit.data.pipeline import load_rows, validate_dataset

ALPACA = [{"instruction": f"Say {i}", "input": "", "output": f"{i}"} for i in range(6)]


def _cfg(tiny_model_dir, **data):
    return RunConfig.from_kwargs(
        model=str(tiny_model_dir), **{f"data__{k}" if not k.startswith("train__") else k: v for k, v in data.items()}
    )


def test_parquet_shard_folder_reads_the_split(tmp_path):
    d = tmp_path / "repo"
    (d / "data").mkdir(parents=True)
    datasets.Dataset.from_list(ALPACA).to_parquet(str(d / "data" / "train-00000-of-00001.parquet"))
    datasets.Dataset.from_list(ALPACA[:2]).to_parquet(str(d / "data" / "test-00000-of-00001.parquet"))
    rows, kind = load_rows(str(d))
    assert kind == "sft" and len(rows) == 6
    assert rows[1]["messages"][-1] == {"role": "assistant", "content": "1"}
    rows, _ = load_rows(str(d), hub=hub_mod.HubOptions(split="test"))
    assert len(rows) == 2


def test_save_to_disk_folder_and_its_splits(tmp_path, tiny_model_dir):
    d = tmp_path / "saved"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ALPACA), "validation": datasets.Dataset.from_list(ALPACA[:3])}
    ).save_to_disk(str(d))
    info = validate_dataset(_cfg(tiny_model_dir, dataset=str(d), split="validation"))
    assert info["train_rows"] == 3
    with pytest.raises(DataError, match=r"no split 'dev' \(it has train, validation\)"):
        validate_dataset(_cfg(tiny_model_dir, dataset=str(d), split="dev"))


def test_bad_row_in_a_folder_names_dataset_split_row_and_field(tmp_path):
    d = tmp_path / "repo"
    d.mkdir()
    bad = ALPACA[:3] + [{"instruction": "x", "input": "", "output": ""}]
    datasets.Dataset.from_list(bad).to_parquet(str(d / "train.parquet"))
    with pytest.raises(DataError) as e:
        load_rows(str(d))
    assert e.value.source == f"{d}[train]" and e.value.row == 3 and e.value.field == "output"


def test_hub_id_passes_subset_split_revision_and_files(monkeypatch, tiny_model_dir):
    calls = []

    def fake(path, **kw):
        calls.append((path, kw))
        return datasets.Dataset.from_list(ALPACA)

    monkeypatch.setattr(hub_mod, "_load_dataset", fake)
    cfg = _cfg(
        tiny_model_dir,
        dataset="someone/some-set",
        subset="en",
        split="train[:50%]",
        revision="v1.0",
        data_files={"train": "a.parquet"},
    )
    assert validate_dataset(cfg)["train_rows"] == 6
    assert calls == [
        (
            "someone/some-set",
            {"split": "train[:50%]", "name": "en", "data_files": {"train": "a.parquet"}, "revision": "v1.0"},
        )
    ]


def test_streaming_reads_only_what_max_steps_needs(monkeypatch, tiny_model_dir):
    seen = {}

    def fake(path, **kw):
        seen.update(kw)
        return datasets.Dataset.from_list(ALPACA * 10).to_iterable_dataset()

    monkeypatch.setattr(hub_mod, "_load_dataset", fake)
    cfg = _cfg(
        tiny_model_dir,
        dataset="someone/big",
        streaming=True,
        train__max_steps=3,
        train__batch_size=2,
        train__grad_accum=1,
    )
    assert validate_dataset(cfg)["train_rows"] == 6 and seen["streaming"] is True
    with pytest.raises(DataError, match="max_steps"):
        validate_dataset(_cfg(tiny_model_dir, dataset="someone/big", streaming=True, train__max_steps=-1))


def test_hub_failures_name_the_dataset_and_split(monkeypatch):
    def missing(path, **kw):
        raise FileNotFoundError(f"Dataset '{path}' doesn't exist on the Hub")

    monkeypatch.setattr(hub_mod, "_load_dataset", missing)
    with pytest.raises(DataError, match=r"someone/nope\[train\].*dataset not found.*huggingface-cli login"):
        load_rows("someone/nope")
    with pytest.raises(DataError, match="not a Hub id"):
        load_rows("no-such-file.jsonl")


# ------------------------------------------------------------------ LLaMA-Factory dataset_info.json


def _lf_dir(tmp_path):
    d = tmp_path / "lf"
    d.mkdir()
    (d / "alpaca_zh.json").write_text(
        json.dumps([{"q": "Hello", "ctx": "world", "a": "Hi!", "sys": "Be kind.", "hist": [["first", "one"]]}])
    )
    (d / "chat.jsonl").write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"dialog": [{"speaker": "me", "text": "2+2?"}, {"speaker": "bot", "text": "4"}], "persona": "math"},
                {"dialog": [{"speaker": "me", "text": "Hi"}, {"speaker": "bot", "text": "Hello"}]},
            ]
        )
    )
    (d / "pref.json").write_text(
        json.dumps([{"instruction": "Pick", "input": "", "chosen": "good", "rejected": "bad"}])
    )
    (d / "pref_chat.json").write_text(
        json.dumps(
            [
                {
                    "conversations": [{"from": "human", "value": "Q?"}],
                    "chosen": {"from": "gpt", "value": "yes"},
                    "rejected": {"from": "gpt", "value": "no"},
                }
            ]
        )
    )
    (d / "kto.json").write_text(
        json.dumps(
            [
                {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}], "tag": True},
                {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "B"}], "tag": False},
            ]
        )
    )
    (d / "c4.jsonl").write_text(json.dumps({"text": "plain text"}) + "\n")
    (d / "dataset_info.json").write_text(
        json.dumps(
            {
                "my_alpaca": {
                    "file_name": "alpaca_zh.json",
                    "columns": {"prompt": "q", "query": "ctx", "response": "a", "system": "sys", "history": "hist"},
                },
                "my_chat": {
                    "file_name": "chat.jsonl",
                    "formatting": "sharegpt",
                    "columns": {"messages": "dialog", "system": "persona"},
                    "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "me", "assistant_tag": "bot"},
                },
                "my_pref": {"file_name": "pref.json", "ranking": True},
                "my_pref_chat": {
                    "file_name": "pref_chat.json",
                    "formatting": "sharegpt",
                    "ranking": True,
                    "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"},
                },
                "my_kto": {
                    "file_name": "kto.json",
                    "formatting": "openai",
                    "columns": {"messages": "messages", "kto_tag": "tag"},
                },
                "my_c4": {"file_name": "c4.jsonl", "columns": {"prompt": "text"}},
                "three": {
                    "file_name": "chat.jsonl",
                    "formatting": "sharegpt",
                    "num_samples": 3,
                    "columns": {"messages": "dialog"},
                    "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "me", "assistant_tag": "bot"},
                },
                "from_hub": {"hf_hub_url": "someone/lf-set", "subset": "zh", "split": "test", "folder": "v2"},
            }
        )
    )
    return d


def test_llamafactory_entries_read_unchanged(tmp_path):
    d = _lf_dir(tmp_path)
    hub = hub_mod.HubOptions(dataset_dir=str(d))
    rows, kind = load_rows("my_alpaca", hub=hub)
    assert kind == "sft" and rows[0]["messages"] == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "one"},
        {"role": "user", "content": "Hello\n\nworld"},
        {"role": "assistant", "content": "Hi!"},
    ]
    rows, kind = load_rows("my_chat", hub=hub)
    assert kind == "sft" and rows[0]["messages"][0] == {"role": "system", "content": "math"}
    assert rows[0]["messages"][-1] == {"role": "assistant", "content": "4"}
    rows, kind = load_rows("my_pref", hub=hub)
    assert kind == "preference" and rows[0]["chosen"] == [{"role": "assistant", "content": "good"}]
    rows, kind = load_rows("my_pref_chat", hub=hub)
    assert kind == "preference" and rows[0]["rejected"] == [{"role": "assistant", "content": "no"}]
    rows, kind = load_rows("my_kto", hub=hub)
    assert kind == "kto" and [r["label"] for r in rows] == [True, False]
    rows, kind = load_rows("my_c4", hub=hub)
    assert kind == "text" and rows[0]["text"] == "plain text"
    rows, _ = load_rows("three", hub=hub)
    assert len(rows) == 3  # num_samples beyond the set repeats rows


def test_llamafactory_hub_entry_reaches_load_dataset(tmp_path, monkeypatch):
    d = _lf_dir(tmp_path)
    calls = []
    monkeypatch.setattr(
        hub_mod, "_load_dataset", lambda path, **kw: calls.append((path, kw)) or datasets.Dataset.from_list(ALPACA)
    )
    rows, kind = load_rows("from_hub", hub=hub_mod.HubOptions(dataset_dir=str(d)))
    assert len(rows) == 6 and calls == [("someone/lf-set", {"split": "test", "name": "zh", "data_dir": "v2"})]


def test_llamafactory_errors_name_the_users_column_and_role(tmp_path):
    d = _lf_dir(tmp_path)
    (d / "alpaca_zh.json").write_text(json.dumps([{"q": "Hello", "a": ""}]))
    hub = hub_mod.HubOptions(dataset_dir=str(d))
    with pytest.raises(DataError) as e:
        load_rows("my_alpaca", hub=hub)
    assert e.value.row == 0 and e.value.field == "a" and e.value.source.endswith("alpaca_zh.json")
    (d / "chat.jsonl").write_text(json.dumps({"dialog": [{"speaker": "you", "text": "x"}]}) + "\n")
    with pytest.raises(DataError, match="'speaker' is 'you'") as e:
        load_rows("my_chat", hub=hub)
    assert e.value.field == "dialog[0].speaker"
    with pytest.raises(DataError, match="not in .*dataset_info.json"):
        load_rows("nope", hub=hub)
