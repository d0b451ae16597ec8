"""The GPU path in one go (run by scripts/gpu_check.sh on a machine with a CUDA GPU); prints a table.

Checks, each a short real run of the embedded default model (SmolLM2-135M-Instruct) on the GPU:

* precision: ``dtype=auto`` picks bf16 where the GPU supports it, else fp16 with AMP (a T4);
  fp16 AMP is also forced once on a bf16 GPU, so the T4 path runs wherever this script runs;
* LoRA training on CUDA, and 4-bit QLoRA (bitsandbytes NF4) on CUDA;
* padding-free batches: the attention kernel that read them (flash-attention 2 when installed,
  else our SDPA-based ``forge_varlen``);
* Liger kernels: used when ``liger_kernel`` is installed (reported either way);
* the chat back end: greedy generation on the GPU, with tokens/s.

Every row is measured, never assumed: a failing check prints FAIL with its error and the script exits 1.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROWS: list[tuple[str, str, str, float]] = []


def row(check: str, ok: bool, detail: str, seconds: float) -> None:
    ROWS.append((check, "ok" if ok else "FAIL", detail, seconds))
    print(f"[{'ok' if ok else 'FAIL'}] {check}: {detail} ({seconds:.1f} s)", flush=True)


def checked(check: str):
    def wrap(fn):
        def run(*a, **kw):
            t = time.time()
            try:
                ok, detail = fn(*a, **kw)
            except Exception as e:  # noqa: BLE001 - a failed check is a row of the table, with its error
                traceback.print_exc()
                ok, detail = False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:160]
            row(check, ok, detail, time.time() - t)
            return ok

        return run

    return wrap


def train(out: Path, **kw):
    import kit

    base = dict(
        model="smollm2-135m-instruct",
        dataset="demo_sft",
        max_steps=8,
        batch_size=4,
        cutoff_len=256,
        max_samples=64,
        learning_rate=5e-4,
        lr_scheduler="constant",
        save_steps=0,
        logging_steps=1,
        output_dir=str(out),
    )
    base.update(kw)
    run = kit.train(**base)
    if run.status != "finished":
        raise RuntimeError(f"run {run.status}: {run.error!r}")
    return run


def facts(run) -> dict:
    model_ev = next(e for e in run.events if e.kind == "model")
    data_ev = next((e for e in run.events if e.kind == "data"), None)
    losses = [loss for _, loss in run.losses()]
    steps = [e for e in run.history if e.get("tokens_per_s")]
    base = run.trainer.model.get_base_model() if hasattr(run.trainer.model, "get_base_model") else run.trainer.model
    return {
        "device": model_ev.get("device"),
        "dtype": model_ev.get("dtype"),
        "losses": losses,
        "finite": all(math.isfinite(x) for x in losses),
        "bf16": run.trainer.args.bf16,
        "fp16": run.trainer.args.fp16,
        "attn": getattr(base.config, "_attn_implementation", "?"),
        "padding_free": bool(data_ev and data_ev.get("padding_free")),
        "liger": bool(getattr(run.trainer.args, "use_liger_kernel", False)),
        "tok_s": steps[-1].get("tokens_per_s") if steps else None,
        "model": base,
    }


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("no CUDA GPU is visible (torch", torch.__version__, "): nothing to check", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(0)
    cap = ".".join(map(str, torch.cuda.get_device_capability(0)))
    bf16 = torch.cuda.is_bf16_supported()
    print(f"GPU: {name} (compute {cap}), bf16 {'supported' if bf16 else 'not supported'}, torch {torch.__version__}")
    work = Path(tempfile.mkdtemp(prefix="forge-gpu-check-"))
    runs: dict = {}

    @checked("precision auto")
    def precision_auto():
        from kit.models.loading import pick_dtype

        want = torch.bfloat16 if bf16 else torch.float16
        got = pick_dtype("auto", "cuda")
        return (
            got == want,
            f"dtype=auto -> {str(got).replace('torch.', '')} ({'bf16' if bf16 else 'fp16 AMP'} expected)",
        )

    @checked("LoRA on CUDA (dtype auto)")
    def lora_auto():
        f = facts(runs.setdefault("lora", train(work / "lora")))
        amp = "bf16" if f["bf16"] else "fp16 AMP" if f["fp16"] else "no AMP"
        ok = f["device"] == "cuda" and f["finite"] and (f["bf16"] if bf16 else f["fp16"])
        return ok, (
            f"{f['dtype']} {amp}, loss {f['losses'][0]:.3f}->{f['losses'][-1]:.3f}, {f['tok_s'] or 0:.0f} tok/s"
        )

    @checked("LoRA, fp16 AMP forced (the T4 path)")
    def lora_fp16():
        f = facts(train(work / "lora-fp16", dtype="float16"))
        return f["device"] == "cuda" and f["fp16"] and f["finite"], (
            f"{f['dtype']}, fp16={f['fp16']}, loss {f['losses'][0]:.3f}->{f['losses'][-1]:.3f}"
        )

    @checked("QLoRA 4-bit (NF4) on CUDA")
    def qlora():
        import bitsandbytes as bnb

        f = facts(train(work / "qlora", quant__bits=4, quant__quant_type="nf4", quant__double_quant=True))
        n4 = sum(isinstance(m, bnb.nn.Linear4bit) for m in f["model"].modules())
        return f["device"] == "cuda" and n4 > 0 and f["finite"], (
            f"{n4} Linear4bit layers, bitsandbytes {bnb.__version__}, loss {f['losses'][0]:.3f}->{f['losses'][-1]:.3f}"
        )

    @checked("padding-free batches")
    def padding_free():
        f = facts(runs["lora"]) if "lora" in runs else facts(train(work / "pf"))
        flash = importlib.util.find_spec("flash_attn") is not None
        want = "flash_attention_2" if flash else "forge_varlen"
        return f["padding_free"] and f["attn"] == want, (
            f"padding_free={f['padding_free']}, attention {f['attn']} "
            f"({'flash-attn installed' if flash else 'no flash-attn: SDPA per example'})"
        )

    @checked("Liger kernels")
    def liger():
        installed = importlib.util.find_spec("liger_kernel") is not None
        f = facts(runs["lora"]) if "lora" in runs else facts(train(work / "liger"))
        if installed:
            return f["liger"], f"installed, use_liger_kernel={f['liger']}"
        return not f["liger"], "not installed (pip install liger-kernel to use it); off"

    @checked("chat back end on CUDA")
    def chat():
        import kit

        src = runs.get("lora") or "smollm2-135m-instruct"
        cm = kit.ChatModel.load(src)
        dev = str(next(cm.model.parameters()).device)
        t = time.time()
        pieces = list(cm.stream("What is the capital of France?", max_new_tokens=32))
        dt = time.time() - t
        answer = "".join(pieces).strip()
        n = len(cm.tokenizer(answer)["input_ids"]) if answer else 0
        return dev.startswith("cuda") and bool(answer), f"on {dev}, {n / max(dt, 1e-9):.0f} tok/s: {answer[:50]!r}"

    for check in (precision_auto, lora_auto, lora_fp16, qlora, padding_free, liger, chat):
        check()

    w = max(len(r[0]) for r in ROWS)
    print(f"\nForge Kit GPU check on {name} (compute {cap}), torch {torch.__version__}\n")
    print(f"| {'check':{w}} | result | detail | s |")
    print(f"|{'-' * (w + 2)}|--------|--------|---|")
    for check, result, detail, seconds in ROWS:
        print(f"| {check:{w}} | {result:6} | {detail} | {seconds:.0f} |")
    return 0 if all(r[1] == "ok" for r in ROWS) else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
