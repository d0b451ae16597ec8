"""The memory estimate against the measured peak RSS, on rows that fill every forward pass.

    python bench/memory_estimate.py                      # every workload of issue #18, CPU fp32
    python bench/memory_estimate.py --workloads long-4096 qlora --steps 3

The estimate a run shows before it starts (the engine's ``model`` event, the CLI's "estimated
memory" line, the Board's adapter panel: one formula, :mod:`kit.memory`) is an upper bound: every
forward pass as long as ``cutoff_len`` (or the token budget) allows. A throughput run on the demo
data rarely reaches it (the long-row set has rows of 1-4k tokens; two steps see four of them), so
its peak RSS says little about the bound. Here every row is longer than the cutoff (the long-row
set's answers repeated, then truncated by the run), so every pass is full and the peak is the one
the estimate stands for. Each workload runs ``kit.train`` in its own process (peak RSS =
``ru_maxrss``, so nothing of another workload counts); bigger architectures are the random-weight
models of ``bench/train_throughput.py --model`` (built once, nothing downloaded).

Prints, per workload: the estimate by part, the measured peaks and the errors; exits 0 either way
(a benchmark reports, it does not judge). Two peaks: ``ru_maxrss`` (all resident pages, including
the checkpoint's file pages while it is mmapped during loading) and the anonymous resident memory
(``RssAnon``, sampled every 0.2 s by the parent): the memory the kernel cannot reclaim, i.e. what
decides whether a run fits.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import train_throughput as tt  # noqa: E402

# name -> (model: the default or a train_throughput ARCHS entry, kit.train keywords)
WORKLOADS = {
    "defaults": (tt.MODEL, {"batch_size": 4, "cutoff_len": 512}),
    "long-2048": (tt.MODEL, {"batch_size": 2, "cutoff_len": 2048}),
    "long-4096": (tt.MODEL, {"batch_size": 2, "cutoff_len": 4096}),
    "smollm2-360m": ("smollm2-360m", {"batch_size": 4, "cutoff_len": 512}),
    "qwen2.5-0.5b": ("qwen2.5-0.5b", {"batch_size": 4, "cutoff_len": 512}),
    "qlora": (tt.MODEL, {"batch_size": 4, "cutoff_len": 512, "quantization_bit": 4}),
}


def full_rows(cutoff_len: int, path: Path) -> Path:
    """``demo_long_sft``'s rows with each answer repeated until the row is longer than ``cutoff_len``
    tokens at any tokenizer's rate (>= 6 characters per token of budget): the run truncates each to
    exactly ``cutoff_len``."""
    rows = [json.loads(line) for line in tt.dataset_file("demo_long_sft").read_text().splitlines() if line.strip()]
    with path.open("w") as f:
        for r in rows:
            out = r["output"]
            while len(out) < 6 * cutoff_len:
                out += "\n\n" + r["output"]
            f.write(json.dumps({**r, "output": out}) + "\n")
    return path


def child(args) -> None:
    import kit

    model, kw = WORKLOADS[args.child]
    path = tt.resolve_default() if model == tt.MODEL else tt.random_model(model)
    with tempfile.TemporaryDirectory(prefix="forge-mem-") as tmp:
        data = full_rows(kw["cutoff_len"], Path(tmp) / "rows.jsonl")
        run = kit.train(
            model=path,
            dataset=str(data),
            max_steps=args.steps,
            lora_rank=16,
            lora_alpha=32,
            save_steps=0,
            logging_steps=1,
            num_threads=args.threads or None,
            output_dir=str(Path(tmp) / "run"),
            **kw,
        )
        ev = next(e for e in run.events if e.kind == "model")
        data_ev = next((e for e in run.events if e.kind == "data"), None)
        res = {
            "workload": args.child,
            "estimate": ev.get("memory_estimate"),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "tokens_per_forward": data_ev.get("tokens_per_forward") if data_ev else None,
            "gradient_checkpointing": bool(run.config.train.gradient_checkpointing),
            "steps": args.steps,
        }
    Path(args.child_out).write_text(json.dumps(res))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__)
    p.add_argument("--workloads", nargs="+", choices=tuple(WORKLOADS), default=list(WORKLOADS))
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per workload")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="results JSON (default bench/results/memory-<timestamp>.json)")
    p.add_argument("--child", choices=tuple(WORKLOADS), help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        child(a)
        return 0
    info = tt.machine()
    print(f"machine: {info['cpu']} ({info['physical_cores']} cores), torch {info['torch']}")
    rows = []
    for name in a.workloads:
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            out = f.name
        load = os.getloadavg()
        print(f"running {name} (load {load[0]:.2f}) ...", flush=True)
        cmd = [sys.executable, __file__, "--child", name, "--child-out", out, "--steps", str(a.steps)]
        cmd += ["--threads", str(a.threads)]
        with tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True, start_new_session=True)
            peak_anon, _ = tt.watch_memory(proc, None)
            err.seek(0)
            stderr = err.read()
        if proc.returncode != 0:
            rows.append({"workload": name, "error": stderr.strip().splitlines()[-1:] or ["failed"]})
            print(f"  failed: {rows[-1]['error'][0]}")
            continue
        res = json.loads(Path(out).read_text())
        Path(out).unlink()
        res.update(loadavg_before=load, peak_anon_bytes=peak_anon)
        rows.append(res)
    mb = 2**20
    parts = ("weights", "grads", "optimizer", "activations", "runtime")
    print(
        f"\n{'workload':<14}"
        + "".join(f"{k:>12}" for k in parts)
        + f"{'est MB':>9}{'peak RSS':>10}{'error':>8}{'peak anon':>11}{'error':>8}"
    )
    for r in rows:
        if "error" in r:
            print(f"{r['workload']:<14} failed: {r['error'][0]}")
            continue
        e, peak, anon = r["estimate"], r["peak_rss_bytes"], r["peak_anon_bytes"]
        r["rss_error"], r["anon_error"] = e["total"] / peak - 1, e["total"] / max(1, anon) - 1
        print(
            f"{r['workload']:<14}"
            + "".join(f"{e[k] / mb:>12.0f}" for k in parts)
            + f"{e['total'] / mb:>9.0f}{peak / mb:>10.0f}{r['rss_error'] * 100:>+7.1f}%"
            + f"{anon / mb:>11.0f}{r['anon_error'] * 100:>+7.1f}%"
        )
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = Path(a.out) if a.out else HERE / "results" / f"memory-{stamp}.json"
    path.write_text(json.dumps({"machine": info, "args": vars(a), "results": rows}, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
