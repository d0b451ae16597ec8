"""Write ``data/demo_long_sft.jsonl``: 40 long-answer SFT rows (answers of 1k-4k tokens), deterministically.

    python bench/make_long_data.py            # rewrites data/demo_long_sft.jsonl (the shipped file)
    python bench/make_long_data.py --check    # exit 1 if the shipped file differs from a fresh build

The answers are the reference documentation of Python standard-library modules, rendered as plain
text by ``pydoc`` (prose, signatures and code: realistic long technical answers), cut at a line
boundary to a target length measured with the default model's tokenizer. Target lengths follow a
fixed spread over 1024-4000 tokens (log-uniform, seeded), so a batch mixes short and long rows the
way real long-context data does. Nothing is downloaded: the text is what this Python ships
(3.11's docstrings), the tokenizer is the embedded default model's.
"""

from __future__ import annotations

import argparse
import json
import math
import pydoc
import random
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "data" / "demo_long_sft.jsonl"
ROWS, LO, HI, SEED = 40, 1024, 4000, 18
# modules with long, mostly prose docstrings (first the ones with the longest documentation)
MODULES = (
    "argparse",
    "collections",
    "dataclasses",
    "datetime",
    "decimal",
    "email.message",
    "enum",
    "fractions",
    "functools",
    "heapq",
    "http.client",
    "inspect",
    "ipaddress",
    "itertools",
    "json",
    "logging",
    "mailbox",
    "os",
    "pathlib",
    "pickle",
    "random",
    "re",
    "shutil",
    "socket",
    "sqlite3",
    "statistics",
    "string",
    "subprocess",
    "tarfile",
    "textwrap",
    "threading",
    "typing",
    "unittest",
    "urllib.parse",
    "uuid",
    "wave",
    "xml.dom.minidom",
    "zipfile",
    "zoneinfo",
    "difflib",
    "configparser",
    "csv",
    "gzip",
    "hashlib",
    "io",
    "math",
    "operator",
    "pprint",
    "queue",
    "sched",
    "selectors",
    "shlex",
    "smtplib",
    "struct",
    "tempfile",
    "tokenize",
    "traceback",
    "types",
    "weakref",
    "xml.etree.ElementTree",
)
ASKS = (
    "Write the reference documentation for Python's `{m}` module.",
    "Explain everything the `{m}` module of the Python standard library provides, with signatures.",
    "Document the public API of `{m}` (Python 3), class by class and function by function.",
    "I need a complete offline reference for the Python module `{m}`. Please write it out.",
)


def clean(text: str) -> str:
    """Drop what differs between machines and runs: install paths, object addresses."""
    text = re.sub(r"\s+at 0x[0-9a-fA-F]+", "", text)
    return re.sub(r"(?m)^(FILE|MODULE REFERENCE)\n(    .*\n)+\n?", "", text)


def build(tokenizer) -> list[dict]:
    rng = random.Random(SEED)
    rows = []
    for m in MODULES:
        if len(rows) == ROWS:
            break
        text = clean(pydoc.render_doc(m, renderer=pydoc.plaintext))
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) < HI:
            continue  # too short to be cut to any target in the spread
        target = int(math.exp(rng.uniform(math.log(LO), math.log(HI))))
        lines, out = text.splitlines(), []
        for line in lines:  # whole lines up to the target, counted on the joined text
            out.append(line.rstrip())
            if len(out) % 8 == 0 and len(tokenizer("\n".join(out), add_special_tokens=False)["input_ids"]) > target:
                while len(out) > 1 and len(tokenizer("\n".join(out), add_special_tokens=False)["input_ids"]) > target:
                    out.pop()
                break
        rows.append(
            {"instruction": ASKS[len(rows) % len(ASKS)].format(m=m), "input": "", "output": "\n".join(out).strip()}
        )
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true")
    a = p.parse_args(argv)
    from transformers import AutoTokenizer

    from kit.models import resolve_model_path

    tok = AutoTokenizer.from_pretrained(resolve_model_path("smollm2-135m-instruct")[0])
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in build(tok))
    if a.check:
        same = OUT.exists() and OUT.read_text() == text
        print("up to date" if same else f"{OUT} differs from a fresh build")
        return 0 if same else 1
    OUT.write_text(text)
    lens = sorted(len(tok(json.loads(line)["output"])["input_ids"]) for line in text.splitlines())
    print(
        f"wrote {OUT}: {len(lens)} rows, {OUT.stat().st_size / 1024:.0f} KiB, answer tokens min {lens[0]} "
        f"median {lens[len(lens) // 2]} max {lens[-1]}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
