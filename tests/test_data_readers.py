"""File readers and row checks: strict about bad rows (our error, naming file / row / field),
lenient about good ones (BOMs, JSON documents, JSON text in answers, TRL's conversational rows)."""

from __future__ import annotations

import copy
import csv
import io
import json

import pytest

from kit.data import DataError, TemplateError, load_rows, read_file, validate_dataset
from kit.data.encode import IGNORE, encode_chat
from kit.errors import ForgeError, locate

CHAT = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def csv_file(path, header, rows):
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8")
    return path


def raises_at(path, row=None, field=None, match=None, ref=None):
    with pytest.raises(DataError, match=match) as ei:
        load_rows(str(ref or path))
    e = ei.value
    assert e.source == str(path) and str(path) in str(e), str(e)
    assert (e.row, e.field) == (row, field), str(e)
    return e


# ------------------------------------------------------------------------------- the error base


def test_user_errors_share_one_base_and_keep_their_builtin_bases():
    from kit.config import ConfigError
    from kit.export import ExportError
    from kit.models.loading import ModelNotFoundError

    for cls, builtin in (
        (ConfigError, ValueError),
        (DataError, ValueError),
        (TemplateError, ValueError),
        (ExportError, ValueError),
        (ModelNotFoundError, FileNotFoundError),
    ):
        assert issubclass(cls, ForgeError) and issubclass(cls, builtin), cls
    assert locate("a.csv", 3, "output", line=5) == "a.csv, line 5, row 3, field 'output'"
    assert str(DataError("bad", "a.csv", 3, "output", line=5)) == "a.csv, line 5, row 3, field 'output': bad"
    assert str(TemplateError("no", "a.jsonl", 1)) == "a.jsonl, row 1: no" and str(TemplateError("no")) == "no"


# ------------------------------------------------------------------------------- strict: bad files


def test_invalid_utf8_in_jsonl_names_row_and_field(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9 au lait"}\n')
    e = raises_at(p, 1, "text", match="invalid UTF-8 .byte 0xE9.")
    assert "save the file as UTF-8" in str(e)


def test_invalid_utf8_in_csv_names_row_and_column(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_bytes(b"instruction,output\nq1,a1\nq2,\xff\xfe broken\n")
    raises_at(p, 1, "output", match="invalid UTF-8")


def test_csv_row_with_extra_cells_is_refused_not_truncated(tmp_path):
    """An unquoted comma in an answer makes an extra cell; csv.DictReader would keep the text before it."""
    p = tmp_path / "comma.csv"
    p.write_text("instruction,output\nq1,a1\n\nq2,Yes, of course\n", encoding="utf-8")
    e = raises_at(p, 1, None, match="3 cells but the header has 2 columns.*double quotes")
    assert e.line == 4 and "line 4" in str(e)
    short = tmp_path / "short.csv"
    short.write_text("instruction,input,output\nq1,,a1\nq2,a2\n", encoding="utf-8")
    raises_at(short, 1, None, match="2 cells but the header has 3 columns")
    quoted = csv_file(tmp_path / "ok.csv", ["instruction", "output"], [["q", "Yes, of course"]])
    assert load_rows(str(quoted))[0][0]["messages"][1]["content"] == "Yes, of course"


def test_csv_duplicate_header_is_refused(tmp_path):
    p = tmp_path / "dup.csv"
    p.write_text("instruction,output,output\nq,a,b\n", encoding="utf-8")
    raises_at(p, None, None, match="column 'output' twice")


def test_corrupt_parquet_names_the_file(tmp_path):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    good = tmp_path / "good.parquet"
    pq.write_table(pa.Table.from_pylist([{"text": "a"}] * 50), str(good))
    data = good.read_bytes()
    for name, blob in (
        ("cut.parquet", data[: len(data) // 2]),
        ("junk.parquet", b"not parquet at all"),
        ("mangled.parquet", data[:4] + bytes(len(data) - 8) + data[-4:]),
    ):
        p = tmp_path / name
        p.write_bytes(blob)
        raises_at(p, None, None, match="cannot read this Parquet file")


def test_folder_where_a_file_belongs(tmp_path):
    """A folder of data shards is read as a Hub-style folder (kit.data.hub); one without data files
    is our error, and so is any folder given to read_file."""
    d = tmp_path / "notes"
    d.mkdir()
    (d / "README.txt").write_text("no data here")
    raises_at(d, None, None, match="folder, not a data file")
    jsonl(d / "part0.jsonl", [{"text": "a"}])
    with pytest.raises(DataError, match="folder, not a data file.*part0.jsonl"):
        read_file(d)


def test_duplicate_json_keys_are_refused(tmp_path):
    p = tmp_path / "dup.jsonl"
    p.write_text('{"instruction": "q", "output": "a"}\n\n{"instruction": "q", "output": "a", "output": "b"}\n')
    e = raises_at(p, 1, "output", match="appears more than once")
    assert e.line == 3
    nested = tmp_path / "nested.json"
    nested.write_text(
        json.dumps([{"messages": CHAT}]).replace('"content": "hello"', '"content": "hello", "content": "x"')
    )
    raises_at(nested, 0, "messages[1].content", match="more than once")


def test_invalid_json_in_a_document_names_the_line(tmp_path):
    p = tmp_path / "doc.json"
    p.write_text('[\n  {"text": "a"},\n  {"text": }\n]\n')
    e = raises_at(p, None, None, match="invalid JSON")
    assert e.line == 3


def test_huge_numbers_and_deep_nesting_are_our_error(tmp_path):
    p = tmp_path / "big.jsonl"
    p.write_text('{"prompt": "q", "answer": ' + "9" * 5000 + "}\n")
    raises_at(p, 0, None, match="invalid JSON")
    deep = tmp_path / "deep.jsonl"
    deep.write_text('{"text": ' + "[" * 100000 + "]" * 100000 + "}\n")
    raises_at(deep, 0, None, match="nested too deeply")


# ------------------------------------------------------------------------------- strict: bad rows


@pytest.mark.parametrize(
    "row,field",
    [
        ({"instruction": "q", "input": 0, "output": "a"}, "input"),  # was dropped (falsy)
        ({"instruction": "q", "input": False, "output": "a"}, "input"),
        ({"instruction": "q", "output": "a", "system": 0}, "system"),
        ({"instruction": "q", "output": "a", "history": 0}, "history"),
        ({"instruction": "q", "output": "a", "history": [["", "x"]]}, "history[0][0]"),
        ({"instruction": "q", "output": "a", "history": [["x", "  "]]}, "history[0][1]"),
    ],
)
def test_alpaca_wrong_types_are_refused_never_dropped(tmp_path, row, field):
    p = jsonl(tmp_path / "a.jsonl", [{"instruction": "q", "input": None, "output": "a"}, row])
    raises_at(p, 1, field)


def test_alpaca_input_null_or_empty_is_no_input(tmp_path):
    p = jsonl(
        tmp_path / "a.jsonl",
        [{"instruction": "q", "input": None, "output": "a"}, {"instruction": "q", "input": "", "output": "a"}],
    )
    rows, _ = load_rows(str(p))
    assert [r["messages"][0]["content"] for r in rows] == ["q", "q"]


@pytest.mark.parametrize(
    "row,field",
    [
        ({"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "a"}]}, "messages[0].content"),
        (
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a"},
                    {"role": "user", "content": " \n"},
                    {"role": "assistant", "content": "b"},
                ]
            },
            "messages[2].content",
        ),
        (
            {"conversations": [{"from": "human", "value": ""}, {"from": "gpt", "value": "a"}]},
            "conversations[0].content",
        ),
        ({"prompt": [{"role": "user", "content": ""}], "chosen": "a", "rejected": "b"}, "prompt[0].content"),
    ],
)
def test_empty_user_turn_names_row_and_turn(tmp_path, row, field):
    good = (
        {"messages": CHAT}
        if "messages" in row
        else (
            {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
            if "conversations" in row
            else {"prompt": "q", "chosen": "a", "rejected": "b"}
        )
    )
    p = jsonl(tmp_path / "e.jsonl", [good, row])
    raises_at(p, 1, field, match="empty user turn")


def test_tool_turn_first_and_malformed_tool_calls_are_refused(tmp_path):
    p = jsonl(
        tmp_path / "t.jsonl", [{"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "a"}]}]
    )
    raises_at(p, 0, "messages[0].role", match="tool message must follow")
    calls = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": 5}]
    p2 = jsonl(tmp_path / "t2.jsonl", [{"messages": calls}])
    raises_at(p2, 0, "messages[1].tool_calls", match="list of tool calls")
    calls[1]["tool_calls"] = [{"function": {"name": 3, "arguments": {}}}]
    p3 = jsonl(tmp_path / "t3.jsonl", [{"messages": calls}])
    raises_at(p3, 0, "messages[1].tool_calls[0].name")
    p4 = jsonl(tmp_path / "t4.jsonl", [{"messages": CHAT, "tools": "not json"}])
    raises_at(p4, 0, "tools", match="not JSON")


def test_non_finite_answer_is_refused(tmp_path):
    p = tmp_path / "nan.jsonl"
    p.write_text('{"prompt": "q", "answer": NaN}\n')
    raises_at(p, 0, "answer", match="finite")


# ------------------------------------------------------------------------------- lenient: good input


def test_json_text_in_answers_stays_text(tmp_path):
    """CSV/Parquet cells are JSON-decoded only in list columns (messages, conversations, tools, ...)."""
    answer, question = '{"name": "Ada", "born": 1815}', "[1, 2, 3] sorted?"
    p = csv_file(tmp_path / "j.csv", ["instruction", "input", "output"], [[question, "[3, 2, 1]", answer]])
    rows, kind = load_rows(str(p))
    assert kind == "sft" and rows[0]["messages"] == [
        {"role": "user", "content": question + "\n\n[3, 2, 1]"},
        {"role": "assistant", "content": answer},
    ]
    m = csv_file(tmp_path / "m.csv", ["messages"], [[json.dumps(CHAT)]])
    assert load_rows(str(m))[0][0]["messages"] == CHAT
    pref = csv_file(
        tmp_path / "p.csv",
        ["prompt", "chosen", "rejected"],
        [["q", "[1, 2]", json.dumps([{"role": "assistant", "content": "no"}])]],
    )
    row = load_rows(str(pref))[0][0]
    assert row["chosen"] == [{"role": "assistant", "content": "[1, 2]"}]
    assert row["rejected"] == [{"role": "assistant", "content": "no"}]
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    pqf = tmp_path / "j.parquet"
    pq.write_table(
        pa.Table.from_pylist([{"instruction": question, "output": answer, "messages_note": "[x]"}]), str(pqf)
    )
    assert load_rows(str(pqf))[0][0]["messages"][1]["content"] == answer


def test_bom_is_read(tmp_path):
    p = tmp_path / "bom.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps({"text": "a"}).encode() + b"\n")
    assert load_rows(str(p))[0] == [{"text": "a"}]
    c = tmp_path / "bom.csv"
    c.write_bytes(b"\xef\xbb\xbfinstruction,output\r\nq,a\r\n")
    assert load_rows(str(c))[1] == "sft"
    j = tmp_path / "bom.json"
    j.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"text": "a"}]).encode())
    assert load_rows(str(j))[0] == [{"text": "a"}]
    u16 = tmp_path / "u16.json"
    u16.write_bytes(json.dumps([{"text": "caf\u00e9"}], ensure_ascii=False).encode("utf-16"))
    assert load_rows(str(u16))[0] == [{"text": "caf\u00e9"}]


@pytest.mark.parametrize(
    "text",
    [
        json.dumps({"data": [{"text": "a"}, {"text": "b"}]}),
        json.dumps({"data": [{"text": "a"}, {"text": "b"}]}, indent=2),
        json.dumps([{"text": "a"}, {"text": "b"}], indent=2),
        '{"text": "a"}\n{"text": "b"}\n',
    ],
)
def test_json_document_or_json_lines_told_apart_by_parsing(tmp_path, text):
    p = tmp_path / "d.json"
    p.write_text(text)
    assert [r["text"] for r in load_rows(str(p))[0]] == ["a", "b"]
    if "\n" in text.strip():  # a .jsonl holding a multi-line document is read too (a one-line object is a row)
        q = tmp_path / "d.jsonl"
        q.write_text(text)
        assert [r["text"] for r in load_rows(str(q))[0]] == ["a", "b"]


def test_jsonl_lines_end_only_at_newline(tmp_path):
    """JSON allows U+2028, U+0085, form feed ... unescaped inside strings; str.splitlines would cut there."""
    texts = ["a\u2028b", "c\x85d", "e\x0cf\x1cg", "crlf"]
    p = tmp_path / "seps.jsonl"
    p.write_bytes(b"".join(json.dumps({"text": t}, ensure_ascii=False).encode() + b"\r\n" for t in texts))
    assert [r["text"] for r in load_rows(str(p))[0]] == texts


def test_trl_conversational_preference_rows(tmp_path):
    explicit = {
        "prompt": [{"role": "user", "content": "q"}],
        "chosen": [{"role": "assistant", "content": "good"}],
        "rejected": [{"role": "assistant", "content": "bad"}],
    }
    implicit = {
        "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "good"}],
        "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "bad"}],
    }
    full = dict(explicit, chosen=implicit["chosen"], rejected=implicit["rejected"])  # prompt + whole conversations
    want = {
        "prompt": [{"role": "user", "content": "q"}],
        "chosen": [{"role": "assistant", "content": "good"}],
        "rejected": [{"role": "assistant", "content": "bad"}],
    }
    p = jsonl(tmp_path / "pref.jsonl", [explicit, implicit, full])
    rows, kind = load_rows(str(p))
    assert kind == "preference" and rows == [want] * 3
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    pqf = tmp_path / "pref.parquet"
    pq.write_table(pa.Table.from_pylist([explicit]), str(pqf))
    assert load_rows(str(pqf))[0] == [want]
    # a rejected conversation with another prompt is refused, not silently paired with chosen's prompt
    other = dict(implicit, rejected=[{"role": "user", "content": "other"}, {"role": "assistant", "content": "bad"}])
    raises_at(jsonl(tmp_path / "other.jsonl", [other]), 0, "rejected", match="share the conversation")
    # an answer list that breaks the turn order after the prompt names its own index
    bad = dict(explicit, chosen=[{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}])
    raises_at(jsonl(tmp_path / "bad.jsonl", [bad]), 0, "chosen[1].role")
    kto = {
        "prompt": [{"role": "user", "content": "q"}],
        "completion": [{"role": "assistant", "content": "a"}],
        "label": True,
    }
    assert load_rows(str(jsonl(tmp_path / "kto.jsonl", [kto])))[0][0]["messages"] == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
    ]


def test_kto_labels_from_csv(tmp_path):
    p = csv_file(tmp_path / "k.csv", ["messages", "label"], [[json.dumps(CHAT), "TRUE"], [json.dumps(CHAT), "0"]])
    assert [r["label"] for r in load_rows(str(p))[0]] == [True, False]


# ------------------------------------------------------------------------------- encoding


def _trained(tok, e):
    return tok.decode(
        [i for i, lab in zip(e["input_ids"], e["labels"]) if lab != IGNORE], clean_up_tokenization_spaces=False
    )


@pytest.mark.parametrize("answer", ["  indented", "\n\n\nthree newlines", " \n mixed", "\tTab"])
def test_answers_with_leading_whitespace_encode_with_right_masks(default_tokenizer, answer):
    tok = default_tokenizer
    msgs = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": "plain"},
    ]
    e = encode_chat(tok, msgs, 512)
    assert _trained(tok, e) == f"{answer}<|im_end|>\nplain<|im_end|>\n"
    assert tok.decode(e["input_ids"]) == tok.apply_chat_template(msgs, tokenize=False)
    # the prompt part is tokenized as at inference: it ends with the generation prompt's tokens
    prompt = tok.apply_chat_template(msgs[:1], add_generation_prompt=True, tokenize=True, return_dict=False)
    assert e["input_ids"][: len(prompt)] == prompt and e["labels"][len(prompt)] != IGNORE
    last = encode_chat(tok, msgs, 512, mask_history=True)
    assert _trained(tok, last) == "plain<|im_end|>\n"


def test_a_template_that_rewrites_history_fails_naming_the_row(tmp_path, tiny_cfg, default_tokenizer):
    from kit.data import build_tokenized

    tok = copy.deepcopy(default_tokenizer)
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n"
        "{% if m.role == 'assistant' and not loop.last %}(earlier){% else %}{{ m.content }}{% endif %}"
        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    two = CHAT + [{"role": "user", "content": "more"}, {"role": "assistant", "content": "sure"}]
    p = jsonl(tmp_path / "h.jsonl", [{"messages": CHAT}, {"messages": two}])
    cfg = tiny_cfg(dataset=str(p), shuffle=False, cache=False)
    with pytest.raises(TemplateError, match="prefix-consistent") as ei:
        build_tokenized(cfg, tok, "sft")
    assert ei.value.source == str(p) and ei.value.row == 1 and f"{p}, row 1" in str(ei.value)


def test_template_errors_are_ours(tmp_path, default_tokenizer):
    tok = copy.deepcopy(default_tokenizer)
    tok.chat_template = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(TemplateError, match="cannot render this conversation.*roles must alternate"):
        encode_chat(tok, CHAT, 64)


# ------------------------------------------------------------------------------- before the model


def test_validate_dataset_needs_no_model(tmp_path):
    """The engine calls this before loading the model: a bad row fails in seconds, model or not."""
    from kit import RunConfig

    p = jsonl(tmp_path / "v.jsonl", [{"messages": CHAT}, {"messages": [{"role": "user", "content": "q"}]}])
    cfg = RunConfig.from_kwargs(model=str(tmp_path / "no-such-model"), dataset=str(p), output_dir=str(tmp_path / "r"))
    with pytest.raises(DataError) as ei:
        validate_dataset(cfg, "sft")
    assert (ei.value.source, ei.value.row, ei.value.field) == (str(p), 1, "messages[0].role")
    good = jsonl(tmp_path / "g.jsonl", [{"messages": CHAT}] * 4)
    ok = cfg.replace(data__dataset=str(good), data__val_size=1)
    assert validate_dataset(ok, "sft") == {"kind": "sft", "train_rows": 3, "eval_rows": 1}
    assert validate_dataset(ok) == {"kind": "sft", "train_rows": 4, "eval_rows": 0}
    with pytest.raises(DataError, match="needs preference data"):
        validate_dataset(ok, "preference")


def test_a_run_fails_on_a_bad_row_before_loading_the_model(tmp_path):
    """The engine checks the data first: with a model that does not exist, the error is still the row's."""
    import kit

    p = jsonl(tmp_path / "bad.jsonl", [{"messages": CHAT}, {"messages": [{"role": "user", "content": "q"}]}])
    cfg = kit.RunConfig.from_kwargs(
        model=str(tmp_path / "no-such-model"), dataset=str(p), output_dir=str(tmp_path / "run"), max_steps=1
    )
    with pytest.raises(DataError) as ei:
        kit.train(cfg)
    assert (ei.value.source, ei.value.row) == (str(p), 1)
