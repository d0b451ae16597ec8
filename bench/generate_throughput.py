"""Generation speed of kit.infer.hf.ChatModel on the default model: tokens/s and time to first token.

    python bench/generate_throughput.py                       # greedy + sampled, 4 prompts, 64 new tokens
    python bench/generate_throughput.py --max-new-tokens 128 --modes greedy

* tokens/s: generated tokens (``ChatModel.generate_ids``, eos included if reached) / wall time of the
  ``generate`` call, prompt processing included; one warm-up call first.
* TTFT: time from calling ``ChatModel.stream`` to the first non-empty text piece. The streamer emits
  text at word boundaries, so this is an upper bound on the first token's latency.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout: import this kit even when it is not installed
MODEL = "smollm2-135m-instruct"
PROMPTS = [
    "Give me three tips for staying focused while studying.",
    "Explain what a hash table is in two sentences.",
    "Write a short haiku about autumn rain.",
    "What is 17 multiplied by 23? Show the steps.",
]
MODES = {"greedy": {"temperature": 0.0}, "sampled": {"temperature": 0.7, "top_p": 0.9}}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--model", default=MODEL, help="model name/path or run directory")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    p.add_argument("--prompts", type=int, default=len(PROMPTS), help=f"how many of the {len(PROMPTS)} built-in prompts")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: physical cores)")
    p.add_argument("--out", default=None, help="results JSON (default bench/results/generate-<timestamp>.json)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    import torch

    from kit.infer.hf import ChatModel
    try:
        import psutil
        cores = psutil.cpu_count(logical=False) or os.cpu_count()
    except ImportError:
        cores = os.cpu_count()
    torch.set_num_threads(args.threads or cores)
    t = time.time()
    cm = ChatModel.load(args.model)
    load_s = time.time() - t
    prompts = PROMPTS[: args.prompts]
    cm.generate_ids(prompts[0], max_new_tokens=8, temperature=0.0)  # warm-up
    torch.manual_seed(0)
    results = {}
    for mode in args.modes:
        gen = dict(MODES[mode], max_new_tokens=args.max_new_tokens)
        rates, ttfts, counts = [], [], []
        for p in prompts:
            t = time.perf_counter()
            ids = cm.generate_ids(p, **gen)
            el = time.perf_counter() - t
            rates.append(len(ids) / el)
            counts.append(len(ids))
            t = time.perf_counter()
            first = None
            for _piece in cm.stream(p, **gen):  # drain it: the generating thread must finish before
                if first is None:                # the next measurement starts
                    first = time.perf_counter() - t
            ttfts.append(first if first is not None else float("nan"))
        results[mode] = {"tokens_per_s_mean": statistics.mean(rates), "tokens_per_s_each": rates,
                         "new_tokens_each": counts, "ttft_s_median": statistics.median(ttfts), "ttft_s_each": ttfts}
        print(f"{mode:<8} {statistics.mean(rates):7.1f} tok/s  TTFT median {statistics.median(ttfts) * 1000:6.0f} ms"
              f"  (new tokens {counts})")
    out = Path(args.out) if args.out else HERE / "results" / f"generate-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "load_s": load_s, "threads": torch.get_num_threads(),
                               "loadavg": os.getloadavg(), "args": vars(args), "results": results}, indent=2))
    print(f"load {load_s:.1f}s; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
