"""Big datasets: batched encoding equals per-row encoding, cache hits read no row, files are
streamed (memory does not grow with the file), and file and in-memory sources give the same data."""

from __future__ import annotations

import copy
import json
import os
import tracemalloc

import pytest

from kit import RunConfig
from kit.data import DataError, build_tokenized, register_dataset, validate_dataset
from kit.data.encode import TemplateError, encode_chat, encode_chats
from kit.data.readers import iter_file, read_file
from kit.data.templates import CHATML_TOOLS


@pytest.fixture(autouse=True)
def _fresh_cache(tmp_path, monkeypatch):
    import kit.data.pipeline as P

    monkeypatch.setattr(P, "data_cache_dir", lambda: tmp_path / "data-cache")


def conv(*turns, system=None):
    msgs = [{"role": "system", "content": system}] if system else []
    for q, a in turns:
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return msgs


VARIED = [
    conv(("hi", "hello")),
    conv(("What is 2+2?", "4"), system="You are terse."),
    conv(("one", "first answer"), ("two", "second answer"), ("three", "third answer")),
    conv(("q", " starts with a space"), ("q2", "and one more")),
    conv(("q", "  two spaces")),
    conv(("q", "\nstarts with a newline")),
    conv(("q", "\n\n  newlines then spaces"), ("again", "plain")),
    conv(("q", "ends with whitespace  \n\n")),
    conv(("héllo wörld ☃", "ünïcødé 答案 🚀 é (e + combining accent)")),
    conv(("digits 1234567890", "numbers: 3.14159, 2**64 = 18446744073709551616")),
    conv(("code?", "```python\ndef f(x):\n    return x * 2\n```")),
    conv(("tags", "text with <|im_end|> inside and <|im_start|> too"), system="sys <b>"),
    conv(("long", " ".join(f"word{i}" for i in range(300)))),
]


@pytest.mark.parametrize(
    "opts",
    [{}, {"train_on_prompt": True}, {"mask_history": True}, {"mask_history": True, "train_on_prompt": True}],
)
@pytest.mark.parametrize("cutoff", [4096, 24])
def test_batched_encoding_equals_the_per_row_encoding(default_tokenizer, opts, cutoff, monkeypatch):
    import kit.data.encode as E

    slow = []
    real = E.encode_chat
    monkeypatch.setattr(E, "encode_chat", lambda tok, m, *a, **k: slow.append(m) or real(tok, m, *a, **k))
    batched = encode_chats(default_tokenizer, [(m, None) for m in VARIED], cutoff, **opts)
    monkeypatch.undo()
    per_row = [encode_chat(default_tokenizer, m, cutoff, **opts) for m in VARIED]
    assert batched == per_row
    # the batched path did the work: only conversations whose answer starts with a newline or two
    # spaces (they merge with the header's newline into one token) went to the per-row encoder
    merges = [m for m in VARIED if any(x["content"].startswith(("\n", "  ")) for x in m if x["role"] == "assistant")]
    assert slow and all(m in merges for m in slow) and len(merges) == 3
    if cutoff == 4096:  # untruncated: the tokens are the template's, token for token
        for m, e in zip(VARIED, batched):
            if m not in slow:
                assert e["input_ids"] == list(
                    default_tokenizer.apply_chat_template(m, tokenize=True, return_dict=False)
                )


def test_batched_encoding_with_tools_and_template_errors(default_tokenizer):
    tok = copy.deepcopy(default_tokenizer)
    call = {"type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 2}}}
    tools = [{"type": "function", "function": {"name": "add", "description": "add", "parameters": {}}}]
    with_call = [
        {"role": "user", "content": "add 1 and 2"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "3"},
        {"role": "assistant", "content": "It is 3."},
    ]
    chats = [(VARIED[0], None), (with_call, tools), (VARIED[2], None)]
    with pytest.raises(TemplateError, match="cannot render them") as e:
        encode_chats(tok, chats, 256)  # SmolLM2's template drops tool calls
    assert e.value.index == 1
    tok.chat_template = CHATML_TOOLS
    assert encode_chats(tok, chats, 256) == [encode_chat(tok, m, 256, tools=t) for m, t in chats]
    tok.chat_template = "{% for m in messages %}{{ m['content'] + undefined_thing.x }}{% endfor %}"
    with pytest.raises(TemplateError, match="cannot render this conversation") as e:
        encode_chats(tok, chats[:1] + chats[2:], 256)
    assert e.value.index == 0


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def rows_of(n, tag="r"):
    return [{"messages": conv((f"{tag} question {i}", f"{tag} answer {i} " + "x" * (i % 7)))} for i in range(n)]


def cfg_for(tiny_model_dir, tmp_path, **kw):
    base = dict(model=str(tiny_model_dir), cutoff_len=64, output_dir=str(tmp_path / "run"))
    base.update(kw)
    return RunConfig.from_kwargs(**base)


def test_a_cache_hit_reads_no_row_and_returns_the_same_data(tiny_model_dir, tmp_path, default_tokenizer, monkeypatch):
    import kit.data.pipeline as P

    p = tmp_path / "chat.jsonl"
    write_jsonl(p, rows_of(40))
    c = cfg_for(tiny_model_dir, tmp_path, dataset=str(p), val_size=5)
    checked = validate_dataset(c, "sft")
    first, ev1, info1 = build_tokenized(c, default_tokenizer, "sft")
    assert checked == {"kind": "sft", "train_rows": 35, "eval_rows": 5} and not info1["cache_hit"]

    def no(*a, **k):
        raise AssertionError("a cache hit must not read or encode rows")

    with monkeypatch.context() as m:
        for name in ("open_rows", "load_rows", "encode_chats", "iter_file"):
            m.setattr(P, name, no)
        assert validate_dataset(c, "sft") == checked  # the file's content hash finds the earlier check
        again, ev2, info2 = build_tokenized(c, default_tokenizer, "sft")
    assert info2 == {"cache": info1["cache"], "cache_hit": True}
    assert again.to_list() == first.to_list() and ev2.to_list() == ev1.to_list()
    # the same size and modification time with other bytes is another dataset
    st = os.stat(p)
    text = p.read_text()
    p.write_text(text.replace("r answer 3 ", "R answer 3 "))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(p).st_size == st.st_size
    changed, ev3, info3 = build_tokenized(c, default_tokenizer, "sft")
    assert not info3["cache_hit"] and changed.to_list() + ev3.to_list() != first.to_list() + ev1.to_list()


def test_batches_encoded_in_threads_are_written_in_file_order(tiny_model_dir, tmp_path, default_tokenizer, monkeypatch):
    """Several batches are encoded at once (kit.data.pipeline.ENCODE_THREADS); the first one is made
    the slowest, so later ones finish first: the Arrow file still holds the rows in file order."""
    import threading
    import time

    import kit.data.pipeline as P

    p = tmp_path / "chat.jsonl"
    write_jsonl(p, rows_of(40))
    c = cfg_for(tiny_model_dir, tmp_path, dataset=str(p))
    monkeypatch.setattr(P, "ENCODE_BATCH", 3)
    monkeypatch.setattr(P, "ENCODE_THREADS", 1)
    one, _, _ = build_tokenized(c, default_tokenizer, "sft")
    real, threads, calls = P._encode_sft_batch, set(), []

    def slow_first(batch, tok, d):
        calls.append(batch[0]["messages"][0]["content"])
        threads.add(threading.current_thread().name)
        if len(calls) == 1:
            time.sleep(0.5)
        return real(batch, tok, d)

    monkeypatch.setattr(P, "_encode_sft_batch", slow_first)
    monkeypatch.setattr(P, "ENCODE_THREADS", 3)
    monkeypatch.setattr(P, "data_cache_dir", lambda: tmp_path / "another-cache")
    three, _, info = build_tokenized(c, default_tokenizer, "sft")
    assert not info["cache_hit"] and len(calls) == 14 and len(threads) > 1
    assert three.to_list() == one.to_list() and len(one) == 40
    expected = [encode_chat(default_tokenizer, r["messages"], 64) for r in rows_of(40)]
    assert sorted(map(str, one.to_list())) == sorted(map(str, expected))


def test_a_bad_row_is_named_on_the_streaming_path(tiny_model_dir, tmp_path):
    p = tmp_path / "bad.jsonl"
    rows = rows_of(30)
    rows[17]["messages"][1]["content"] = 5
    write_jsonl(p, rows)
    with pytest.raises(DataError) as e:
        validate_dataset(cfg_for(tiny_model_dir, tmp_path, dataset=str(p)), "sft")
    assert (e.value.source, e.value.row, e.value.field) == (str(p), 17, "messages[1].content")


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"val_size": 0.2},
        {"packing": True, "cutoff_len": 128},
        {"max_samples": 7, "dataset2": True},
        {"mix_strategy": "interleave_over", "interleave_probs": [0.7, 0.3], "dataset2": True},
    ],
)
def test_files_and_rows_in_memory_give_the_same_datasets(tiny_model_dir, tmp_path, default_tokenizer, kw):
    kw = dict(kw)
    two = kw.pop("dataset2", False)
    a, b = rows_of(25, "a"), rows_of(9, "b")
    write_jsonl(tmp_path / "a.jsonl", a)
    write_jsonl(tmp_path / "b.jsonl", b)
    register_dataset("scale_a", a)
    register_dataset("scale_b", b)
    files = str(tmp_path / "a.jsonl") + ("," + str(tmp_path / "b.jsonl") if two else "")
    mem = "scale_a" + (",scale_b" if two else "")
    t1, e1, _ = build_tokenized(cfg_for(tiny_model_dir, tmp_path, dataset=files, **kw), default_tokenizer, "sft")
    t2, e2, _ = build_tokenized(cfg_for(tiny_model_dir, tmp_path, dataset=mem, **kw), default_tokenizer, "sft")
    assert t1.to_list() == t2.to_list() and len(t1) > 0
    assert (e1 is None and e2 is None) or e1.to_list() == e2.to_list()
    if kw.get("packing"):
        assert all(sum(r["seq_lens"]) == len(r["input_ids"]) <= 128 for r in t1)


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_file(tiny_model_dir, tmp_path, default_tokenizer, monkeypatch):
    """Python's peak allocations while checking and encoding a file 8x as long stay about the same:
    rows are read, encoded and written to Arrow a batch at a time (what grows is one flag and one
    row number per row). Reading the file whole, as before, held every row: ~8x."""
    import kit.data.pipeline as P

    monkeypatch.setattr(P, "ENCODE_BATCH", 16)
    monkeypatch.setattr(P, "_ROWS_CACHE_BYTES", 0)  # small files are kept in memory for the stages: not here
    answer = "All work and no play makes a long answer. " * 40  # ~1.7 kB a row
    peaks = {}
    for n in (20, 150, 1200):  # the first one pays for lazy imports
        p = tmp_path / f"rows-{n}.jsonl"
        write_jsonl(p, [{"messages": conv((f"question {i}", f"{i} {answer}"))} for i in range(n)])
        c = cfg_for(tiny_model_dir, tmp_path, dataset=str(p), cutoff_len=96)
        peaks[n] = _peak_bytes(lambda c=c: (validate_dataset(c, "sft"), build_tokenized(c, default_tokenizer, "sft")))
    file_growth = (tmp_path / "rows-1200.jsonl").stat().st_size - (tmp_path / "rows-150.jsonl").stat().st_size
    assert peaks[1200] - peaks[150] < 0.1 * file_growth, peaks


@pytest.mark.parametrize(
    "content",
    [
        '{"a": 1}\n\n{"a": 2}\r\n',
        '\ufeff{"a": 1}\n{"a": 2}\n',
        '{"a": 1}\n{"a": 2, "a": 3}\n',
        '{"a": 1}\n{"a": \n',
        '[\n  {"a": 1},\n  {"a": 2}\n]\n',
        "{not json}\n",
        "",
        '{"text": "bad \\ud800 surrogate"}\n{"x": "caf\\u00e9 \u2028 line separator"}\n',
    ],
)
def test_streamed_jsonl_reads_as_the_whole_file_does(tmp_path, content):
    p = tmp_path / "f.jsonl"
    p.write_bytes(content.encode("utf-8", errors="surrogatepass"))

    def outcome(fn):
        try:
            return fn()
        except DataError as e:
            return ("error", str(e), e.row, e.line)

    assert outcome(lambda: list(iter_file(p))) == outcome(lambda: read_file(p))


def test_streamed_parquet_reads_as_the_whole_file_does(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    msgs = [json.dumps(conv(("q", f"a {i}"))) for i in range(3000)]
    pq.write_table(pa.table({"messages": msgs, "tools": [""] * 3000}), tmp_path / "f.parquet", row_group_size=700)
    assert list(iter_file(tmp_path / "f.parquet")) == read_file(tmp_path / "f.parquet")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="cannot read this Parquet file"):
        list(iter_file(tmp_path / "broken.parquet"))
