"""Property-based fuzz (hypothesis) of the data readers/encoders and of the config parser.

Every case must end in one of two ways:

* **accepted**, and then correct: the rows read back as written (JSON/JSONL), every chat encodes
  to the template's own text with exactly the answers (plus end-of-turn) trained, text streams
  keep every token, and prompts end with the generation prompt; a config round-trips through YAML
  with finite numbers;
* **our clear error**: a :class:`~kit.errors.ForgeError` subclass that names the place (for data:
  the file, and a row / line / field when the fault is in one; for config: the key or line).

Anything else (a library traceback, a wrong mask, a silent drop) fails the test. Faults that must
be refused (invalid UTF-8, an extra CSV cell, a duplicate key, a cut-off line, a corrupt Parquet
file) are checked to be refused, not merely to not crash.

CI runs ``max_examples=60`` per property with a fixed seed (well under a minute in all);
``FORGE_FUZZ_EXAMPLES=2000`` runs more, with fresh random cases; ``FORGE_FUZZ_SHRINK=1`` shrinks a
failure to a minimal example (slow). The tally (cases tried / our
clear error / correct acceptance / anything else) is printed at the end of the module and written
to ``.pytest_cache/forge-fuzz/tally.json``.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import json
import math
import os
import shutil
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.database import DirectoryBasedExampleDatabase  # noqa: E402

from kit.config import ConfigError, RunConfig  # noqa: E402
from kit.data import IGNORE, DataError, TemplateError, build_rows, build_tokenized, load_splits, read_file  # noqa: E402
from kit.data.encode import encode_chat, encode_prompt, encode_text_stream  # noqa: E402
from kit.errors import ForgeError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
_N = os.environ.get("FORGE_FUZZ_EXAMPLES")
FUZZ = settings(
    max_examples=int(_N) if _N else 60,
    derandomize=not _N,  # CI: the same cases every run; FORGE_FUZZ_EXAMPLES: new ones
    deadline=None,
    database=DirectoryBasedExampleDatabase(str(ROOT / ".pytest_cache" / "hypothesis")) if _N else None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    # shrinking a failing dataset case can take minutes; FORGE_FUZZ_SHRINK=1 asks for the minimal example
    phases=[p for p in Phase if p is not Phase.shrink or os.environ.get("FORGE_FUZZ_SHRINK")],
)

TALLY: dict[str, Counter] = defaultdict(Counter)
TALLY_FILE = ROOT / ".pytest_cache" / "forge-fuzz" / "tally.json"


@pytest.fixture(scope="module", autouse=True)
def _report_tally(request):
    yield
    total = Counter()
    for c in TALLY.values():
        total.update(c)
    doc = {
        "total": dict(total),
        "per_property": {k: dict(v) for k, v in sorted(TALLY.items())},
        "max_examples": FUZZ.max_examples,
    }
    TALLY_FILE.parent.mkdir(parents=True, exist_ok=True)
    TALLY_FILE.write_text(json.dumps(doc, indent=1) + "\n")
    rep = request.config.pluginmanager.get_plugin("terminalreporter")
    line = (
        f"fuzz: {total['tried']} cases tried / {total['clear_error']} our clear error / "
        f"{total['accepted']} correct acceptance / {total['other']} anything else  ({TALLY_FILE})"
    )
    if rep is not None:
        rep.write_line("")
        rep.write_line(line)
    else:
        print(line)


class Case:
    """Counts one fuzz case: exactly one of clear_error / accepted / other."""

    def __init__(self, prop: str):
        self.c = TALLY[prop]

    def __enter__(self):
        self.c["tried"] += 1
        return self

    def __exit__(self, et, e, tb):
        if et is None:
            self.c["accepted"] += 1
        elif issubclass(et, ForgeError) and getattr(e, "_place_checked", False):
            self.c["clear_error"] += 1
            return True
        else:
            self.c["other"] += 1
        return False


# ------------------------------------------------------------------------------- value strategies

LEADS = ["", "", "", " ", "  ", "\n", "\n\n", "\n\n\n", "\t", " \n "]
plain = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=24)
text = st.builds(lambda lead, t: lead + t, st.sampled_from(LEADS), plain)
solid = st.builds(lambda lead, t: lead + t + "x", st.sampled_from(LEADS), plain)  # never blank
HUGE = [
    "word " * 300,
    "\u00e9\u4e2d" * 400,
    "\n" * 200 + "x",
    '{"json": [1, 2, 3]}',
    '[{"role": "user"}]',
    "<|im_end|>",
    'a,b,"c"\n,d',
    "\x00\x01\x7f",
    "\u202e\ufeff\u200b",
]
weird = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.integers(10**18, 10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308]),
    text,
    st.sampled_from(HUGE),
    st.lists(st.integers(0, 3), max_size=2),
    st.dictionaries(plain, st.integers(), max_size=2),
    st.lists(
        st.dictionaries(
            st.sampled_from(["role", "content", "from", "value"]), st.one_of(plain, st.integers()), max_size=2
        ),
        max_size=2,
    ),
)


def value(draw, good):
    """Mostly ``good``, sometimes something else entirely."""
    return draw(weird) if draw(st.integers(0, 9)) == 0 else good


def conversation(draw, *, system=True, tools=False):
    msgs = []
    if system and draw(st.booleans()):
        msgs.append({"role": "system", "content": draw(text)})
    for _ in range(draw(st.integers(1, 3))):
        msgs.append({"role": "user", "content": draw(solid)})
        if tools and draw(st.booleans()):
            msgs.append(
                {
                    "role": "assistant",
                    "content": draw(st.sampled_from(["", "calling"])),
                    "tool_calls": [
                        {
                            "type": "function",
                            "function": {
                                "name": draw(st.sampled_from(["get_weather", "lookup"])),
                                "arguments": draw(st.sampled_from([{"city": "Paris"}, {}, '{"q": 1}'])),
                            },
                        }
                    ],
                }
            )
            msgs.append({"role": "tool", "content": draw(text)})
        msgs.append({"role": "assistant", "content": draw(solid)})
    return msgs


def sharegpt(msgs):
    names = {"system": "system", "user": "human", "assistant": "gpt", "tool": "observation"}
    return [{"from": names[m["role"]], "value": m["content"]} for m in msgs]


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    },
    {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}},
]


def good_row(draw, fmt):
    if fmt == "alpaca":
        row = {"instruction": draw(solid), "output": draw(solid)}
        if draw(st.booleans()):
            row["input"] = draw(st.one_of(text, st.none()))
        if draw(st.booleans()):
            row["system"] = draw(text)
        if draw(st.booleans()):
            row["history"] = [[draw(solid), draw(solid)] for _ in range(draw(st.integers(0, 2)))]
        return row
    if fmt == "messages":
        return {"messages": conversation(draw)}
    if fmt == "tools":
        return {
            "messages": conversation(draw, tools=True),
            "tools": draw(st.sampled_from([TOOLS, TOOLS[:1], json.dumps(TOOLS)])),
        }
    if fmt == "sharegpt":
        return {"conversations": sharegpt(conversation(draw))}
    if fmt == "preference":
        chat = conversation(draw, system=False)
        prompt, chosen, rejected = chat[:-1], chat[-1:], [{"role": "assistant", "content": draw(solid) + "!"}]
        style = draw(st.sampled_from(["text", "explicit", "implicit", "full"]))
        if style == "text":
            return {"prompt": prompt[-1]["content"], "chosen": chosen[0]["content"], "rejected": rejected[0]["content"]}
        if style == "explicit":
            return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
        if style == "implicit":
            return {"chosen": prompt + chosen, "rejected": prompt + rejected}
        return {"prompt": prompt, "chosen": prompt + chosen, "rejected": prompt + rejected}
    if fmt == "kto":
        label = draw(st.sampled_from([True, False, 0, 1]))
        chat = conversation(draw)
        if draw(st.booleans()):
            return {"messages": chat, "label": label}
        return {
            "prompt": draw(st.sampled_from([chat[:-1], chat[-2]["content"]])),
            "completion": draw(st.sampled_from([chat[-1:], chat[-1]["content"]])),
            "label": label,
        }
    if fmt == "text":
        return {"text": draw(solid)}
    if fmt == "prompt":
        row = {"prompt": draw(st.one_of(solid, st.builds(lambda t: [{"role": "user", "content": t}], solid)))}
        if draw(st.booleans()):
            row["answer"] = draw(
                st.one_of(plain, st.integers(-5, 5), st.floats(allow_nan=False, allow_infinity=False, width=32))
            )
        return row
    raise AssertionError(fmt)


def mutate(draw, row):
    """Zero or more random faults: a key dropped, a value replaced, a message broken, a key added."""
    row = copy.deepcopy(row)
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2]))):
        kind = draw(st.sampled_from(["drop", "replace", "message", "add", "empty"]))
        keys = list(row)
        if kind == "drop" and keys:
            del row[draw(st.sampled_from(keys))]
        elif kind == "replace" and keys:
            row[draw(st.sampled_from(keys))] = draw(weird)
        elif kind == "add":
            row[
                draw(st.sampled_from(["system", "input", "history", "tools", "label", "answer", "extra", "messages"]))
            ] = draw(weird)
        elif kind == "empty" and keys:
            row[draw(st.sampled_from(keys))] = draw(st.sampled_from(["", " ", "\n", [], {}]))
        elif kind == "message":
            lists = [v for v in row.values() if isinstance(v, list) and v and isinstance(v[0], dict)]
            if lists:
                msgs = draw(st.sampled_from(lists))
                m = msgs[draw(st.integers(0, len(msgs) - 1))]
                key = draw(st.sampled_from(["role", "content", "from", "value", "tool_calls", "name"]))
                if draw(st.booleans()) and key in m:
                    del m[key]
                else:
                    m[key] = draw(st.one_of(weird, st.sampled_from(["user", "assistant", "system", "tool", "gpt"])))
    if draw(st.integers(0, 29)) == 0:
        return draw(weird)  # not an object at all
    return row


# ------------------------------------------------------------------------------- file writers

FAULTS_THAT_MUST_FAIL = {"bad_utf8", "dup_key", "dup_column", "cut_line", "extra_cell", "short_row", "corrupt"}


def _cell(v):
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    return json.dumps(v)


def write(draw, path: Path, ftype: str, rows: list, *, clean: bool = False) -> str:
    """Write ``rows`` as ``ftype``; returns the fault injected ('' for none). ``clean``: only harmless
    variations (a BOM, CRLF line ends, blank lines)."""
    fault = draw(
        st.sampled_from(
            ["", "bom", "crlf", "blank_lines"]
            if clean
            else {
                "jsonl": ["", "", "", "", "bom", "bad_utf8", "dup_key", "cut_line", "crlf", "blank_lines"],
                "json": ["", "", "", "", "bom", "bad_utf8", "dup_key", "cut_line", "crlf"],
                "csv": [
                    "",
                    "",
                    "",
                    "",
                    "bom",
                    "bad_utf8",
                    "dup_column",
                    "crlf",
                    "blank_lines",
                    "extra_cell",
                    "short_row",
                    "unquoted",
                ],
                "parquet": ["", "", "", "corrupt"],
            }[ftype]
        )
    )
    if ftype == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = [r if isinstance(r, dict) else {"value": r} for r in rows]
        keys = list(dict.fromkeys(k for r in rows for k in r))  # from_pylist would take the first row's keys only
        try:
            pq.write_table(pa.table({k: [r.get(k) for r in rows] for k in keys}), str(path))
        except (pa.ArrowException, TypeError, ValueError, OverflowError):  # mixed types, empty structs: JSON text
            pq.write_table(
                pa.table({k: pa.array([_cell(r.get(k)) for r in rows], pa.string()) for k in keys}), str(path)
            )
        if fault == "corrupt":  # cut short, or the footer (length + magic) damaged; Parquet pages carry no
            data = path.read_bytes()  # checksum, so bytes changed inside a page may read back silently
            cut = draw(st.integers(0, len(data) - 1))
            path.write_bytes(data[:cut] if draw(st.booleans()) else data[:-8] + b"\x00" * 8)
            return fault
        return ""
    if ftype in ("jsonl", "json"):
        lines = [json.dumps(r, ensure_ascii=draw(st.booleans())) for r in rows]
        if fault == "dup_key":
            objs = [i for i, r in enumerate(rows) if isinstance(r, dict)]
            if not objs:
                fault = ""
            else:
                i = draw(st.sampled_from(objs))
                lines[i] = '{"dup": 1, "dup": 2' + (", " if rows[i] else "") + lines[i][1:]
        if ftype == "json" and fault != "cut_line":
            body = "[" + ",\n".join(lines) + "]"
            if draw(st.booleans()):
                body = '{"data": ' + body + "}"
        else:
            body = "\n".join(lines) + "\n"
            if fault == "cut_line":
                i = draw(st.integers(0, len(lines) - 1))
                if len(lines[i]) < 2:
                    fault = ""
                else:
                    lines[i] = lines[i][: draw(st.integers(1, len(lines[i]) - 1))]
                    body = "\n".join(lines) + "\n"
    else:
        keys = list(dict.fromkeys(k for r in rows if isinstance(r, dict) for k in r)) or ["value"]
        buf = io.StringIO()
        w = csv.writer(buf)  # "\r\n": QUOTE_MINIMAL then quotes any cell holding "\r" or "\n"
        w.writerow(keys + keys[:1] if fault == "dup_column" else keys)
        recs = [
            [_cell(r.get(k)) if isinstance(r, dict) else _cell(r) for k in keys]
            + (["x"] if fault == "dup_column" else [])
            for r in rows
        ]
        w.writerows(recs)
        body = buf.getvalue()
        if fault in ("extra_cell", "short_row", "unquoted"):
            i = draw(st.integers(0, len(recs) - 1))
            rec = list(recs[i])
            if fault == "unquoted":  # "yes, x" written without quotes: one cell more than the header
                cells = [_q(c) for c in rec[:-1]] + [
                    "yes, " + rec[-1].replace('"', "").replace("\r", " ").replace("\n", " ")
                ]
                line = ",".join(cells)
                fault = "extra_cell"
            else:
                if fault == "extra_cell" or len(rec) < 2:
                    rec.append(draw(plain))
                    fault = "extra_cell"
                else:
                    rec.pop()
                line = _q_row(rec)
            recs_text = [_q_row(keys)] + [line if j == i else _q_row(r) for j, r in enumerate(recs)]
            body = "\r\n".join(recs_text) + "\r\n"
    if fault == "blank_lines" and ftype == "csv":
        body = body.replace("\r\n", "\r\n\r\n", 1)
        fault = ""
    if fault == "crlf" and ftype != "csv":
        body = body.replace("\n", "\r\n")
        fault = ""
    if fault == "blank_lines" and ftype != "json":
        body = body.replace("\n", "\n\n", 1)
    data = body.encode("utf-8", errors="surrogatepass")
    if fault == "bom":
        data = b"\xef\xbb\xbf" + data
        fault = ""
    if fault == "bad_utf8":
        spots = [i for i, b in enumerate(data) if b not in b"\r\n"]
        i = draw(st.sampled_from(spots))
        data = data[:i] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80"])) + data[i:]
    if fault == "blank_lines":
        fault = ""
    path.write_bytes(data)
    return fault


def _head(path: Path) -> str:
    """The start of a file, for a failure message."""
    return repr(path.read_bytes()[:3000]) if path.is_file() else ""


def _q_row(cells: list) -> str:
    out = io.StringIO()
    csv.writer(out).writerow(cells)
    return out.getvalue()[:-2]


def _q(c: str) -> str:
    return _q_row([c])


# ------------------------------------------------------------------------------- the checks


def place_named(e: ForgeError, path: Path, n_rows: int) -> None:
    """Our error must say where: the file, and a row within range when it names one."""
    assert isinstance(e, (DataError, TemplateError, ConfigError)), f"{type(e).__name__}: {e}"
    if isinstance(e, ConfigError):  # e.g. the config rejected the dataset reference
        assert e.key, str(e)
    else:
        assert str(path) in str(e), f"the error does not name the file: {e}"
        if e.row is not None:
            assert 0 <= e.row < max(n_rows, 1), str(e)
    e._place_checked = True


def render(tok, msgs, tools=None, gen=False):
    kw = {"tools": tools} if tools else {}
    return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen, **kw)


def expected_trained(tok, msgs, tools=None):
    return "".join(
        render(tok, msgs[: i + 1], tools)[len(render(tok, msgs[:i], tools, gen=True)) :]
        for i, m in enumerate(msgs)
        if m["role"] == "assistant"
    )


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: the symbol of each byte in a byte-level BPE vocabulary."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\xa1"), ord("\xac") + 1))
        + list(range(ord("\xae"), ord("\xff") + 1))
    )
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


BYTE_OF = _byte_decoder()


def as_bytes(tok, ids) -> bytes:
    """The exact bytes token ids stand for. (``tok.decode`` is lossy: it turns some 4-byte characters into
    U+FFFD, so comparing decoded text would blame the encoder for the decoder.)"""
    added = {i: t.content for i, t in tok.added_tokens_decoder.items()}
    out = bytearray()
    for i, t in zip(ids, tok.convert_ids_to_tokens(list(ids))):
        out += added[i].encode() if i in added else bytes(BYTE_OF[c] for c in t)
    return bytes(out)


def representable(tok, text: str) -> bytes:
    """``text`` as the tokenizer can hold it. SmolLM2's byte-level vocabulary has no symbol for a few
    bytes (the control characters 0x04 0x06 0x13 0x14 0x16 0x1D, and 0xF1/0xF2, the lead bytes of the
    unassigned planes 4-11), and its BPE drops them without an unk token: the tokenizer's limit, not
    the encoder's, so the expected bytes leave them out too."""
    missing = getattr(tok, "_fuzz_missing_bytes", None)
    if missing is None:
        vocab = tok.get_vocab()
        missing = tok._fuzz_missing_bytes = {b for s, b in BYTE_OF.items() if s not in vocab}
    return bytes(b for b in text.encode() if b not in missing)


def check_chat(tok, msgs, e, tools=None):
    ids, labels = e["input_ids"], e["labels"]
    assert len(ids) == len(labels) and all(lab in (IGNORE, i) for i, lab in zip(ids, labels))
    assert as_bytes(tok, ids) == representable(tok, render(tok, msgs, tools))
    trained = as_bytes(tok, [i for i, lab in zip(ids, labels) if lab != IGNORE])
    assert trained == representable(tok, expected_trained(tok, msgs, tools)), (
        "the trained tokens are not exactly the answers"
    )


def check_accepted(tok, cfg, kind, path, written, ftype, fault):
    """A dataset that was accepted must be right: read back as written, encoded correctly."""
    rows, _ = load_splits(cfg, kind)
    assert fault not in FAULTS_THAT_MUST_FAIL, f"a '{fault}' fault in {ftype} was accepted"
    if ftype in ("jsonl", "json"):
        same = json.dumps(read_file(path), sort_keys=True) == json.dumps(written, sort_keys=True)
        assert same, "the rows read back differ from the rows written"
    assert len(rows) == len(written), "a row was dropped"
    if kind == "sft":
        train, _, _ = build_tokenized(cfg, tok, kind)
        assert len(train) == len(rows)
        for r, e in zip(rows, train):
            check_chat(tok, r["messages"], e, r.get("tools"))
    elif kind == "text":
        train, _, _ = build_tokenized(cfg, tok, kind)
        got = [i for b in train for i in b["input_ids"]]
        stream = [i for r in rows for i in tok(r["text"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]]
        assert got == stream[: len(got)] and len(got) >= len(stream) - 1
        assert encode_text_stream(tok, [r["text"] for r in rows], cfg.data.cutoff_len) == [dict(b) for b in train]
    else:
        build_rows(cfg, kind)  # what the TRL stages receive
        for r in rows:
            if kind == "preference":
                for k in ("chosen", "rejected"):
                    msgs = r["prompt"] + r[k]
                    check_chat(tok, msgs, encode_chat(tok, msgs, cfg.data.cutoff_len))
            elif kind == "kto":
                assert isinstance(r["label"], bool)
                check_chat(tok, r["messages"], encode_chat(tok, r["messages"], cfg.data.cutoff_len))
            else:
                p = encode_prompt(tok, r["prompt"])
                assert as_bytes(tok, p) == representable(tok, render(tok, r["prompt"], gen=True))
                assert r["answer"] is None or isinstance(r["answer"], str)


KIND = {
    "alpaca": "sft",
    "messages": "sft",
    "sharegpt": "sft",
    "tools": "sft",
    "preference": "preference",
    "kto": "kto",
    "text": "text",
    "prompt": "prompt",
}


class Tokenizers(dict):
    def __repr__(self):  # hypothesis prints the arguments of a failing case: keep the vocabulary out
        return "<tokenizers: SmolLM2's own template, and chatml_tools>"


@pytest.fixture(scope="module")
def tokenizers(default_tokenizer):
    from kit.data.templates import CHATML_TOOLS

    tools_tok = copy.deepcopy(default_tokenizer)
    tools_tok.chat_template = CHATML_TOOLS
    return Tokenizers(default=default_tokenizer, tools=tools_tok)


@pytest.fixture(scope="module")
def workdir():
    d = Path(tempfile.mkdtemp(prefix="forge-fuzz-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def run_dataset_case(draw, tokenizers, workdir, fmt, prop):
    """One dataset: valid rows in a harmless file (``clean``: must be accepted, and right), or rows and
    files with random faults (must be right, or refused with our error naming the place)."""
    ftype = draw(st.sampled_from(["jsonl", "json", "csv", "parquet"]))
    n = draw(st.integers(1, 4))
    clean = draw(st.integers(0, 2)) == 0
    rows = [good_row(draw, fmt) if clean else mutate(draw, good_row(draw, fmt)) for _ in range(n)]
    if not clean and draw(st.integers(0, 9)) == 0:
        rows[draw(st.integers(0, n - 1))] = {
            k: draw(st.sampled_from(HUGE)) if isinstance(v, str) else v
            for k, v in (rows[0].items() if isinstance(rows[0], dict) else [])
        }
    case_dir = Path(tempfile.mkdtemp(dir=workdir))
    path = case_dir / f"data.{ftype}"
    fault = write(draw, path, ftype, rows, clean=clean)
    tok = tokenizers["tools" if fmt == "tools" else "default"]
    data_format = draw(st.sampled_from(["auto", "auto", "messages" if fmt == "tools" else fmt]))
    with Case(prop):
        try:
            cfg = RunConfig.from_kwargs(
                dataset=str(path),
                format=data_format,
                cutoff_len=1 << 16,
                shuffle=False,
                cache=False,
                output_dir=str(case_dir / "run"),
            )
            check_accepted(tok, cfg, KIND[fmt], path, rows, ftype, fault)
        except ForgeError as e:
            assert not clean, f"valid {fmt} rows in a {ftype} file were refused: {e}\n{_head(path)}"
            place_named(e, path, n)
            raise
        finally:
            shutil.rmtree(case_dir, ignore_errors=True)


FORMATS = ["alpaca", "messages", "sharegpt", "preference", "kto", "text", "prompt", "tools"]


@pytest.mark.parametrize("fmt", FORMATS)
@FUZZ
@given(data=st.data())
def test_fuzz_dataset_rows(tokenizers, workdir, fmt, data):
    """Random (often malformed) rows of one format in a random file type: correct, or our error."""
    run_dataset_case(data.draw, tokenizers, workdir, fmt, f"data:{fmt}")


@FUZZ
@given(data=st.data())
def test_fuzz_whole_files(tokenizers, workdir, data):
    """Files that are wrong as a whole: empty, only a BOM, random bytes, UTF-16, a folder, a wrong suffix."""
    draw = data.draw
    ftype = draw(st.sampled_from(["jsonl", "json", "csv", "parquet"]))
    case_dir = Path(tempfile.mkdtemp(dir=workdir))
    path = case_dir / f"data.{ftype}"
    kind = draw(
        st.sampled_from(["empty", "bom", "spaces", "random", "utf16", "folder", "nul", "scalar", "list_of_lists"])
    )
    blob = {
        "empty": b"",
        "bom": b"\xef\xbb\xbf",
        "spaces": b" \n\n\t\n",
        "nul": b"\x00" * 64,
        "scalar": b"42\n",
        "list_of_lists": b"[[1, 2], [3]]\n",
    }.get(kind)
    if kind == "random":
        blob = draw(st.binary(max_size=200))
    elif kind == "utf16":
        blob = json.dumps([{"text": draw(solid)}], ensure_ascii=False).encode("utf-16")
    if kind == "folder":
        path.mkdir()
    else:
        path.write_bytes(blob)
    with Case("data:whole-files"):
        try:
            cfg = RunConfig.from_kwargs(dataset=str(path), shuffle=False, cache=False, output_dir=str(case_dir / "run"))
            rows, _ = load_splits(cfg, "text")
            assert kind == "utf16" and ftype in ("json", "jsonl"), f"{kind} {ftype} accepted: {rows[:2]}"
        except ForgeError as e:
            place_named(e, path, 1)
            raise
        finally:
            shutil.rmtree(case_dir, ignore_errors=True)


# ------------------------------------------------------------------------------- config fuzz

GROUP_FIELDS = {
    g: [f.name for f in dataclasses.fields(type(getattr(RunConfig(), g)))]
    for g in ("model", "quant", "adapter", "data", "stage", "train", "generate")
}
DOTTED = [f"{g}.{k}" for g, ks in GROUP_FIELDS.items() for k in ks]
DEFAULTS = {f"{g}.{k}": json.dumps(v) for g in GROUP_FIELDS for k, v in vars(getattr(RunConfig(), g)).items()}
YAML_VALUES = [
    ".nan",
    ".inf",
    "-.inf",
    "1e9",
    "1e308",
    "-5",
    "0",
    "1",
    "-1",
    "2.5",
    "true",
    "no",
    "null",
    "~",
    "[]",
    "[1, 2]",
    "{a: 1}",
    "''",
    "'x'",
    "sft",
    "dpo",
    "lora",
    "4",
    "1e-3",
    "0x10",
    "99999999999999999999999",
    "!!binary aGk=",
    "&a 1",
    "*a",
    "'\\u0000'",
    "[[[[1]]]]",
    "2024-01-01",
    "0o17",
    "+1",
    ".5",
    "--",
    ": x",
]


def yaml_scalar(draw):
    return draw(
        st.one_of(
            st.sampled_from(YAML_VALUES),
            st.integers(-(10**6), 10**20).map(str),
            st.floats(allow_nan=True, allow_infinity=True).map(repr),
            plain.map(json.dumps),
            plain.filter(lambda s: "\n" not in s and "\r" not in s),
        )
    )


def check_config(cfg):
    """An accepted config is valid: finite numbers, and it round-trips through its YAML."""
    assert isinstance(cfg, RunConfig)
    for g in GROUP_FIELDS:
        for k, v in vars(getattr(cfg, g)).items():
            if isinstance(v, float):
                assert math.isfinite(v), f"{g}.{k} = {v} accepted"
    again = RunConfig.from_yaml_text(cfg.to_yaml())
    assert again == cfg, "the config changes when saved and read back"


def config_case(prop, build):
    with Case(prop):
        try:
            check_config(build())
        except ConfigError as e:
            assert str(e).strip(), "an empty ConfigError"
            e._place_checked = True
            raise


@FUZZ
@given(data=st.data())
def test_fuzz_config_yaml(data):
    """Random YAML: known and unknown keys, nested or flat, duplicates, NaN/inf/huge, junk lines."""
    draw = data.draw
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        shape = draw(
            st.sampled_from(["default", "default", "default", "flat", "dotted", "group", "unknown", "junk", "dup"])
        )
        key = draw(st.sampled_from(DOTTED))
        g, k = key.split(".")
        v = yaml_scalar(draw)
        if shape == "default":  # a valid value (the default, as JSON) so that acceptance is exercised too
            lines.append(f"{key}: {DEFAULTS[key]}")
        elif shape == "flat":
            lines.append(f"{k}: {v}")
        elif shape == "dotted":
            lines.append(f"{key}: {v}")
        elif shape == "group":
            lines += [f"{g}:", f"  {k}: {v}"] + (
                [f"  {draw(st.sampled_from(GROUP_FIELDS[g]))}: {yaml_scalar(draw)}"] if draw(st.booleans()) else []
            )
        elif shape == "unknown":
            lines.append(f"{draw(st.sampled_from([g, 'x', 'train.nope', 'learnin_rate', 'model.nme']))}: {v}")
        elif shape == "dup":
            lines += [f"{k}: {v}", f"{k}: {yaml_scalar(draw)}"]
        else:
            lines.append(
                draw(
                    st.sampled_from(
                        ["- 1", "\t x: 1", "{", "]", "key", "%YAML 1.1", "---", "? x", "!!python/name:os.system"]
                    )
                )
            )
    text = "\n".join(lines)
    config_case("config:yaml", lambda: RunConfig.from_yaml_text(text))


@FUZZ
@given(data=st.data())
def test_fuzz_config_overrides(data):
    """Random CLI ``key=value`` overrides on a valid config."""
    draw = data.draw
    pairs = []
    for _ in range(draw(st.integers(1, 5))):
        key = draw(
            st.one_of(
                st.sampled_from(DOTTED),
                st.sampled_from([k.split(".")[1] for k in DOTTED]),
                st.sampled_from(["", "=", "train.", ".x", "nope", "train.nope", "a.b.c"]),
            )
        )
        sep = draw(st.sampled_from(["=", "=", "=", " = ", ""]))
        v = DEFAULTS[key] if key in DEFAULTS and draw(st.booleans()) else yaml_scalar(draw)
        pairs.append(f"{key}{sep}{v}")
    config_case("config:overrides", lambda: RunConfig().override(pairs))


@FUZZ
@given(data=st.data())
def test_fuzz_config_python_values(data):
    """Random Python values through ``RunConfig.from_kwargs`` (what a notebook passes)."""
    draw = data.draw
    kw = {}
    for _ in range(draw(st.integers(1, 4))):
        key = draw(st.sampled_from(DOTTED)).replace(".", "__")
        kw[key] = draw(
            st.one_of(weird, st.sampled_from([float("nan"), float("inf"), -1, 0, 10**12, 1e-12, "", [], {}]))
        )
    config_case("config:python", lambda: RunConfig.from_kwargs(**kw))


def test_fuzz_tally_is_consistent():
    """Runs last in this module: every case was classified once, and nothing else happened."""
    for prop, c in TALLY.items():
        assert c["tried"] == c["clear_error"] + c["accepted"] + c["other"], prop
        assert c["other"] == 0, f"{prop}: {c['other']} cases ended in another exception"
