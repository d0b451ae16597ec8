"""Chat speed at batch 1 on the default model: transformers vs our back ends vs llama.cpp, in one run.

    python bench/generate_throughput.py                        # 4 prompts, 64 new tokens, greedy
    python bench/generate_throughput.py --max-new-tokens 128 --prompts 8 --skip hf-generate

Contenders (all greedy, the same prompt token ids, the same number of threads):

* ``hf-generate``: transformers' ``model.generate`` on the fp32 model (Forge Kit's chat before the
  engine work; the reference the others' answers are compared with);
* ``forge-hf``: ``generate.backend=hf``, our batched decode loop (:mod:`kit.infer.batch`), fp32;
* ``forge-llamacpp``: ``generate.backend=llamacpp`` (:mod:`kit.infer.llamacpp`) on our own f16 export
  of the same weights (``kit.export(..., gguf="f16")``), through our streaming/detokenizing engine;
* ``llama.cpp``: llama-cpp-python's own ``Llama.generate`` loop on the same GGUF file (the target).

Per prompt: TTFT (from the call to the first generated token: prompt processing + one step) and
decode tokens/s (tokens after the first / time after the first); medians over prompts and repeats.
The contenders take turns prompt by prompt, so a change in the machine's load affects all of them. llama.cpp would reuse the KV cache
of an identical prompt; it is reset before every call so each contender processes the whole prompt.
Greedy answers are compared token by token with ``hf-generate`` (fp32): the f16 weights may change
an arg-max where two logits are close, and the table says where.

Results: printed, and written to bench/results/generate-<timestamp>.json with the load average.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import tempfile
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
    "What is the capital of France, and what is it famous for?",
    "Describe how photosynthesis works to a ten-year-old.",
    "List four primary colours of light and paint.",
    "Translate 'good morning, how are you?' into Spanish.",
]
CONTENDERS = ("hf-generate", "forge-hf", "forge-llamacpp", "llama.cpp")


def parse(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument("--model", default=MODEL, help="model name/path or run directory")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--prompts", type=int, default=4, help=f"how many of the {len(PROMPTS)} built-in prompts")
    p.add_argument("--repeats", type=int, default=2, help="measurements per prompt and contender (medians reported)")
    p.add_argument(
        "--threads", type=int, default=None, help="threads for torch and llama.cpp (default: physical cores)"
    )
    p.add_argument("--skip", nargs="*", default=[], choices=CONTENDERS)
    p.add_argument("--gguf", default=None, help="an f16 GGUF of the model to use (default: exported now)")
    p.add_argument("--out", default=None, help="results JSON (default bench/results/generate-<timestamp>.json)")
    return p.parse_args(argv)


def _physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


class _Clock:
    """A transformers streamer that only notes when each token arrives (the first put is the prompt)."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        pass


def run_hf_generate(cm, prompt_ids, n, stop_ids):
    import torch

    clock = _Clock()
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = cm.model.generate(
            torch.tensor([prompt_ids]),
            max_new_tokens=n,
            do_sample=False,
            eos_token_id=stop_ids,
            pad_token_id=cm.engine.pad_id,
            streamer=clock,
        )
    t1 = time.perf_counter()
    ids = out[0, len(prompt_ids) :].tolist()
    return ids, clock.times[1] - t0, t1 - clock.times[1]


def run_engine(engine, request, reset=None):
    if reset:
        reset()
    ids, t_first = [], None
    t0 = time.perf_counter()
    for d in engine.stream(request):
        if t_first is None and d.token_ids:
            t_first = time.perf_counter()
        ids += d.token_ids
    t1 = time.perf_counter()
    return ids, t_first - t0, t1 - t_first


def run_llama_cpp(llm, prompt_ids, n, stop_ids):
    llm.reset()
    ids, t_first = [], None
    t0 = time.perf_counter()
    for tok in llm.generate(prompt_ids, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0, temp=0.0, repeat_penalty=1.0):
        if t_first is None:
            t_first = time.perf_counter()
        ids.append(tok)
        if tok in stop_ids or len(ids) >= n:
            break
    t1 = time.perf_counter()
    return ids, t_first - t0, t1 - t_first


def first_difference(a: list[int], b: list[int]):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def main(argv=None) -> int:
    args = parse(argv)
    import torch

    from kit.data.encode import encode_prompt
    from kit.infer import ChatModel, ChatRequest, GenerationSettings

    threads = args.threads or _physical_cores()
    torch.set_num_threads(threads)
    load_before = os.getloadavg()
    prompts = PROMPTS[: args.prompts]
    n = args.max_new_tokens
    hf = ChatModel.load(args.model)
    stop_ids = hf.stop_ids
    ids_of = [encode_prompt(hf.tokenizer, [{"role": "user", "content": p}]) for p in prompts]
    settings = GenerationSettings(max_new_tokens=n)

    runners = {}
    if "hf-generate" not in args.skip:
        runners["hf-generate"] = lambda i: run_hf_generate(hf, ids_of[i], n, stop_ids)
    if "forge-hf" not in args.skip:
        runners["forge-hf"] = lambda i: run_engine(
            hf.engine, ChatRequest(prompt_ids=list(ids_of[i]), settings=settings)
        )
    gguf = args.gguf
    want_llama = {"forge-llamacpp", "llama.cpp"} - set(args.skip)
    if want_llama:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            print("llama-cpp-python is not installed: skipping the llama.cpp contenders", file=sys.stderr)
            want_llama = set()
    if want_llama and gguf is None:
        import kit

        out = Path(tempfile.mkdtemp(prefix="forge-bench-gguf-"))
        atexit.register(shutil.rmtree, out, True)  # the export (weights + GGUF) is only for this run
        t = time.time()
        res = kit.export(args.model, out, gguf="f16", modelfile=False)
        found = sorted(out.glob("*f16.gguf"))
        gguf = str(found[0]) if found else str(res.get("gguf"))
        print(f"f16 GGUF written by kit.export in {time.time() - t:.0f}s: {gguf}")
    if "forge-llamacpp" in want_llama:
        fl = ChatModel.load(gguf, generate__backend="llamacpp")
        runners["forge-llamacpp"] = lambda i: run_engine(
            fl.engine, ChatRequest(prompt_ids=list(ids_of[i]), settings=settings), reset=fl.engine.reset
        )
    if "llama.cpp" in want_llama:
        from llama_cpp import Llama

        llm = Llama(model_path=gguf, n_ctx=4096, n_threads=threads, n_threads_batch=threads, verbose=False)
        raw_stop = set(stop_ids) | {llm.token_eos()}
        runners["llama.cpp"] = lambda i: run_llama_cpp(llm, ids_of[i], n, raw_stop)

    # interleaved: every prompt goes through every contender before the next prompt (and again per
    # repeat), so a change in the machine's load hits all contenders alike instead of one of them
    for run in runners.values():
        run(0)  # warm-up (first-call allocations, page faults of the weights)
    raw = {name: {"ttft": [], "rate": [], "ids": [None] * len(prompts)} for name in runners}
    for _ in range(args.repeats):
        for i in range(len(prompts)):
            for name, run in runners.items():
                ids, ttft, decode_s = run(i)
                raw[name]["ttft"].append(ttft)
                raw[name]["rate"].append((len(ids) - 1) / decode_s if len(ids) > 1 and decode_s > 0 else float("nan"))
                raw[name]["ids"][i] = ids
    results, answers = {}, {}
    for name, r in raw.items():
        answers[name] = r["ids"]
        counts = [len(x) for x in r["ids"]]
        results[name] = {
            "decode_tokens_per_s_median": statistics.median(r["rate"]),
            "decode_tokens_per_s_each": r["rate"],
            "ttft_s_median": statistics.median(r["ttft"]),
            "ttft_s_each": r["ttft"],
            "new_tokens_each": counts,
        }
        print(
            f"{name:<15} decode {statistics.median(r['rate']):7.1f} tok/s   TTFT median "
            f"{statistics.median(r['ttft']) * 1000:6.0f} ms   (new tokens {counts})",
            flush=True,
        )

    ref = answers.get("hf-generate") or answers.get("forge-hf")
    if ref is not None:
        for name, each in answers.items():
            diffs = [first_difference(r, a) for r, a in zip(ref, each)]
            results[name]["greedy_equal_to_fp32"] = sum(d is None for d in diffs)
            results[name]["first_difference_at_token"] = diffs
            print(
                f"{name:<15} greedy answers equal to fp32 transformers: {sum(d is None for d in diffs)}/{len(diffs)}"
                + ("" if all(d is None for d in diffs) else f" (first different token: {diffs})")
            )
    target = results.get("llama.cpp")
    if target:
        for name in ("forge-llamacpp", "forge-hf", "hf-generate"):
            if name in results:
                r = results[name]
                print(
                    f"{name:<15} vs llama.cpp: decode x{r['decode_tokens_per_s_median'] / target['decode_tokens_per_s_median']:.2f} "
                    f"(target >= 1), TTFT x{r['ttft_s_median'] / target['ttft_s_median']:.2f} (target <= 1)"
                )
    load_after = os.getloadavg()
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min); threads {threads}")
    out = (
        Path(args.out)
        if args.out
        else HERE / "results" / f"generate-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "model": args.model,
                "gguf": gguf,
                "threads": threads,
                "loadavg_before": load_before,
                "loadavg_after": load_after,
                "args": vars(args),
                "results": results,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
