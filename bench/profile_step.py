"""Where one training step's time goes: torch.profiler over Forge's default workload, ops grouped.

    python bench/profile_step.py                     # LoRA r16, batch 4, cutoff 512, demo_sft, 135M
    python bench/profile_step.py --cutoff-len 2048 --dataset demo_long_sft --steps 3

Runs ``kit.train`` with a callback that records steps 2..N under ``torch.profiler`` (step 1 is
warm-up), then sums the profiler's *self* CPU time of every op into groups: the frozen and LoRA
matmuls (``mm``/``addmm``/``bmm``/``linear`` backward), attention (SDPA kernels and their
backward), the optimizer step, element-wise/norm/activation ops, the loss, copies and the rest.
Self time is what each op spent outside its children, so the groups add up to the profiled time.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GROUPS = (  # first match wins; see group_of for how a name matches
    ("attention", ("scaled_dot_product", "flash_attention", "_efficient_attention", "sdpa", "softmax")),
    ("matmul", ("mm", "addmm", "bmm", "matmul", "linear", "baddbmm")),
    ("optimizer", ("optimizer", "_foreach", "fused_adam", "adam", "lerp", "addcdiv", "addcmul", "clip_grad")),
    ("loss", ("cross_entropy", "log_softmax", "nll_loss", "logsumexp", "argmax", "gather")),
    (
        "copies/layout",
        (
            "copy",
            "contiguous",
            "clone",
            "cat",
            "_to_copy",
            "to",
            "index",
            "index_select",
            "index_add",
            "scatter",
            "transpose",
            "permute",
            "view",
            "_unsafe_view",
            "reshape",
            "expand",
            "slice",
            "select",
            "split",
            "stack",
            "empty",
            "empty_like",
            "zeros",
            "zeros_like",
            "zero",
            "fill",
            "ones",
            "narrow",
            "unsqueeze",
            "squeeze",
            "as_strided",
            "t",
            "detach",
            "flatten",
            "alias",
        ),
    ),
    (
        "elementwise",
        (
            "mul",
            "add",
            "silu",
            "sigmoid",
            "rsqrt",
            "pow",
            "mean",
            "neg",
            "sum",
            "div",
            "sub",
            "where",
            "exp",
            "embedding",
            "embedding_dense",
            "threshold",
            "dropout",
            "sqrt",
            "cos",
            "sin",
            "norm",
            "linalg_vector_norm",
        ),
    ),
)


def group_of(name: str) -> str:
    """The group of a profiler op name: its bare name (``aten::silu_backward`` -> ``silu``, in-place
    ``mul_`` -> ``mul``) equal to a key, or a key of more than five letters inside the name (the
    attention kernels' long names). Short keys never match as substrings: ``t`` is in every
    ``aten::`` name."""
    low = name.lower()
    bare = re.sub(r"(_backward)?(_data)?_?$", "", low.split("::")[-1].strip())
    for g, keys in GROUPS:
        if bare in keys or any(len(k) > 5 and k in low for k in keys):
            return g
    return "other"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--cutoff-len", type=int, default=512)
    p.add_argument("--dataset", default="demo_sft")
    p.add_argument("--top", type=int, default=25)
    p.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="more kit.train keywords (ints/bools parsed)"
    )
    a = p.parse_args(argv)

    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers.trainer_callback import CallbackHandler

    import kit

    state = {"prof": None, "t": None, "steps": 0, "wall": None}
    orig_begin, orig_end = CallbackHandler.on_step_begin, CallbackHandler.on_step_end

    def on_step_begin(self, args, st, control):  # steps 2..N run under the profiler
        if st.global_step == 1 and state["prof"] is None:
            state["prof"] = profile(activities=[ProfilerActivity.CPU], record_shapes=True)
            state["prof"].__enter__()
            state["t"] = time.perf_counter()
        return orig_begin(self, args, st, control)

    def on_step_end(self, args, st, control):
        if state["prof"] is not None:
            state["steps"] += 1
            state["wall"] = time.perf_counter() - state["t"]
            if st.global_step == a.steps:
                state["prof"].__exit__(None, None, None)
        return orig_end(self, args, st, control)

    CallbackHandler.on_step_begin, CallbackHandler.on_step_end = on_step_begin, on_step_end
    extra = {}
    for kv in a.set:
        k, v = kv.split("=", 1)
        extra[k] = {"true": True, "false": False}.get(v.lower(), int(v) if v.isdigit() else v)
    kit.train(
        model="smollm2-135m-instruct",
        dataset=a.dataset,
        batch_size=a.batch_size,
        cutoff_len=a.cutoff_len,
        max_steps=a.steps,
        lora_rank=16,
        lora_alpha=32,
        save_steps=0,
        logging_steps=1,
        output_dir=tempfile.mkdtemp(prefix="forge-prof-"),
        **extra,
    )
    prof = state["prof"]
    wall = state["wall"]
    events = prof.key_averages(group_by_input_shape=False)
    total = sum(e.self_cpu_time_total for e in events)
    by = collections.Counter()
    for e in events:
        by[group_of(e.key)] += e.self_cpu_time_total
    print(
        f"profiled {state['steps']} steps, {wall:.1f} s wall, {total / 1e6:.1f} s self CPU time in ops "
        f"(threads {torch.get_num_threads()}, load {os.getloadavg()})"
    )
    for g, us in by.most_common():
        print(f"  {g:<15}{us / 1e6:8.2f} s {100 * us / total:6.1f} %")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.top))
    shapes = prof.key_averages(group_by_input_shape=True)
    mm = sorted(
        (e for e in shapes if e.key in ("aten::mm", "aten::addmm", "aten::bmm")), key=lambda e: -e.self_cpu_time_total
    )[:15]
    print("top matmul shapes (self CPU s, calls, shapes):")
    for e in mm:
        print(f"  {e.self_cpu_time_total / 1e6:7.2f}  {e.count:6d}  {e.key} {e.input_shapes}")
    print("matmuls by kind (self CPU s, share of matmul time, GFLOP/s achieved):")
    for kind, (us, flops) in matmul_kinds(shapes, rank=16, vocab=49152).items():
        rate = flops / (us / 1e6) / 1e9 if us else 0.0
        print(f"  {kind:<24}{us / 1e6:8.2f} s {100 * us / max(1, by['matmul']):6.1f} % {rate:8.1f} GFLOP/s")
    return 0


def matmul_kinds(shape_events, rank: int, vocab: int) -> dict:
    """``aten::mm`` self time and FLOPs (``2*m*k*n``) split into the LoRA adapter's matmuls (a side
    of ``rank``), the LM head's (a side of ``vocab``) and the frozen layers' (the rest): where the
    matmul part of MFU is lost."""
    out = {"lora (rank-sized side)": [0.0, 0.0], "lm head (vocab side)": [0.0, 0.0], "frozen layers": [0.0, 0.0]}
    for e in shape_events:
        if e.key != "aten::mm" or len(e.input_shapes) < 2 or len(e.input_shapes[0]) != 2:
            continue
        (m, k), (_, n) = e.input_shapes[0], e.input_shapes[1]
        sides = (m, k, n)
        kind = (
            "lora (rank-sized side)" if rank in sides else "lm head (vocab side)" if vocab in sides else "frozen layers"
        )
        out[kind][0] += e.self_cpu_time_total
        out[kind][1] += 2.0 * m * k * n * e.count
    return {k: tuple(v) for k, v in out.items()}


if __name__ == "__main__":
    sys.exit(main())
