"""LoRA SFT throughput: Forge vs plain TRL (vs LLaMA-Factory), each in its own process.

    python bench/train_throughput.py                      # forge, forge-packed, trl, trl-packed; 10 steps, CPU fp32
    python bench/train_throughput.py --steps 4 --contenders forge trl
    python bench/train_throughput.py --contenders forge llamafactory   # installs LLaMA-Factory in a venv

Workload: LoRA r16 / alpha 32 on all linear layers of the embedded default model
(smollm2-135m-instruct), the shipped ``demo_sft`` data, batch 4, cutoff 512, fixed ``--steps``.

Every contender runs in a fresh subprocess (argv list, no shell) so start-up time and peak RSS
are its own. The child patches transformers' CallbackHandler to timestamp every optimizer step
and its Trainer.training_step to count the tokens of every batch, so all contenders are measured
by the same code whatever their trainer is. Steady state = steps 2..N (step 1 carries warm-up).

FLOPs (stated in the output too): per processed (non-padding) token, forward = 2*N_mm, backward =
2*N_mm for the input gradients through frozen weights + 4*N_lora for the adapter (input and
weight grads), i.e. ``4*N_mm + 6*N_lora``, where N_mm counts the parameters of every nn.Linear
including the (tied) LM head; the attention score/context matmuls (O(L^2)) and embeddings are
left out. MFU = achieved FLOP/s / measured matmul peak (torch.mm on 2048^2 and 4096^2 matrices,
best of several, threads = physical cores).

``--device cuda`` (bf16, bf16 matmul peak, torch.cuda.max_memory_allocated reported too) is written
for a GPU machine; it has not been run on this CPU-only development box.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # run from a checkout: import this kit even when it is not installed
MODEL = "smollm2-135m-instruct"
CONTENDERS = (
    "forge",
    "forge-packed",
    "forge-blockmask",
    "forge-qlora",
    "forge-bf16",
    "trl",
    "trl-packed",
    "trl-qlora",
    "llamafactory",
    "llamafactory-packed",
    "llamafactory-qlora",
)
DEFAULT_CONTENDERS = ("forge", "forge-packed", "trl", "trl-packed")
# Bigger architectures for timing only (issue #18 item 3): the published configs' shapes, built here
# with random weights (nothing downloaded) and the default model's tokenizer, whose ids all fall
# inside every vocabulary below. Throughput and memory depend on the shapes, not on the values.
ARCHS = {
    "smollm2-360m": dict(
        model_type="llama",
        hidden_size=960,
        intermediate_size=2560,
        num_hidden_layers=32,
        num_attention_heads=15,
        num_key_value_heads=5,
        vocab_size=49152,
        tie_word_embeddings=True,
        rope_theta=100000.0,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
    ),
    "smollm2-1.7b": dict(
        model_type="llama",
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=24,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=49152,
        tie_word_embeddings=True,
        rope_theta=130000.0,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
    ),
    "qwen2.5-0.5b": dict(
        model_type="qwen2",
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151936,
        tie_word_embeddings=True,
        rope_theta=1000000.0,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
    ),
    "qwen2.5-3b": dict(
        model_type="qwen2",
        hidden_size=2048,
        intermediate_size=11008,
        num_hidden_layers=36,
        num_attention_heads=16,
        num_key_value_heads=2,
        vocab_size=151936,
        tie_word_embeddings=True,
        rope_theta=1000000.0,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
    ),
    "qwen2.5-7b": dict(
        model_type="qwen2",
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        tie_word_embeddings=False,
        rope_theta=1000000.0,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
    ),
    "qwen2.5-14b": dict(
        model_type="qwen2",
        hidden_size=5120,
        intermediate_size=13824,
        num_hidden_layers=48,
        num_attention_heads=40,
        num_key_value_heads=8,
        vocab_size=152064,
        tie_word_embeddings=False,
        rope_theta=1000000.0,
        max_position_embeddings=32768,
        rms_norm_eps=1e-5,
    ),
}
RANDOM_MODELS = Path.home() / ".cache" / "forge-kit" / "bench" / "models"
LF_VERSION = "0.9.5"
LF_VENV = Path.home() / ".cache" / "forge-kit" / "bench" / "llamafactory-venv"


# ----------------------------------------------------------------------------- parent side
def physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def matmul_peak(device: str, sizes=(2048, 4096), repeats: int = 6, threads: int | None = None) -> dict:
    """Best achieved FLOP/s of a square matmul: the realistic ceiling MFU is measured against.

    Best of ``repeats`` timings per size (of 2048^2 and 4096^2, so neither cache effects nor one
    unlucky time slice on a shared machine decide it); the parent takes it right before every
    contender, and each contender's MFU uses the peak taken just before it."""
    import torch

    torch.set_num_threads(threads or physical_cores())
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    best = {}
    for n in sizes:
        a = torch.randn(n, n, dtype=dtype, device=device)
        b = torch.randn(n, n, dtype=dtype, device=device)
        torch.mm(a, b)  # warm-up
        times = []
        for _ in range(repeats if n <= 2048 else max(3, repeats // 2)):
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            torch.mm(a, b)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        best[n] = 2 * n**3 / min(times)
    return {"dtype": str(dtype).replace("torch.", ""), "flops_by_size": best, "peak_flops": max(best.values())}


def machine() -> dict:
    import torch
    import transformers
    import trl

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "physical_cores": physical_cores(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "loadavg_start": os.getloadavg(),
    }
    try:
        import peft

        info["peft"] = peft.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def model_path(model: str = MODEL) -> str:
    """The embedded default model as a local safetensors dir (converted once by Forge), or a
    random-weight model of one of ARCHS."""
    return resolve_default() if model == MODEL else random_model(model)


def random_model(arch: str) -> str:
    """A safetensors model dir of architecture ``arch`` (ARCHS) with random bf16 weights, built once.

    Written shard by shard from the model's parameter shapes on the ``meta`` device, so building
    a 14B checkpoint needs about one shard of memory, not the model's size."""
    import shutil

    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    out = RANDOM_MODELS / arch
    if (out / "DONE").exists():
        return str(out)
    spec = dict(ARCHS[arch])
    cfg = AutoConfig.for_model(spec.pop("model_type"), **spec, dtype="bfloat16")
    tok_dir = Path(resolve_default())
    cfg.bos_token_id, cfg.eos_token_id = 1, 2  # the default tokenizer's <|im_start|>/<|im_end|> ids
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(cfg)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    shard, size, index, n = {}, 0, {}, 0
    names = [k for k in meta.state_dict() if not (cfg.tie_word_embeddings and k == "lm_head.weight")]

    def flush():
        nonlocal shard, size, n
        if shard:
            fname = f"model-{n:05d}.safetensors"
            save_file(shard, str(tmp / fname), metadata={"format": "pt"})
            index.update({k: fname for k in shard})
            shard, size, n = {}, 0, n + 1

    params = dict(meta.state_dict())
    for k in names:
        t = params[k]
        if k.endswith("norm.weight"):
            v = torch.ones(t.shape, dtype=torch.bfloat16)
        elif k.endswith(".bias"):
            v = torch.zeros(t.shape, dtype=torch.bfloat16)
        else:  # the initializer's scale, so activations and losses stay in a sane range
            v = (torch.randn(t.shape, generator=gen) * cfg.initializer_range).to(torch.bfloat16)
        shard[k] = v.contiguous()
        size += v.numel() * 2
        if size >= 2 * 2**30:
            flush()
    flush()
    (tmp / "model.safetensors.index.json").write_text(
        json.dumps(
            {
                "metadata": {"total_size": sum(p.numel() * 2 for k, p in params.items() if k in index)},
                "weight_map": index,
            }
        )
    )
    cfg.save_pretrained(str(tmp))
    for f in tok_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "chat_template")):
            shutil.copy(f, tmp / f.name)
    (tmp / "DONE").write_text("random weights for timing only\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return str(out)


def resolve_default() -> str:
    from kit.models import resolve_model_path

    return resolve_model_path(MODEL)[0]


def run_child(name: str, args, out_json: Path) -> dict:
    py = sys.executable
    if name.startswith("llamafactory"):
        py = str(ensure_llamafactory_venv())
    argv = [
        py,
        str(Path(__file__).resolve()),
        "--child",
        name,
        "--steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_size),
        "--cutoff-len",
        str(args.cutoff_len),
        "--device",
        args.device,
        "--child-out",
        str(out_json),
        "--model-path",
        args.model_path,
        "--dataset",
        args.dataset,
        "--threads",
        str(args.threads or 0),
        "--model",
        args.model,
    ]
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:  # every contender's intra-op threads (LLaMA-Factory sets none of its own)
        env["OMP_NUM_THREADS"] = str(args.threads)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    t = time.time()
    env["FORGE_BENCH_T0"] = repr(t)  # "process start" for the time to the first optimizer step
    limit = int(args.max_mem_gb * 2**30) if args.max_mem_gb else None
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=err, text=True, start_new_session=True)
        peak_anon, over = watch_memory(proc, limit)
        err.seek(0)
        stderr = err.read()
    if proc.returncode != 0 or not out_json.exists():
        oom = over or any(k in stderr for k in ("MemoryError", "can't allocate memory", "std::bad_alloc"))
        return {
            "name": name,
            "error": f"exit {proc.returncode}"
            + (f" (out of memory under the {args.max_mem_gb} GB cap)" if oom else ""),
            "peak_anon_mb": peak_anon / 2**20,
            "stderr_tail": stderr[-3000:],
        }
    res = json.loads(out_json.read_text())
    res["wall_s"] = time.time() - t
    res["peak_anon_mb"] = peak_anon / 2**20
    return res


def anon_bytes(pid: int) -> int:
    """Anonymous resident memory of a process and its children (``RssAnon``): what the kernel cannot
    reclaim without swap. File pages a process maps (safetensors checkpoints are mmapped while they
    load) count in its RSS but are page cache the kernel drops under pressure."""
    import psutil

    total = 0
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for pr in procs:
        try:
            for line in open(f"/proc/{pr.pid}/status"):
                if line.startswith("RssAnon:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def watch_memory(proc: subprocess.Popen, limit: int | None) -> tuple[int, bool]:
    """Wait for ``proc``, sampling its anonymous memory every 0.2 s; past ``limit`` bytes its whole
    process group is killed (an out-of-memory failure of that contender alone, before the kernel's
    OOM killer picks a process on this shared machine). Returns (peak sampled bytes, killed)."""
    import signal

    peak = 0
    while proc.poll() is None:
        now = anon_bytes(proc.pid)
        peak = max(peak, now)
        if limit and now > limit:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return peak, True
        time.sleep(0.2)
    return peak, False


def add_derived(res: dict, peak: float) -> None:
    """MFU = useful FLOP/s / matmul peak. Useful FLOPs: the linear layers on every real token
    (``4*N_mm + 6*N_lora``), but the LM head only on trained tokens (a prompt position's logits
    feed no loss: Forge skips them, the others compute them), plus the attention score and
    context matmuls over each example's causal pairs (``12 * width * layers`` per pair: QK^T and
    PV forward, twice that backward). ``mfu_linear_only`` is the formula of the earlier tables:
    linear layers on every real token, attention left out."""
    if "error" in res:
        return
    flops_tok = 4 * res["n_matmul_params"] + 6 * res["n_trainable"]
    res["flops_per_real_token"] = flops_tok
    res["mfu_linear_only"] = res["real_tokens_per_s"] * flops_tok / peak
    head = res.get("n_head_params", 0)
    attn = 12 * res.get("attention_width", 0) * res.get("n_layers", 0)
    useful = (
        res["real_tokens_per_s"] * (flops_tok - 4 * head)
        + res["trained_tokens_per_s"] * 4 * head
        + res.get("attention_pairs_per_s", 0) * attn
    )
    res["useful_flops_per_s"] = useful
    res["mfu"] = useful / peak


def ensure_llamafactory_venv() -> Path:
    """A venv with the local CPU torch pinned *first*, then LLaMA-Factory (so pip never swaps torch)."""
    py = LF_VENV / "bin" / "python"
    if not (LF_VENV / "bin" / "llamafactory-cli").exists():
        LF_VENV.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(LF_VENV)], check=True)
        import torch

        pin = torch.__version__.split("+")[0]
        # the configured index serves the CPU wheel of this torch; pinning it in both calls keeps
        # LLaMA-Factory's own requirements from swapping it for a multi-GB CUDA build
        print(f"bench: installing LLaMA-Factory {LF_VERSION} into {LF_VENV} (once)", file=sys.stderr)
        subprocess.run([str(py), "-m", "pip", "install", "-q", f"torch=={pin}"], check=True)
        subprocess.run(
            [str(py), "-m", "pip", "install", "-q", f"llamafactory=={LF_VERSION}", "psutil", f"torch=={pin}"],
            check=True,
        )
        # the registry's torchvision/torchaudio wheels are built against another torch and break
        # `import transformers`; text-only SFT does not use them
        subprocess.run([str(py), "-m", "pip", "uninstall", "-y", "-q", "torchvision", "torchaudio"], check=True)
    if subprocess.run([str(py), "-c", "import bitsandbytes"], capture_output=True).returncode != 0:
        import bitsandbytes  # the version Forge runs, so both QLoRA contenders use the same kernels

        subprocess.run(
            [
                str(py),
                "-m",
                "pip",
                "install",
                "-q",
                f"bitsandbytes=={bitsandbytes.__version__}",
                f"torch=={torch_pin()}",
            ],
            check=True,
        )
    return py


def torch_pin() -> str:
    import torch

    return torch.__version__.split("+")[0]


# ----------------------------------------------------------------------------- child side
def after_import(hooks: dict) -> None:
    """Run ``hooks[name](module)`` right after module ``name`` is first imported (a meta path finder
    that wraps the module's loader)."""
    import importlib.abc

    class AfterImport(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name not in hooks:
                return None
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(name, path, target)
                if spec is not None and spec.loader is not None:
                    run, hook = spec.loader.exec_module, hooks.pop(name)

                    def exec_module(module, run=run, hook=hook):
                        run(module)
                        hook(module)

                    spec.loader.exec_module = exec_module
                    return spec
            return None

    sys.meta_path.insert(0, AfterImport())


def attention_pairs(inputs: dict) -> int:
    """Causal (query, key) pairs inside each example of a micro-batch: the attention work that is
    useful whatever the kernel (masked or cross-example pairs a contender computes are not counted).
    Examples come from Forge's ``cu_seq_lens_q``, the allowed entries of a 4D block mask, TRL's
    packed ``position_ids`` (each example restarts at 0), or a 2D mask's row lengths."""
    import torch

    def tri(n: torch.Tensor) -> int:
        n = n.long()
        return int((n * (n + 1) // 2).sum())

    cu = inputs.get("cu_seq_lens_q")
    if cu is not None:
        return tri(cu.diff())
    mask = inputs.get("attention_mask")
    if mask is not None and mask.dim() == 4:  # allowed = True (bool) or 0 (additive float)
        return int(mask[:, 0].sum()) if mask.dtype == torch.bool else int((mask[:, 0] == 0).sum())
    ids = inputs["input_ids"]
    pos = inputs.get("position_ids")
    if mask is None and pos is not None:  # packed padding-free rows: an example starts at position 0
        total = 0
        for row in pos.reshape(-1, pos.shape[-1]):
            starts = (row == 0).nonzero().flatten().tolist() + [row.numel()]
            total += tri(torch.tensor(starts).diff())
        return total
    if mask is not None and mask.dim() == 2:
        return tri(mask.sum(-1))
    return tri(torch.full((ids.shape[0],), ids.shape[-1]))


class Probe:
    """Timestamps each optimizer step and counts the tokens of each training micro-batch."""

    def __init__(self):
        # the parent's clock just before it started this process (psutil's create time is derived
        # from the boot time in whole seconds and read ~0.8 s late on this VM)
        t0 = os.environ.get("FORGE_BENCH_T0")
        self.t0 = float(t0) if t0 else self._process_start()
        self.step_end: list[float] = []
        self.real: list[int] = []
        self.trained: list[int] = []
        self.pairs: list[int] = []  # causal (query, key) pairs attention computed usefully, per step
        self.losses: list[float] = []
        self.model = None
        self._pending = [0, 0, 0]  # tokens and attention pairs of the micro-batches since the last step

    @staticmethod
    def _process_start() -> float:
        try:
            import psutil

            return psutil.Process().create_time()
        except ImportError:
            return time.time()

    def install(self) -> None:
        """Patch transformers' CallbackHandler and Trainer the moment each is first imported (by
        the contender itself), so the probe adds no imports of its own to the start-up it measures."""
        after_import(
            {"transformers.trainer_callback": self._patch_callbacks, "transformers.trainer": self._patch_trainer}
        )

    def _patch_callbacks(self, module) -> None:
        CallbackHandler = module.CallbackHandler
        probe = self
        orig_step_end, orig_log = CallbackHandler.on_step_end, CallbackHandler.on_log

        def on_step_end(self, args, state, control):
            probe.step_end.append(time.time())
            # one entry per optimizer step, whatever the gradient accumulation
            probe.real.append(probe._pending[0])
            probe.trained.append(probe._pending[1])
            probe.pairs.append(probe._pending[2])
            probe._pending = [0, 0, 0]
            return orig_step_end(self, args, state, control)

        def on_log(self, args, state, control, logs):
            if logs and "loss" in logs:
                probe.losses.append(float(logs["loss"]))
            return orig_log(self, args, state, control, logs)

        CallbackHandler.on_step_end, CallbackHandler.on_log = on_step_end, on_log

    def _patch_trainer(self, module) -> None:
        Trainer = module.Trainer
        probe = self
        orig_ts = Trainer.training_step

        def training_step(self, model, inputs, *a, **kw):
            probe.model = model
            probe.count(inputs)
            return orig_ts(self, model, inputs, *a, **kw)

        Trainer.training_step = training_step

    def count(self, inputs: dict) -> None:
        import torch

        ids = inputs["input_ids"]
        if "num_real_tokens" in inputs:  # Forge's collator counts them (its mask is 4D)
            real = int(inputs["num_real_tokens"])
        elif inputs.get("attention_mask") is not None and inputs["attention_mask"].dim() == 2:
            real = int(inputs["attention_mask"].sum())
        elif inputs.get("attention_mask") is not None and inputs["attention_mask"].dim() == 4:
            # a block-diagonal 4D mask (LLaMA-Factory's neat_packing): a position is real when it may
            # attend to itself (padding rows are fully blocked there)
            diag = inputs["attention_mask"][:, 0].diagonal(dim1=-2, dim2=-1)
            real = int(diag.sum()) if diag.dtype == torch.bool else int((diag == 0).sum())
        else:  # padding-free packing: every position is real
            real = int(ids.numel())
        lab = inputs.get("labels")
        if lab is None:
            trained = real
        else:
            trained = int((lab != -100).sum())
            if "completion_mask" in inputs:
                trained = int(((lab != -100) & inputs["completion_mask"].bool()).sum())
        self._pending[0] += real
        self._pending[1] += trained
        self._pending[2] += attention_pairs(inputs)

    def result(self, name: str, steps: int) -> dict:
        n = len(self.step_end)
        if n < 2:
            raise RuntimeError(f"{name}: only {n} optimizer steps recorded")
        window = self.step_end[-1] - self.step_end[0]
        real = sum(self.real[1:n])
        trained = sum(self.trained[1:n])
        pairs = sum(self.pairs[1:n])
        return {
            "name": name,
            "steps": n,
            "first_step_s": self.step_end[0] - self.t0,
            "first_step_real_tokens": self.real[0],
            "first_step_trained_tokens": self.trained[0],
            "s_per_step": window / (n - 1),
            "real_tokens_per_s": real / window,
            "trained_tokens_per_s": trained / window,
            "attention_pairs_per_s": pairs / window,
            "real_tokens": sum(self.real[:n]),
            "trained_tokens": sum(self.trained[:n]),
            "first_loss": self.losses[0] if self.losses else None,
            "last_loss": self.losses[-1] if self.losses else None,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }


def model_counts(model) -> dict:
    import torch

    def numel(w) -> int:  # a bitsandbytes 4-bit weight is stored packed: its quant state has the real shape
        qs = getattr(w, "quant_state", None)
        return int(torch.Size(qs.shape).numel()) if qs is not None and getattr(qs, "shape", None) else w.numel()

    mm = sum(numel(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear) and not m.weight.requires_grad)
    train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    head = next((m for n, m in model.named_modules() if n.endswith("lm_head") and hasattr(m, "weight")), None)
    c = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    return {
        "n_matmul_params": mm,
        "n_trainable": train,
        "n_head_params": numel(head.weight) if head is not None and not head.weight.requires_grad else 0,
        "attention_width": heads * head_dim,  # query heads x head dim
        "n_layers": c.num_hidden_layers,
    }


def dataset_file(name: str) -> Path:
    """The shipped alpaca-format demo set ``name`` (demo_sft: the default workload; demo_long_sft: long rows)."""
    return ROOT / "data" / f"{name}.jsonl"


def demo_rows(name: str = "demo_sft") -> list[dict]:
    rows = [json.loads(l) for l in dataset_file(name).read_text().splitlines() if l.strip()]
    out = []
    for r in rows:
        user = r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")
        out.append(
            {
                "prompt": [{"role": "user", "content": user}],
                "completion": [{"role": "assistant", "content": r["output"]}],
            }
        )
    return out


# what each Forge contender changes from the defaults (padding-free batches of whole examples,
# at most cutoff_len tokens per forward pass on CPU)
FORGE_VARIANTS = {
    "forge": {},
    "forge-packed": {"packing": True},  # packed rows, still padding-free
    "forge-blockmask": {"packing": True, "padding_free": False},  # padded packed rows, dense 4D mask
    "forge-qlora": {"quantization_bit": 4},  # QLoRA: 4-bit frozen weights (bitsandbytes)
    "forge-bf16": {"dtype": "bfloat16"},  # bf16 weights on CPU too (LLaMA-Factory's CPU default)
}


def child_forge(args, probe: Probe, name: str) -> dict:
    """Forge's defaults, or one of FORGE_VARIANTS (to show what each part of the fast path buys)."""
    import kit

    run = kit.train(
        model=MODEL if args.model == MODEL else args.model_path,
        dataset=args.dataset,
        batch_size=args.batch_size,
        cutoff_len=args.cutoff_len,
        max_steps=args.steps,
        lora_rank=16,
        lora_alpha=32,
        save_steps=0,
        logging_steps=1,
        device=args.device,
        num_threads=args.threads or None,
        output_dir=tempfile.mkdtemp(prefix="forge-bench-"),
        **{"dtype": "bfloat16" if args.device == "cuda" else "float32", **FORGE_VARIANTS[name]},
    )
    res = probe.result(name, args.steps)
    res.update(model_counts(run.trainer.model))
    res["forge_reported_first_step_s"] = run.first_step_s
    model_ev = next((e for e in run.events if e.kind == "model"), None)
    if model_ev is not None:  # the engine's estimate, to compare with the measured peak RSS
        res["memory_estimate_mb"] = model_ev.get("memory_estimate", {}).get("total", 0) / 2**20
    res["gradient_checkpointing"] = bool(
        getattr(run.trainer.args, "gradient_checkpointing", False)
        or getattr(run.trainer.args, "activation_checkpointing", False)
    )
    return res


def child_trl(args, probe: Probe, packing: bool, qlora: bool = False) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from kit.config import RunConfig

    d = RunConfig().train  # same optimiser settings as Forge's defaults
    path = args.model_path
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    torch.set_num_threads(args.threads or physical_cores())
    tok = AutoTokenizer.from_pretrained(path)
    quant = {}
    if qlora:  # 4-bit NF4 frozen weights, the QLoRA recipe of TRL's docs (bitsandbytes)
        from transformers import BitsAndBytesConfig

        quant["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
        )
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **quant)
    cfg = SFTConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-bench-"),
        per_device_train_batch_size=args.batch_size,
        max_steps=args.steps,
        learning_rate=d.learning_rate,
        lr_scheduler_type=d.lr_scheduler,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        max_length=args.cutoff_len,
        packing=packing,
        seed=d.seed,
        use_cpu=args.device == "cpu",
        bf16=args.device == "cuda",
    )
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(
        model=model,
        args=cfg,
        train_dataset=Dataset.from_list(demo_rows(args.dataset)),
        processing_class=tok,
        peft_config=lora,
    )
    trainer.train()
    res = probe.result(args.child, args.steps)
    res.update(model_counts(trainer.model))
    return res


def child_llamafactory(args, probe: Probe, packing: bool, qlora: bool = False) -> dict:
    """LLaMA-Factory's own entry point (``run_exp``, what ``llamafactory-cli train`` calls), in this
    child process under the LLaMA-Factory venv's python, so the same probe times it."""
    # LLaMA-Factory's first import; transformers decides here (cached) which optional packages
    # exist, so it must run before the torchaudio stand-in below, which it should not see
    import transformers  # noqa: F401

    try:
        import torchaudio  # noqa: F401
    except (ImportError, OSError):
        # LLaMA-Factory 0.9.5 imports torchaudio at module level for its audio plugin; the registry
        # has no torchaudio built for this torch, and text-only SFT never calls it. An empty module
        # lets the import succeed; any real use would fail loudly with AttributeError.
        import types

        sys.modules["torchaudio"] = types.ModuleType("torchaudio")
    from llamafactory.train.tuner import run_exp

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="lf-bench-"))
    (work / "dataset_info.json").write_text(
        json.dumps(
            {
                args.dataset: {
                    "file_name": str(dataset_file(args.dataset)),
                    "columns": {"prompt": "instruction", "query": "input", "response": "output"},
                }
            }
        )
    )
    cfg = {
        "model_name_or_path": args.model_path,
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_rank": 16,
        "lora_alpha": 32,
        "lora_target": "all",
        "dataset": args.dataset,
        "dataset_dir": str(work),
        "template": "chatml",
        "cutoff_len": args.cutoff_len,
        "packing": packing,
        "neat_packing": packing,
        "output_dir": str(work / "out"),
        "logging_steps": 1,
        "per_device_train_batch_size": args.batch_size,
        "gradient_accumulation_steps": 1,
        "learning_rate": 2e-4,
        "lr_scheduler_type": "cosine",
        "max_steps": args.steps,
        "save_strategy": "no",
        "report_to": "none",
        "overwrite_output_dir": True,
        "bf16": args.device == "cuda",
        "use_cpu": args.device == "cpu",
        "preprocessing_num_workers": 1,
    }
    if qlora:  # LLaMA-Factory's QLoRA switch (bitsandbytes NF4)
        cfg["quantization_bit"] = 4
    run_exp(cfg)
    res = probe.result(args.child, args.steps)
    res.update(model_counts(probe.model))
    return res


def child_main(args) -> None:
    probe = Probe()
    probe.install()
    if args.child.startswith("forge"):
        res = child_forge(args, probe, args.child)
    elif args.child.startswith("trl"):
        res = child_trl(args, probe, packing=args.child == "trl-packed", qlora=args.child == "trl-qlora")
    else:
        res = child_llamafactory(
            args, probe, packing=args.child.endswith("packed"), qlora=args.child == "llamafactory-qlora"
        )
    if args.device == "cuda":
        import torch

        res["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    Path(args.child_out).write_text(json.dumps(res))


# ----------------------------------------------------------------------------- main
def parse(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument("--steps", type=int, default=10, help="optimizer steps per contender (>= 2)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--cutoff-len", type=int, default=512)
    p.add_argument(
        "--dataset",
        default="demo_sft",
        choices=("demo_sft", "demo_long_sft"),
        help="demo_long_sft: answers of 1k-4k tokens (bench/make_long_data.py), for --cutoff-len 2048/4096",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="intra-op threads of every contender and of the matmul peak (0: physical cores); 1 on a "
        "machine shared with other work, where a 2-thread op waits for its preempted partner",
    )
    p.add_argument(
        "--max-mem-gb",
        type=float,
        default=20.0,
        help="cap on each child's anonymous resident memory (RssAnon, sampled every 0.2 s): past it the "
        "child is killed and reported out of memory, instead of the kernel's OOM killer picking a process "
        "on a shared machine; mmapped checkpoint pages do not count (0: no cap)",
    )
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cuda: bf16 and a bf16 matmul peak (written for GPU machines, not run on the CPU box)",
    )
    p.add_argument(
        "--model",
        default=MODEL,
        choices=(MODEL, *ARCHS),
        help="the embedded default model, or a bigger architecture built once with random weights "
        "(timing and memory only) in ~/.cache/forge-kit/bench/models",
    )
    p.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(DEFAULT_CONTENDERS))
    p.add_argument("--out", default=None, help="results JSON (default bench/results/<timestamp>.json)")
    p.add_argument(
        "--report",
        metavar="DIR",
        default=None,
        help="do not run: report the <contender>.json child outputs already in DIR",
    )
    p.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    p.add_argument("--model-path", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.steps < 2:
        p.error("--steps must be >= 2 (step 1 is warm-up)")
    return a


def fmt(v, spec=".1f"):
    return "-" if v is None else format(v, spec)


def main(argv=None) -> int:
    args = parse(argv)
    if args.child:
        child_main(args)
        return 0
    info = machine()
    peak = matmul_peak(args.device, threads=args.threads)
    print(
        f"machine: {info['cpu']} ({info['physical_cores']} cores), torch {info['torch']}, load {info['loadavg_start']}"
    )
    print(f"matmul peak ({peak['dtype']}): {peak['peak_flops'] / 1e9:.1f} GFLOP/s (taken again before each contender)")
    if not args.report:
        args.model_path = args.model_path or model_path(args.model)  # resolved once, handed to every child
    results = []
    tmp = Path(args.report) if args.report else Path(tempfile.mkdtemp(prefix="bench-"))
    for name in args.contenders:
        if args.report:  # re-report children that already ran (e.g. when the parent was interrupted)
            f = tmp / f"{name}.json"
            res = json.loads(f.read_text()) if f.exists() else {"name": name, "error": "no output", "stderr_tail": ""}
        else:
            before = matmul_peak(
                args.device, threads=args.threads
            )  # right before it: the load may have changed since the last one
            load = os.getloadavg()
            print(
                f"running {name} (matmul peak {before['peak_flops'] / 1e9:.1f} GFLOP/s, load {load[0]:.2f}) ...",
                flush=True,
            )
            res = run_child(name, args, tmp / f"{name}.json")
            res["matmul_peak_flops"], res["loadavg_before"], res["loadavg_after"] = (
                before["peak_flops"],
                load,
                os.getloadavg(),
            )
        if res.get("real_tokens_per_s"):
            add_derived(res, res.get("matmul_peak_flops", peak["peak_flops"]))
        if "error" in res:
            print(f"  {name} FAILED: {res['error']}\n{res['stderr_tail']}")
        results.append(res)
    print(
        "\nMFU = useful FLOP/s / matmul peak: 4*N_matmul(frozen Linear, LM head on trained tokens only) + "
        "6*N_lora per real token, + 12*width*layers per causal attention pair inside an example; "
        "'lin MFU' = the earlier formula (linear layers on every real token, no attention). Steady state = steps 2..N."
    )
    hdr = (
        f"{'contender':<20}{'trained tok/s':>14}{'real tok/s':>12}{'s/step':>9}{'1st step s':>11}{'(tokens)':>9}"
        f"{'peak RSS MB':>12}{'anon MB':>8}{'loss first->last':>20}{'MFU %':>8}{'lin MFU':>8}{'peak GF/s':>10}{'load':>6}{'est MB':>8}"
    )
    print(hdr)
    ok = {r["name"]: r for r in results if "error" not in r}
    for r in ok.values():
        loss = f"{fmt(r.get('first_loss'), '.3f')}->{fmt(r.get('last_loss'), '.3f')}"
        mfu = r.get("mfu")
        print(
            f"{r['name']:<20}{fmt(r.get('trained_tokens_per_s')):>14}{fmt(r.get('real_tokens_per_s')):>12}"
            f"{fmt(r.get('s_per_step'), '.2f'):>9}{fmt(r.get('first_step_s'), '.1f'):>11}"
            f"{fmt(r.get('first_step_real_tokens'), 'd'):>9}"
            f"{fmt(r.get('peak_rss_mb'), '.0f'):>12}{fmt(r.get('peak_anon_mb'), '.0f'):>8}{loss:>20}"
            f"{fmt(None if mfu is None else 100 * mfu, '.2f'):>8}"
            f"{fmt(None if r.get('mfu_linear_only') is None else 100 * r['mfu_linear_only'], '.2f'):>8}"
            f"{fmt(r.get('matmul_peak_flops', 0) / 1e9):>10}{fmt((r.get('loadavg_before') or [None])[0], '.1f'):>6}"
            f"{fmt(r.get('memory_estimate_mb'), '.0f'):>8}"
        )
    ratios = {}
    if "forge" in ok:
        f = ok["forge"]
        for name, r in ok.items():
            if name == "forge":
                continue
            for key in ("trained_tokens_per_s", "real_tokens_per_s"):
                if r.get(key) and f.get(key):
                    ratios[f"forge/{name} {key}"] = f[key] / r[key]
            if r.get("s_per_step") and f.get("s_per_step"):
                ratios[f"{name}/forge s_per_step"] = r["s_per_step"] / f["s_per_step"]
            if r.get("first_step_s") and f.get("first_step_s"):
                ratios[f"forge/{name} first_step_s"] = f["first_step_s"] / r["first_step_s"]
    for k, v in ratios.items():
        print(f"  {k}: {v:.2f}x")
    info["loadavg_end"] = os.getloadavg()
    out = Path(args.out) if args.out else HERE / "results" / f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"machine": info, "matmul_peak": peak, "args": vars(args), "results": results, "ratios": ratios},
            indent=2,
            default=str,
        )
    )
    print(f"wrote {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
