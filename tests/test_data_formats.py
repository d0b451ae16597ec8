"""Row formats: detection, normalisation, and bad rows rejected with file, row and field."""

from __future__ import annotations

import json

import pytest

from kit.data import DataError, detect_format, load_registry_file, normalise_rows, read_file, register_dataset
from kit.data.pipeline import load_rows


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


GOOD = {
    "alpaca": {
        "instruction": "Add",
        "input": "2 and 2",
        "output": "4",
        "system": "Be brief.",
        "history": [["hi", "hello"]],
    },
    "messages": {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
    "sharegpt": {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
    "preference": {"prompt": "hi", "chosen": "hello", "rejected": "go away"},
    "kto": {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], "label": True},
    "text": {"text": "some text"},
    "prompt": {"prompt": "2+2?", "answer": 4},
}


@pytest.mark.parametrize("fmt", list(GOOD))
def test_detect_and_normalise(fmt):
    row = GOOD[fmt]
    assert detect_format(list(row)) == fmt
    out = normalise_rows([row], fmt, "x.jsonl")[0]
    if fmt == "alpaca":
        assert out["messages"] == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "Add\n\n2 and 2"},
            {"role": "assistant", "content": "4"},
        ]
    elif fmt == "sharegpt":
        assert out["messages"] == GOOD["messages"]["messages"]
    elif fmt == "preference":
        assert out == {
            "prompt": [{"role": "user", "content": "hi"}],
            "chosen": [{"role": "assistant", "content": "hello"}],
            "rejected": [{"role": "assistant", "content": "go away"}],
        }
    elif fmt == "prompt":
        assert out == {"prompt": [{"role": "user", "content": "2+2?"}], "answer": "4"}


def test_preference_as_message_lists_with_implicit_prompt():
    row = {
        "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "good"}],
        "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "bad"}],
    }
    out = normalise_rows([row], "preference", "p.json")[0]
    assert out["prompt"] == [{"role": "user", "content": "q"}]
    assert out["chosen"][0]["content"] == "good" and out["rejected"][0]["content"] == "bad"


BAD = [
    ("alpaca", {"instruction": "x"}, "output"),
    ("alpaca", {"instruction": "x", "output": 3}, "output"),
    ("alpaca", {"instruction": "x", "output": "y", "history": [["only one"]]}, "history[0]"),
    (
        "messages",
        {"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "hi"}]},
        "messages[1].role",
    ),
    (
        "messages",
        {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]},
        "messages[1].role",
    ),
    (
        "messages",
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": 5}]},
        "messages[1].content",
    ),
    ("messages", {"messages": [{"role": "user", "content": "hi"}]}, "messages[0].role"),
    ("messages", {"messages": []}, "messages"),
    (
        "sharegpt",
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "robot", "value": "x"}]},
        "conversations[1].from",
    ),
    ("sharegpt", {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt"}]}, "conversations[1].value"),
    ("preference", {"prompt": "hi", "chosen": "a"}, "rejected"),
    ("preference", {"prompt": "hi", "chosen": "a", "rejected": "a"}, "rejected"),
    ("preference", {"prompt": "hi", "chosen": 1, "rejected": "a"}, "chosen"),
    ("kto", {"messages": GOOD["messages"]["messages"], "label": "maybe"}, "label"),
    ("kto", {"messages": [{"role": "user", "content": "x"}], "label": True}, "messages[0].role"),
    ("text", {"text": "   "}, "text"),
    ("text", {"text": 5}, "text"),
    ("prompt", {"prompt": ""}, "prompt"),
    ("prompt", {"prompt": "x", "answer": [1]}, "answer"),
]


@pytest.mark.parametrize("fmt,row,field", BAD, ids=[f"{b[0]}-{b[2]}" for b in BAD])
def test_bad_row_names_file_row_and_field(tmp_path, fmt, row, field):
    good = GOOD[fmt]
    path = write_jsonl(tmp_path / f"{fmt}.jsonl", [good, good, row])
    register_dataset(f"bad_{fmt}", str(path), format=fmt)
    with pytest.raises(DataError) as ei:
        load_rows(f"bad_{fmt}")
    e = ei.value
    assert e.source == str(path) and e.row == 2 and e.field == field, str(e)
    assert str(path) in str(e) and "row 2" in str(e) and f"'{field}'" in str(e)


def test_unknown_columns_say_what_is_expected():
    with pytest.raises(DataError, match="cannot tell the format.*alpaca"):
        detect_format(["foo", "bar"], "f.json")


def test_invalid_json_line_names_the_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(DataError, match="line 2") as ei:
        read_file(p)
    assert ei.value.source == str(p)


def test_csv_and_json_list_files(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text('prompt,chosen,rejected\nhi,"hello","go"\n')
    rows, kind = load_rows(str(p))
    assert kind == "preference" and rows[0]["chosen"][0]["content"] == "hello"
    j = tmp_path / "y.json"
    j.write_text(json.dumps([GOOD["kto"], dict(GOOD["kto"], label=False)], indent=1))
    rows, kind = load_rows(str(j))
    assert kind == "kto" and [r["label"] for r in rows] == [True, False]


def test_registry_file_yaml_and_json(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [GOOD["text"]] * 3)
    reg = tmp_path / "my_sets.yaml"
    reg.write_text("my_text:\n  file: a.jsonl\n  format: text\n  description: three lines\n")
    specs = load_registry_file(reg)
    assert [s.name for s in specs] == ["my_text"]
    rows, kind = load_rows("my_text")
    assert kind == "text" and len(rows) == 3
    regj = tmp_path / "sets.json"
    regj.write_text(json.dumps({"my_text2": {"file": str(tmp_path / "a.jsonl")}}))
    load_registry_file(regj)
    assert load_rows("my_text2")[1] == "text"
    bad = tmp_path / "bad.yaml"
    bad.write_text("x:\n  format: text\n")
    with pytest.raises(DataError, match="needs a 'file'"):
        load_registry_file(bad)


def test_unknown_dataset_lists_known_names():
    register_dataset("known_one", [GOOD["text"]])
    with pytest.raises(DataError, match="unknown dataset 'nope'.*known_one"):
        load_rows("nope")


def test_sft_data_converts_for_pt_and_rl_but_not_for_preference():
    register_dataset("conv_src", [GOOD["messages"]])
    assert load_rows("conv_src", kind="text")[0][0]["text"] == "hi\n\nhello"
    assert load_rows("conv_src", kind="prompt")[0][0] == {
        "prompt": [{"role": "user", "content": "hi"}],
        "answer": "hello",
    }
    with pytest.raises(DataError, match="this stage needs preference data.*messages"):
        load_rows("conv_src", kind="preference")


DEMO_KINDS = {
    "demo_sft": "sft",
    "demo_chat": "sft",
    "demo_sharegpt": "sft",
    "demo_pref": "preference",
    "demo_kto": "kto",
    "demo_text": "text",
    "demo_prompt": "prompt",
    "demo_tools": "sft",
}


@pytest.mark.parametrize("name,kind", list(DEMO_KINDS.items()))
def test_shipped_demo_sets_load_as_their_kind(name, kind):
    from kit.data import list_datasets

    assert name in list_datasets(), f"{name} missing from data/dataset_info.yaml"
    rows, have = load_rows(name)
    assert have == kind and len(rows) >= 5
    if name == "demo_kto":
        assert {r["label"] for r in rows} == {True, False}


def test_demo_tools_encode_with_a_tool_capable_template(default_tokenizer):
    """SmolLM2's own template drops tool calls, so demo_tools needs model.template=chatml_tools."""
    import copy

    from kit.data import encode_chat
    from kit.data.encode import TemplateError
    from kit.data.templates import CHATML_TOOLS

    rows, _ = load_rows("demo_tools")
    with pytest.raises(TemplateError, match="chatml_tools"):
        encode_chat(default_tokenizer, rows[0]["messages"], 1024, tools=rows[0].get("tools"))
    tok = copy.deepcopy(default_tokenizer)
    tok.chat_template = CHATML_TOOLS
    for r in rows:
        e = encode_chat(tok, r["messages"], 4096, tools=r.get("tools"))
        text = tok.decode([i for i, lab in zip(e["input_ids"], e["labels"]) if lab != -100])
        for m in r["messages"]:
            for call in m.get("tool_calls") or []:
                assert call["function"]["name"] in text  # every call is a trained target
