"""forge serve under concurrent streaming clients: total tokens/s with 1 client vs N at once.

    python bench/serve_concurrency.py                  # default model, 1 then 8 clients, 64 tokens each
    python bench/serve_concurrency.py --clients 1 4 8 --max-tokens 96

A real uvicorn server on 127.0.0.1 (``kit.infer.server.BackgroundServer``) and the official
``openai`` client, one thread per client, each streaming its own prompt with
``stream_options.include_usage`` (the usage chunk gives the tokens each client got). Total tokens/s
= all clients' completion tokens / wall time from the first request to the last stream's end. The
target: N=8 gets at least 3x the total tokens/s of one client (the batching scheduler decodes all
running streams in one forward pass). Every answer is also checked against the same prompt asked
alone (greedy), so a speed-up that mixed streams would show.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
PROMPTS = [
    "Give me three tips for staying focused while studying.",
    "Explain what a hash table is.",
    "Write a short poem about autumn rain.",
    "What is 17 multiplied by 23? Show the steps.",
    "Describe how photosynthesis works.",
    "Tell me about the history of Rome.",
    "How do airplanes stay in the air?",
    "What makes a good cup of tea?",
    "Explain recursion with an example.",
    "Why is the sky blue?",
    "Describe a walk in a forest.",
    "What are prime numbers?",
    "How does a refrigerator work?",
    "Give advice for a job interview.",
    "What is machine learning?",
    "Describe the water cycle.",
]


def parse(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


def stream_one(client, model, prompt, max_tokens, out, i):
    t0 = time.perf_counter()
    s = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, first = [], None, None
    for ch in s:
        if ch.choices and ch.choices[0].delta.content:
            first = first or time.perf_counter()
            text.append(ch.choices[0].delta.content)
        if ch.usage is not None:
            usage = ch.usage
    out[i] = {"text": "".join(text), "tokens": usage.completion_tokens, "ttft": (first or time.perf_counter()) - t0}


def main(argv=None) -> int:
    args = parse(argv)
    import openai
    import torch

    from kit.infer import ChatModel
    from kit.infer.server import BackgroundServer, build

    try:
        import psutil

        threads = args.threads or psutil.cpu_count(logical=False)
    except ImportError:
        threads = args.threads or os.cpu_count()
    torch.set_num_threads(threads)
    load_before = os.getloadavg()
    cm = ChatModel.load(args.model)
    alone = {p: cm.engine.generate([cm.request(p, max_new_tokens=args.max_tokens)])[0].text for p in PROMPTS}
    results = {}
    with BackgroundServer(build(cm, name="bench")) as srv:
        client = openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0, timeout=600)
        stream_one(client, "bench", PROMPTS[0], 8, {}, 0)  # warm-up
        for n in args.clients:
            prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n)]
            out: dict = {}
            threads_ = [
                threading.Thread(target=stream_one, args=(client, "bench", p, args.max_tokens, out, i))
                for i, p in enumerate(prompts)
            ]
            t0 = time.perf_counter()
            for t in threads_:
                t.start()
            for t in threads_:
                t.join()
            wall = time.perf_counter() - t0
            tokens = sum(o["tokens"] for o in out.values())
            mixed = sum(out[i]["text"] != alone[p] for i, p in enumerate(prompts))
            results[n] = {
                "total_tokens_per_s": tokens / wall,
                "tokens": tokens,
                "wall_s": wall,
                "ttft_s_each": [out[i]["ttft"] for i in range(n)],
                "answers_differing_from_alone": mixed,
            }
            print(
                f"{n:2d} client(s): {tokens / wall:7.1f} tokens/s total ({tokens} tokens in {wall:.1f}s), "
                f"TTFT max {max(o['ttft'] for o in out.values()) * 1000:.0f} ms, answers differing from alone: {mixed}",
                flush=True,
            )
    if 1 in results:
        for n, r in results.items():
            if n != 1:
                print(
                    f"{n} clients vs 1: x{r['total_tokens_per_s'] / results[1]['total_tokens_per_s']:.2f} "
                    f"total tokens/s (target for 8: >= 3)"
                )
    load_after = os.getloadavg()
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min); threads {threads}")
    path = (
        Path(args.out)
        if args.out
        else HERE / "results" / f"serve-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}.json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "model": args.model,
                "threads": threads,
                "loadavg_before": load_before,
                "loadavg_after": load_after,
                "args": vars(args),
                "results": results,
            },
            indent=2,
        )
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
