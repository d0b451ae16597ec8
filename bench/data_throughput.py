"""Big datasets: validating and tokenizing 100k chat rows, Forge vs LLaMA-Factory's preprocessing.

    python bench/data_throughput.py                     # 10k and 100k rows, every contender
    python bench/data_throughput.py --rows 2000         # one smaller size
    python bench/data_throughput.py --contenders forge forge-cached

Data (written once, deterministically, to ``~/.cache/forge-kit/bench/chat-<rows>-v1.jsonl``):
``messages`` rows built from the plain-text ``pydoc`` reference of Python standard-library modules
(nothing downloaded): a system prompt on 30 % of the rows, 1-4 user/assistant turns, answers cut at
a line to a log-uniform target of 16-2000 tokens (about 4 characters a token), questions from
templates naming the module, a few answers starting with a space or a newline and some non-ASCII
text. The first N rows of the 100k file are the N-row file, so sizes differ only in length.

Contenders, each in a fresh subprocess (argv list, no shell):

* ``forge``: what the engine calls for an SFT run, ``validate_dataset`` then ``build_tokenized``
  (cache on, in a fresh ``FORGE_HOME``), with the default model's tokenizer and chat template.
* ``forge-cached``: the same two calls again in a new process on the cache the first one wrote;
  the time is of the data calls only (interpreter start, ``import kit`` and loading the tokenizer
  are not in it; they are reported beside it).
* ``llamafactory-w1`` / ``-w2``: LLaMA-Factory 0.9.5's own ``get_dataset`` for ``stage="sft"``
  (its ``sharegpt`` converter over the same rows, template ``chatml``, the same ``cutoff_len``),
  ``preprocessing_num_workers`` 1 and 2, in its own venv (``train_throughput.ensure_llamafactory_venv``),
  with a fresh ``HF_DATASETS_CACHE`` so nothing comes from an earlier run.

Each child times its data call with ``time.perf_counter`` and reports ``ru_maxrss`` of itself and
of its worker processes (``RUSAGE_CHILDREN``). rows/s = input rows / time; tokens/s = tokens of
the encoded rows / time. The parent prints the 1-minute load average before each contender.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import pydoc
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # run from a checkout: import this kit even when it is not installed
BENCH_DIR = Path.home() / ".cache" / "forge-kit" / "bench"
DATA_VERSION = "v1"
SEED = 18
CUTOFF_LEN = 2048
CONTENDERS = ("forge", "forge-cached", "llamafactory-w1", "llamafactory-w2")

# ----------------------------------------------------------------------------- the data

MODULES = (
    "argparse asyncio.events collections configparser contextlib csv dataclasses datetime decimal difflib "
    "email.message enum fractions ftplib functools gzip hashlib heapq html.parser http.client imaplib inspect "
    "io ipaddress itertools json logging mailbox math multiprocessing.pool operator os pathlib pickle "
    "pprint queue random re sched selectors shlex shutil smtplib socket sqlite3 statistics string struct "
    "subprocess tarfile tempfile textwrap threading tokenize traceback types typing unittest urllib.parse "
    "uuid wave weakref xml.dom.minidom xml.etree.ElementTree zipfile zoneinfo"
).split()
SYSTEMS = (
    "You are a helpful assistant.",
    "You are an expert Python developer. Answer precisely, with signatures and short examples where useful.",
    "You are a concise technical writer. Prefer plain prose; use code blocks only for code.",
    "Tu es un assistant qui répond en anglais, avec précision. Réponds à la question posée, sans détour.",
    "You answer questions about the Python standard library. If something depends on the Python "
    "version, say which version you describe. Do not invent functions that do not exist; when unsure, "
    "say so. Keep answers focused on what was asked and mention related modules only when they help.",
)
FIRST = (
    "What does the `{m}` module do?",
    "Explain the `{m}` module of the Python standard library.",
    "Can you document the public API of `{m}` for me?",
    "I am new to Python. How would I use `{m}`?",
    "Give me a reference of `{m}`, class by class.",
    "Quick one: what is `{m}` for?",
    "Write the documentation of Python's `{m}` module — all of it, please.",
    "¿Qué hace el módulo `{m}`? Answer in English please.",
)
FOLLOW = (
    "Thanks. Can you go on?",
    "What about the rest of `{m}`?",
    "Can you show more of the details?",
    "And the functions that come after that?",
    "Ok. Continue with the remaining parts, please.",
    "Could you explain the next part in more detail?",
)


def _module_text(m: str) -> str:
    text = pydoc.render_doc(m, renderer=pydoc.plaintext)
    text = re.sub(r"\s+at 0x[0-9a-fA-F]+", "", text)  # object addresses differ between runs
    return re.sub(r"(?m)^(FILE|MODULE REFERENCE)\n(    .*\n)+\n?", "", text)  # install paths


def _answer(lines: list[str], rng: random.Random) -> str:
    """A run of whole lines from a random place of the module's text, about a log-uniform 16-2000 tokens long."""
    target = int(math.exp(rng.uniform(math.log(16), math.log(2000)))) * 4  # ~4 characters a token
    start = rng.randrange(max(1, len(lines) - 8))
    out, n = [], 0
    for line in lines[start:]:
        out.append(line.rstrip())
        n += len(line) + 1
        if n >= target:
            break
    text = "\n".join(out).strip() or "See the module's documentation."
    roll = rng.random()
    if roll < 0.01:
        return "\n" + text  # answers that start with whitespace exercise the text-cut path of encode.py
    if roll < 0.02:
        return " " + text
    return text


def build_rows(n: int) -> list[dict]:
    texts = {m: _module_text(m).splitlines() for m in MODULES}
    rng = random.Random(SEED)
    rows = []
    for _ in range(n):
        m = rng.choice(MODULES)
        msgs = []
        if rng.random() < 0.3:
            msgs.append({"role": "system", "content": rng.choice(SYSTEMS)})
        turns = rng.choices((1, 2, 3, 4), weights=(50, 25, 15, 10))[0]
        for t in range(turns):
            q = rng.choice(FIRST if t == 0 else FOLLOW).format(m=m)
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": _answer(texts[m], rng)}]
        rows.append({"messages": msgs})
    return rows


def dataset_path(rows: int) -> Path:
    """The ``rows``-row file (the first rows of the largest one written), written once."""
    p = BENCH_DIR / f"chat-{rows}-{DATA_VERSION}.jsonl"
    if not p.exists():
        BENCH_DIR.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for r in build_rows(rows):
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        os.replace(tmp, p)
    return p


# ----------------------------------------------------------------------------- children


def _rss() -> dict:
    return {
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "workers_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def _cpu_s() -> float:
    """CPU seconds of this process (all its threads) and of its finished worker processes: on a
    shared machine the wall time also counts the time other people's work held the cores."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def child_forge(args) -> dict:
    t0 = time.perf_counter()
    import datasets  # noqa: F401  (a library import: a training run has it loaded by then, through TRL)
    from transformers import AutoTokenizer

    from kit import RunConfig
    from kit.data import build_tokenized, validate_dataset

    t_import = time.perf_counter() - t0
    tok = AutoTokenizer.from_pretrained(args.model_path)
    t_tok = time.perf_counter() - t0 - t_import
    cfg = RunConfig.from_kwargs(
        model=args.model_path, dataset=args.data, cutoff_len=CUTOFF_LEN, output_dir=str(Path(args.work) / "run")
    )
    t, c = time.perf_counter(), _cpu_s()
    checked = validate_dataset(cfg, "sft")  # the engine's check before the model loads
    t_validate = time.perf_counter() - t
    train, _, info = build_tokenized(cfg, tok, "sft")  # what the SFT stage calls
    t_data, cpu = time.perf_counter() - t, _cpu_s() - c
    rss = _rss()  # before the token count below reads the rows back
    return {
        "rows_in": checked["train_rows"],
        "rows_out": len(train),
        "tokens": count_tokens(train) if args.count_tokens else None,
        "data_s": t_data,
        "cpu_s": cpu,
        "validate_s": t_validate,
        "import_s": t_import,
        "tokenizer_load_s": t_tok,
        "cache_hit": info["cache_hit"],
        **rss,
    }


def count_tokens(ds) -> int:
    """Tokens of every row of a ``datasets.Dataset``, a batch of Arrow rows at a time."""
    import pyarrow.compute as pc

    return sum(
        pc.sum(pc.list_value_length(b["input_ids"])).as_py() for b in ds.with_format("arrow").iter(batch_size=8192)
    )


def child_llamafactory(args) -> dict:
    # LLaMA-Factory's first import; transformers decides here (cached) which optional packages
    # exist, so it must run before the torchaudio stand-in, which it should not see
    import transformers  # noqa: F401

    try:
        import torchaudio  # noqa: F401
    except (ImportError, OSError):
        # as in train_throughput.child_llamafactory: LLaMA-Factory 0.9.5 imports torchaudio at module
        # level for its audio plugin, text-only SFT never calls it, and the registry has no build for this torch
        import types

        sys.modules["torchaudio"] = types.ModuleType("torchaudio")
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    work = Path(args.work)
    (work / "dataset_info.json").write_text(
        json.dumps(
            {
                "bench_chat": {
                    "file_name": args.data,
                    "formatting": "sharegpt",
                    "columns": {"messages": "messages"},
                    "tags": {
                        "role_tag": "role",
                        "content_tag": "content",
                        "user_tag": "user",
                        "assistant_tag": "assistant",
                        "system_tag": "system",
                    },
                }
            }
        )
    )
    cfg = {
        "model_name_or_path": args.model_path,
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "dataset": "bench_chat",
        "dataset_dir": str(work),
        "template": "chatml",
        "cutoff_len": CUTOFF_LEN,
        "output_dir": str(work / "out"),
        "overwrite_output_dir": True,
        "report_to": "none",
        "use_cpu": True,
        "preprocessing_num_workers": args.workers,
    }
    model_args, data_args, training_args, _, _ = get_train_args(cfg)
    tokenizer_module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    t, c = time.perf_counter(), _cpu_s()
    module = get_dataset(template, model_args, data_args, training_args, stage="sft", **tokenizer_module)
    t_data, cpu = time.perf_counter() - t, _cpu_s() - c
    rss = _rss()
    train = module["train_dataset"]
    tokens = count_tokens(train) if args.count_tokens else None
    with open(args.data, encoding="utf-8") as f:
        rows_in = sum(1 for line in f if line.strip())
    return {"rows_in": rows_in, "rows_out": len(train), "tokens": tokens, "data_s": t_data, "cpu_s": cpu, **rss}


# ----------------------------------------------------------------------------- parent


def model_path() -> str:
    from kit.models import resolve_model_path

    return resolve_model_path("smollm2-135m-instruct")[0]


def run_child(name: str, rows: int, data: Path, work: Path, args) -> dict:
    # the libraries' own defaults for threads (no TOKENIZERS_PARALLELISM / OMP_NUM_THREADS set here)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HERE), env.get("PYTHONPATH", "")])
    py = sys.executable
    if name.startswith("llamafactory"):
        from train_throughput import ensure_llamafactory_venv

        py = str(ensure_llamafactory_venv())
        env["HF_DATASETS_CACHE"] = str(work / "hf-datasets")  # a cold run: nothing from an earlier one
    else:
        env["FORGE_HOME"] = str(BENCH_DIR / f"forge-home-{rows}")  # forge-cached reads what forge wrote
    out = work / f"{name}.json"
    argv = [py, str(Path(__file__).resolve()), "--child", name, "--child-out", str(out)]
    argv += ["--data", str(data), "--model-path", args.model_path, "--work", str(work)]
    if name.startswith("llamafactory"):
        argv += ["--workers", name.rsplit("w", 1)[1]]
    if not args.count_tokens:
        argv.append("--no-count-tokens")
    t = time.time()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not out.exists():
        return {"name": name, "rows": rows, "error": f"exit {proc.returncode}", "stderr_tail": proc.stderr[-3000:]}
    res = json.loads(out.read_text())
    res.update(name=name, rows=rows, wall_s=time.time() - t)
    res["rows_per_s"] = res["rows_in"] / res["data_s"]
    res["rows_per_cpu_s"] = res["rows_in"] / max(res["cpu_s"], 1e-9)
    res["tokens_per_s"] = res["tokens"] / res["data_s"] if res.get("tokens") else None
    return res


def fmt(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


def report(results: list[dict]) -> dict:
    print(
        f"\n{'rows':>7} {'contender':<17}{'data s':>9}{'rows/s':>9}{'CPU s':>8}{'rows/CPU s':>11}{'tokens/s':>11}{'tokens':>11}"
        f"{'peak RSS MB':>12}{'workers MB':>11}{'load':>6}"
    )
    for r in results:
        if "error" in r:
            print(f"{r['rows']:>7} {r['name']:<17} FAILED: {r['error']}\n{r['stderr_tail']}")
            continue
        print(
            f"{r['rows']:>7} {r['name']:<17}{r['data_s']:>9.2f}{r['rows_per_s']:>9.0f}{r['cpu_s']:>8.1f}"
            f"{r['rows_per_cpu_s']:>11.0f}{fmt(r['tokens_per_s'], '.0f'):>11}"
            f"{fmt(r.get('tokens'), 'd'):>11}{r['peak_rss_mb']:>12.0f}{r['workers_peak_rss_mb']:>11.0f}"
            f"{r['loadavg_before'][0]:>6.2f}"
        )
    ratios = {}
    by = {(r["rows"], r["name"]): r for r in results if "error" not in r}
    for rows in sorted({r["rows"] for r in results}):
        f, cached = by.get((rows, "forge")), by.get((rows, "forge-cached"))
        lf = [by[(rows, n)] for n in ("llamafactory-w1", "llamafactory-w2") if (rows, n) in by]
        if f and lf:
            best = max(lf, key=lambda r: r["rows_per_s"])
            ratios[f"{rows} rows: forge/{best['name']} rows_per_s"] = f["rows_per_s"] / best["rows_per_s"]
            best_cpu = max(lf, key=lambda r: r["rows_per_cpu_s"])
            ratios[f"{rows} rows: forge/{best_cpu['name']} rows_per_cpu_s"] = (
                f["rows_per_cpu_s"] / best_cpu["rows_per_cpu_s"]
            )
        if cached:
            ratios[f"{rows} rows: forge-cached data_s"] = cached["data_s"]
    sizes = sorted({r for r, _ in by})
    if len(sizes) > 1:
        for name in CONTENDERS:
            a, b = by.get((sizes[0], name)), by.get((sizes[-1], name))
            if a and b:
                ratios[f"{name}: peak RSS {sizes[-1]} / {sizes[0]} rows"] = b["peak_rss_mb"] / a["peak_rss_mb"]
    for k, v in ratios.items():
        print(f"  {k}: {v:.2f}{'' if 'data_s' in k else 'x'}")
    return ratios


def parse(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000], help="dataset sizes (default 10k, 100k)")
    p.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
    p.add_argument("--out", default=None, help="results JSON (default bench/results/data-<timestamp>.json)")
    p.add_argument(
        "--no-count-tokens",
        dest="count_tokens",
        action="store_false",
        help="skip counting the encoded tokens after the timed call (it reads every row back)",
    )
    p.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--model-path", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    if args.child:
        res = child_llamafactory(args) if args.child.startswith("llamafactory") else child_forge(args)
        Path(args.child_out).write_text(json.dumps(res))
        return 0
    args.model_path = model_path()
    sizes = sorted(args.rows)
    for rows in sizes:  # the largest first would make the smaller ones prefixes of it; both are cheap to build
        dataset_path(rows)
    results = []
    started = os.getloadavg()
    for rows in sizes:
        data = dataset_path(rows)
        shutil.rmtree(BENCH_DIR / f"forge-home-{rows}", ignore_errors=True)  # forge starts cold
        print(f"{rows} rows: {data} ({data.stat().st_size / 2**20:.0f} MiB)", flush=True)
        for name in args.contenders:
            work = Path(tempfile.mkdtemp(prefix=f"data-bench-{name}-"))
            load = os.getloadavg()
            print(f"  running {name} (load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}) ...", flush=True)
            res = run_child(name, rows, data, work, args)
            res["loadavg_before"], res["loadavg_after"] = load, os.getloadavg()
            if "error" not in res:
                print(
                    f"    {res['data_s']:.2f} s, {res['rows_per_s']:.0f} rows/s, peak RSS {res['peak_rss_mb']:.0f} MB",
                    flush=True,
                )
            results.append(res)
            shutil.rmtree(work, ignore_errors=True)
    ratios = report(results)
    out = (
        Path(args.out)
        if args.out
        else HERE / "results" / f"data-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"loadavg_start": started, "loadavg_end": os.getloadavg(), "cpu_count": os.cpu_count()}
    meta["python"] = sys.version.split()[0]
    out.write_text(json.dumps({"machine": meta, "args": vars(args), "results": results, "ratios": ratios}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
