"""The fast SFT path: defaults, token accounting, packed loss == unpacked loss, bench CLIs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kit
from kit import RunConfig
from kit.data import IGNORE, build_tokenized, register_dataset
from kit.data.collator import block_causal_mask

ROOT = Path(__file__).resolve().parent.parent

ROWS = [
    {
        "instruction": f"Repeat the word number {i} {'and add detail ' * (i % 4)}",
        "input": "",
        "output": f"Word {i}. " + "More text here. " * (1 + i % 5),
    }
    for i in range(12)
]


def test_defaults_take_the_fast_path():
    from kit.stages.common import forward_token_budget, micro_batching

    cfg = RunConfig()
    # a step is batch_size examples, back to back without padding, split into passes of at most
    # cutoff_len tokens on CPU; no recomputation
    assert cfg.data.packing is False and cfg.data.padding_free is True
    assert cfg.train.gradient_checkpointing is False
    assert micro_batching(cfg, "cpu", padding_free=True)["per_device_train_batch_size"] == cfg.train.batch_size
    assert forward_token_budget(cfg, "cpu") == cfg.data.cutoff_len and forward_token_budget(cfg, "cuda") is None
    # padded packed rows (the dense block mask) still go one row per pass on CPU
    packed = cfg.replace(data__packing=True)
    assert micro_batching(packed, "cpu", padding_free=False)["per_device_train_batch_size"] == 1


def test_split_flat_packs_whole_examples_into_the_budget():
    from kit.data import ForgeCollator
    from kit.data.collator import split_flat

    lens = [153, 500, 179, 30, 700, 12]
    rows = [
        {"input_ids": [1000 * k + i for i in range(n)], "labels": [IGNORE] * 3 + [7] * (n - 3)}
        for k, n in enumerate(lens)
    ]
    batch = ForgeCollator(pad_token_id=0, padding_free=True)(rows)
    assert split_flat(batch, None) == [batch] and split_flat(batch, 10_000) == [batch]
    pieces = split_flat(batch, 512)
    seen = []
    for p in pieces:
        cu = p["cu_seq_lens_q"].tolist()
        sizes = [b - a for a, b in zip(cu, cu[1:])]
        assert cu[-1] == p["input_ids"].shape[1] == int(p["num_real_tokens"]) and cu[0] == 0
        assert cu[-1] <= 512 or len(sizes) == 1  # only a lone long example exceeds it
        assert p["max_length_q"] == max(sizes)
        for a, n in zip(cu, sizes):  # whole examples, positions restart
            ids = p["input_ids"][0, a : a + n].tolist()
            k = ids[0] // 1000
            assert ids == rows[k]["input_ids"] and p["position_ids"][0, a : a + n].tolist() == list(range(n))
            assert p["labels"][0, a] == IGNORE
            seen.append(k)
        assert int(p["num_trained_tokens"]) == int((p["labels"] != IGNORE).sum())
    assert sorted(seen) == list(range(len(lens)))  # every example exactly once
    assert sum(int(p["num_trained_tokens"]) for p in pieces) == int(batch["num_trained_tokens"])
    assert [p["input_ids"].shape[1] for p in pieces] == [700, 500 + 12, 179 + 153 + 30]  # first fit, largest first


def _cfg(tiny_cfg, **kw):
    register_dataset("perf_rows", ROWS)
    base = dict(dataset="perf_rows", cutoff_len=128, save_steps=0, shuffle=False, lora_dropout=0.0)
    base.update(kw)
    return tiny_cfg(**base)


def test_packed_step_counts_tokens_and_matches_unpacked_loss(tiny_cfg):
    """One step over every packed row: cumulative tokens == real tokens of those rows, and the
    step-1 loss (packed, 4D block mask) == mean-token loss of the same examples run one by one."""
    cfg = _cfg(tiny_cfg, batch_size=64, max_steps=1, packing=True)  # one batch holds every packed row
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(cfg.model.name)
    packed, _, _ = build_tokenized(cfg, tok, "sft")
    assert any(len(r["seq_lens"]) > 1 for r in packed), "the data must actually pack"
    assert len(packed) < 64

    run = kit.train(cfg)
    assert run.status == "finished"
    ev = run.history[-1]
    assert ev.get("tokens_per_s", 0) > 0 and ev.get("trained_tokens_per_s", 0) > 0
    assert ev.get("tokens") == sum(len(r["input_ids"]) for r in packed)
    assert run.first_step_s is not None and run.first_step_s > 0
    packed_loss = run.losses()[0][1]

    rows, _, _ = build_tokenized(cfg, tok, "sft", packing=False)
    assert sum(len(r["input_ids"]) for r in rows) == ev.get("tokens")  # same examples, unpacked
    model = AutoModelForCausalLM.from_pretrained(cfg.model.name, dtype=torch.float32).eval()
    total, n = 0.0, 0
    with torch.no_grad():  # LoRA B starts at zero: the base model is the step-1 model
        for r in rows:
            ids = torch.tensor([r["input_ids"]])
            lab = torch.tensor(r["labels"][1:])
            logits = model(input_ids=ids).logits[0, :-1]
            keep = lab != IGNORE
            total += torch.nn.functional.cross_entropy(logits[keep], lab[keep], reduction="sum").item()
            n += int(keep.sum())
    assert packed_loss == pytest.approx(total / n, abs=2e-3)


def test_block_causal_mask_blocks_across_examples():
    m = block_causal_mask([[2, 3], [4]], 6, torch.float32)
    allowed = m == 0
    # row 0: example [0,2) then [2,5), padding at 5 attends to itself only
    assert allowed[0, 0, 1, 0] and not allowed[0, 0, 2, 1] and allowed[0, 0, 4, 2] and not allowed[0, 0, 3, 4]
    assert allowed[0, 0, 5].tolist() == [False] * 5 + [True]
    assert allowed[1, 0, 3, :4].all() and not allowed[1, 0, 4, :4].any() and allowed[1, 0, 5, 5]


def _reference_mask(seq_lens_per_row, length, dtype):
    """An independent statement of the rule the mask must follow: position i may attend to j when
    both carry the same example id and j <= i; padding positions (id -1) attend to themselves only."""
    neg = torch.finfo(dtype).min
    mask = torch.full((len(seq_lens_per_row), 1, length, length), neg, dtype=dtype)
    for b, lens in enumerate(seq_lens_per_row):
        seg = [k for k, n in enumerate(lens) for _ in range(n)] + [-1] * (length - sum(lens))
        for i in range(length):
            for j in range(i + 1):
                if (seg[i] == seg[j] and seg[i] >= 0) or (i == j):
                    mask[b, 0, i, j] = 0.0
    return mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_block_mask_equals_the_rule_position_by_position(dtype):
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        length = int(torch.randint(1, 40, (1,), generator=g))
        rows = []
        for _b in range(3):
            lens, left = [], int(torch.randint(1, length + 1, (1,), generator=g))
            while left > 0:
                n = int(torch.randint(1, left + 1, (1,), generator=g))
                lens.append(n)
                left -= n
            rows.append(lens)
        got = block_causal_mask(rows, length, dtype)
        assert got.dtype == dtype and got.shape == (3, 1, length, length)
        assert torch.equal(got, _reference_mask(rows, length, dtype))


@pytest.mark.parametrize(
    "script", ["train_throughput.py", "generate_throughput.py", "largest_model.py", "memory_estimate.py"]
)
def test_bench_help(script):
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "usage" in out.stdout and "--" in out.stdout


@pytest.mark.parametrize("packing", [False, True])
def test_micro_batches_give_the_same_updates(tiny_cfg, tmp_path, packing):
    """batch_size=4 as one forward pass, as passes of at most 40 tokens (whole examples), or as four
    accumulated one-row passes: same losses, same weights."""
    from safetensors.torch import load_file

    ways = {
        "whole": dict(micro_batch_tokens=100_000),
        "tokens": dict(micro_batch_tokens=40),
        "rows": dict(micro_batch_size=1, micro_batch_tokens=100_000),
    }
    runs, passes = {}, {}
    for name, kw in ways.items():
        cfg = _cfg(
            tiny_cfg, batch_size=4, max_steps=3, cutoff_len=64, packing=packing, output_dir=str(tmp_path / name), **kw
        )
        from transformers import Trainer

        calls = []
        orig = Trainer.training_step
        Trainer.training_step = lambda self, m, inputs, *a, **k: calls.append(1) or orig(self, m, inputs, *a, **k)  # noqa: B023 (used inside this iteration)
        try:
            run = kit.train(cfg)
        finally:
            Trainer.training_step = orig
        assert run.status == "finished"
        runs[name], passes[name] = run, len(calls)
    assert runs["rows"].trainer.args.per_device_train_batch_size == 1
    assert runs["rows"].trainer.args.gradient_accumulation_steps == 4
    assert passes["whole"] == 3 and passes["rows"] == 12 and passes["tokens"] > 3  # the budget really split
    ref = [l for _, l in runs["whole"].losses()]
    w_ref = load_file(str(runs["whole"].run_dir / "adapter" / "adapter_model.safetensors"))
    assert len(ref) == 3 and any(w_ref[k].abs().sum() > 0 for k in w_ref if "lora_B" in k)  # it really moved
    for name in ("tokens", "rows"):
        assert [l for _, l in runs[name].losses()] == pytest.approx(ref, rel=1e-4), name
        w = load_file(str(runs[name].run_dir / "adapter" / "adapter_model.safetensors"))
        assert w.keys() == w_ref.keys()
        for k in w:
            torch.testing.assert_close(w[k], w_ref[k], atol=1e-5, rtol=1e-3)


def test_micro_batch_must_divide_the_batch():
    with pytest.raises(kit.ConfigError, match="micro_batch_size"):
        RunConfig.from_kwargs(batch_size=4, micro_batch_size=3)


@pytest.mark.parametrize("chunked", [True, False])
def test_trained_positions_loss_equals_trls_fused_head(tiny_cfg, monkeypatch, chunked):
    """Our loss on padding-free batches (logits at trained positions only; by default the head and the
    loss in chunks, kit.stages.linear_ce) == TRL's fused LM head."""
    import kit.stages.sft as sft

    if not chunked:
        monkeypatch.setattr(sft, "decoder_and_head", lambda model: None)
    from kit.engine import Run

    cfg = _cfg(tiny_cfg, batch_size=4, max_steps=1)
    run = Run(cfg)  # only for its run dir
    from kit.adapters import apply_adapter
    from kit.models import load_model
    from kit.stages.common import StageContext
    from kit.stages.sft import build_sft_trainer

    loaded = load_model(cfg, with_adapter=False)
    model = apply_adapter(loaded.model, cfg)
    trainer = build_sft_trainer(
        StageContext(
            cfg=cfg, model=model, tokenizer=loaded.tokenizer, run_dir=run.run_dir, device="cpu", dtype=torch.float32
        )
    )
    assert trainer.data_collator.padding_free
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    n_items = (batch["labels"] != IGNORE).sum()

    def grads_and_loss(fn):
        model.zero_grad()
        loss = fn(dict(batch))
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    ours, g_ours = grads_and_loss(lambda b: trainer.compute_loss(model, b, num_items_in_batch=n_items))
    assert trainer._metrics["train"]["mean_token_accuracy"]

    def trl_path(b):
        b.pop("num_real_tokens"), b.pop("num_trained_tokens")
        out = model(**b, use_cache=False, fused_lm_head=True)
        return -out.log_probs.sum() / n_items

    theirs, g_theirs = grads_and_loss(trl_path)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    for k in g_ours:
        torch.testing.assert_close(g_ours[k], g_theirs[k], atol=1e-6, rtol=1e-4)


def test_training_allocator_applies_on_cpu_only(monkeypatch):
    from kit.runtime import training_allocator

    with training_allocator("cuda") as applied:
        assert applied is False
    monkeypatch.setenv("FORGE_KEEP_MALLOC", "1")
    with training_allocator("cpu") as applied:
        assert applied is False
    monkeypatch.delenv("FORGE_KEEP_MALLOC")
    import sys as _sys

    with training_allocator("cpu") as applied:
        assert applied is (_sys.platform.startswith("linux") and _glibc_present())


def _glibc_present() -> bool:
    import platform

    return platform.libc_ver()[0] == "glibc"


def test_training_allocator_nests_across_concurrent_runs():
    import kit.runtime as rt

    if rt._glibc() is None:
        pytest.skip("glibc only")
    with rt.training_allocator("cpu") as a:
        assert a and rt._active == 1
        with rt.training_allocator("cpu") as b:
            assert b and rt._active == 2
        assert rt._active == 1
    assert rt._active == 0


class _RecordingLibc:
    """Stands for glibc: records the mallopt/malloc_trim calls the runtime makes."""

    def __init__(self):
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad):
        self.calls.append(("malloc_trim", pad))
        return 1


def test_quantized_runs_keep_large_blocks_on_mmap(monkeypatch):
    """4/8-bit runs keep glibc's 32 MiB mmap bound (their per-layer dequantized weights fragment a
    heap that serves them: 4427 -> 2614 MB anonymous at SmolLM2-1.7B QLoRA); other runs serve
    blocks up to 1 GiB from the heap. Both never trim mid-run and restore glibc's settings after."""
    import kit.runtime as rt

    monkeypatch.delenv("FORGE_KEEP_MALLOC", raising=False)
    for quantized, mmap in ((False, rt._KEEP_MMAP), (True, rt._AFTER_MMAP)):
        libc = _RecordingLibc()
        monkeypatch.setattr(rt, "_glibc", lambda libc=libc: libc)
        with rt.training_allocator("cpu", quantized=quantized) as applied:
            assert applied
            assert libc.calls == [
                ("mallopt", rt._M_MMAP_THRESHOLD, mmap),
                ("mallopt", rt._M_TRIM_THRESHOLD, rt._KEEP_TRIM),
            ]
        assert libc.calls[2:] == [
            ("mallopt", rt._M_MMAP_THRESHOLD, rt._AFTER_MMAP),
            ("mallopt", rt._M_TRIM_THRESHOLD, rt._AFTER_TRIM),
            ("malloc_trim", 0),
        ]


def test_return_free_memory_skips_while_a_run_trains(monkeypatch):
    import kit.runtime as rt

    libc = _RecordingLibc()
    monkeypatch.setattr(rt, "_glibc", lambda: libc)
    monkeypatch.setattr(rt, "_active", 1)
    assert rt.return_free_memory() is False and libc.calls == []
    monkeypatch.setattr(rt, "_active", 0)
    assert rt.return_free_memory() is True and libc.calls == [("malloc_trim", 0)]


def _anon_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no RssAnon")


def test_return_free_memory_hands_freed_heap_blocks_back():
    """What a model load leaves behind: many small freed tensors inside the heap (a live one above
    them keeps glibc from trimming the top by itself) stay resident until the trim."""
    import kit.runtime as rt

    if rt._glibc() is None or not Path("/proc/self/status").exists():
        pytest.skip("glibc on Linux only")
    blocks = [torch.ones(16 * 1024) for _ in range(4096)]  # 64 KiB each: heap-served, 256 MiB in all
    pin = torch.ones(16 * 1024)  # noqa: F841  (keeps the heap's top in use)
    del blocks
    before = _anon_mb()
    assert rt.return_free_memory()
    assert before - _anon_mb() > 150, (before, _anon_mb())


def test_bitsandbytes_is_imported_only_by_runs_that_use_it(tiny_model_dir, tmp_path):
    """A plain LoRA run leaves bitsandbytes unimported (0.7 s of start-up); a 4-bit run afterwards
    in the same process still quantizes and trains (a notebook does exactly this)."""
    pytest.importorskip("bitsandbytes")
    script = f"""
import sys, kit, kit.engine
allocator_quantized = []  # what each run told the training allocator (kit.runtime.training_allocator)
real_allocator = kit.engine.training_allocator
def spy(device, quantized=False):
    allocator_quantized.append(quantized)
    return real_allocator(device, quantized)
kit.engine.training_allocator = spy
base = dict(model={str(tiny_model_dir)!r}, max_steps=1, save_steps=0, cutoff_len=64, max_samples=4, batch_size=2)
run = kit.train(output_dir={str(tmp_path / "plain")!r}, **base)
assert run.status == "finished", run.traceback
assert "peft" in sys.modules and "bitsandbytes" not in sys.modules, "bitsandbytes was imported"
run = kit.train(output_dir={str(tmp_path / "q4")!r}, bits=4, **base)
assert run.status == "finished", run.traceback
layer = run.model.base_model.model.model.layers[0].self_attn.q_proj
assert type(layer.base_layer).__name__ == "Linear4bit", type(layer.base_layer)
assert all(l == l for _, l in run.losses())
assert allocator_quantized == [False, True], allocator_quantized
print("OK")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


def test_garbage_collector_is_paused_only_while_a_run_sets_up(tiny_cfg):
    import gc

    from kit.engine import Run

    seen = []
    run = Run(tiny_cfg(max_steps=2, save_steps=0))
    run.subscribe(lambda e: seen.append((e.kind, e.get("status"), gc.isenabled())))
    assert gc.isenabled()
    run.start()
    assert run.status == "finished" and gc.isenabled()
    assert ("status", "loading model", False) in seen and ("status", "preparing data", False) in seen
    assert [on for kind, _, on in seen if kind == "step"] == [True, True]
    gc.disable()  # a caller that turned it off keeps it off
    try:
        assert Run(tiny_cfg(max_steps=1, save_steps=0, output_dir=str(run.run_dir) + "-2")).start().status == "finished"
        assert not gc.isenabled()
    finally:
        gc.enable()
