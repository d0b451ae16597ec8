"""Training on more than one process or machine: ``train.distributed`` and torchrun launch lines.

``train.distributed``:

- ``ddp`` (default): one full copy of the model per process (transformers' DDP; gloo on CPU).
- ``fsdp``: parameters, gradients and optimizer state sharded over processes, through
  TrainingArguments' ``fsdp`` / ``fsdp_config`` (accelerate's FullyShardedDataParallelPlugin,
  FSDP2 ``fully_shard``), wrapping each decoder layer.
- ``deepspeed``: ZeRO through TrainingArguments' ``deepspeed`` (accelerate's DeepSpeedPlugin /
  HfDeepSpeedConfig). ``train.distributed_config`` names a preset (``zero2``, ``zero3``,
  ``zero3_offload``) or the user's own DeepSpeed JSON / accelerate-style FSDP JSON/YAML file.
  Presets keep ``"auto"`` values, which transformers fills from TrainingArguments.

Validated when the config is built (:func:`distributed_problem`, a rule of kit.config_rules):
QLoRA with ZeRO-3 or FSDP needs the 4-bit weights stored in a float dtype (``quant.quant_storage``
where the config has it), GaLore is not distributed, DeepSpeed must be installed.

FSDP on CPU: accelerate builds its FSDP plugin only for GPU-like devices (on CPU, TrainingArguments'
``fsdp`` silently trains DDP), so on CPU processes the engine shards the model itself with FSDP2's
``fully_shard`` over the gloo group (:func:`shard_fsdp2`: each decoder layer, then the root, as
accelerate's TRANSFORMER_BASED_WRAP does) and tells the Trainer the model owns its gradient
reduction (transformers' flag for models sharded at load time: no DDP wrap, no second sharding).
The final weights are gathered from every rank (:func:`full_state_dict`) and written by rank 0.
That path keeps no optimizer state in checkpoints (transformers cannot save it for such models):
checkpoints are off there (a config rule). tests/test_distributed.py runs it in 2 gloo processes.

DeepSpeed runs need a GPU (tests marked ``gpu``); here the presets are validated only. Multi-node:
:func:`torchrun_argv` with ``nnodes`` and a rendezvous endpoint; examples/slurm_multinode.sh.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from .events import Event

DISTRIBUTED = ("ddp", "fsdp", "deepspeed")

_ZERO_COMMON = {
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "train_batch_size": "auto",
    "bf16": {"enabled": "auto"},
    "fp16": {"enabled": "auto"},
}
DEEPSPEED_PRESETS: dict[str, dict] = {
    "zero2": {
        **_ZERO_COMMON,
        "zero_optimization": {
            "stage": 2,
            "overlap_comm": True,
            "contiguous_gradients": True,
            "reduce_scatter": True,
            "allgather_bucket_size": 5e8,
            "reduce_bucket_size": 5e8,
        },
    },
    "zero3": {
        **_ZERO_COMMON,
        "zero_optimization": {
            "stage": 3,
            "overlap_comm": True,
            "contiguous_gradients": True,
            "reduce_bucket_size": "auto",
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
            "stage3_gather_16bit_weights_on_model_save": True,
        },
    },
    "zero3_offload": {
        **_ZERO_COMMON,
        "zero_optimization": {
            "stage": 3,
            "overlap_comm": True,
            "contiguous_gradients": True,
            "reduce_bucket_size": "auto",
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
            "stage3_gather_16bit_weights_on_model_save": True,
            "offload_optimizer": {"device": "cpu", "pin_memory": True},
            "offload_param": {"device": "cpu", "pin_memory": True},
        },
    },
}
# TrainingArguments' fsdp_config for FSDP2: shard each decoder layer (transformers reads the
# model's _no_split_modules for the layer class), full state dicts on save for our exports
FSDP_DEFAULT = {
    "version": 2,
    "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
    "reshard_after_forward": True,
    "state_dict_type": "FULL_STATE_DICT",
    "cpu_ram_efficient_loading": False,
}


def _load_file(path: str) -> dict:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"no such file: {p}")
    text = p.read_text()
    data = yaml.safe_load(text) if p.suffix in (".yaml", ".yml") else json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{p} must hold an object")
    return data


def zero_stage(cfg: Any) -> Optional[int]:
    """The ZeRO stage a deepspeed config asks for (None: not deepspeed)."""
    t = cfg.train
    if t.distributed != "deepspeed":
        return None
    ds = resolve_deepspeed(t.distributed_config or "zero2")
    return int((ds.get("zero_optimization") or {}).get("stage", 0))


def resolve_deepspeed(ref: str) -> dict:
    """A preset's DeepSpeed config, or the user's file."""
    if ref in DEEPSPEED_PRESETS:
        return json.loads(json.dumps(DEEPSPEED_PRESETS[ref]))
    return _load_file(ref)


def distributed_problem(c: Any) -> Optional[tuple[str, str]]:
    """(key, message) for a distributed setting that cannot work, or None."""
    t = c.train
    if t.distributed == "ddp":
        if t.distributed_config:
            return "train.distributed_config", "is read with train.distributed=fsdp or deepspeed, not ddp."
        return None
    if t.optim == "galore_adamw":
        return "train.optim", (
            f"GaLore projects whole gradients on one process and is not distributed: use "
            f"train.distributed=ddp or another optimizer with {t.distributed}."
        )
    if t.distributed == "deepspeed":
        ref = t.distributed_config or "zero2"
        if ref not in DEEPSPEED_PRESETS:
            try:
                _load_file(ref)
            except (ValueError, json.JSONDecodeError, yaml.YAMLError) as e:
                return "train.distributed_config", (
                    f"not a preset ({', '.join(DEEPSPEED_PRESETS)}) nor a readable DeepSpeed config file: {e}"
                )
        if importlib.util.find_spec("deepspeed") is None:
            return "train.distributed", "deepspeed is not installed: pip install deepspeed (needs a CUDA GPU)."
    elif t.distributed_config:
        if t.distributed_config in DEEPSPEED_PRESETS:
            return (
                "train.distributed_config",
                f"'{t.distributed_config}' is a DeepSpeed preset: set train.distributed=deepspeed.",
            )
        try:
            _load_file(t.distributed_config)
        except (ValueError, json.JSONDecodeError, yaml.YAMLError) as e:
            return "train.distributed_config", f"not a readable FSDP config file: {e}"
    shards_params = t.distributed == "fsdp" or zero_stage(c) == 3
    if shards_params and c.quant.bits == 4:
        storage = getattr(c.quant, "quant_storage", None)
        if storage in (None, "uint8"):
            return "quant.bits", (
                "QLoRA with sharded parameters (FSDP or ZeRO-3) needs the 4-bit weights stored in "
                "the compute dtype (bnb_4bit_quant_storage=bfloat16); use ZeRO-2 or DDP otherwise."
            )
    if c.quant.bits == 8 and shards_params:
        return "quant.bits", "8-bit weights cannot be sharded by FSDP or ZeRO-3: use ddp or ZeRO-2."
    return None


def distributed_args(cfg: Any, device: str = "cuda") -> dict:
    """TrainingArguments keywords for ``train.distributed`` (empty for ddp, and for fsdp on CPU,
    where the engine shards the model itself: :func:`shard_fsdp2`)."""
    t = cfg.train
    if t.distributed == "fsdp" and device == "cpu":
        return {}
    if t.distributed == "fsdp":
        conf = dict(FSDP_DEFAULT)
        if t.distributed_config:
            user = _load_file(t.distributed_config)
            # an accelerate config file keeps its FSDP settings under fsdp_config with fsdp_ prefixes
            user = user.get("fsdp_config", user)
            conf.update({k.removeprefix("fsdp_"): v for k, v in user.items()})
        return {"fsdp": "full_shard auto_wrap", "fsdp_config": conf}
    if t.distributed == "deepspeed":
        return {"deepspeed": resolve_deepspeed(t.distributed_config or "zero2")}
    return {}


def torchrun_argv(
    config_path: str,
    nproc: int,
    *,
    nnodes: int = 1,
    node_rank: Optional[int] = None,
    rdzv_endpoint: Optional[str] = None,
    master_port: Optional[int] = None,
) -> list[str]:
    """The argv list that runs ``forge train config_path`` in ``nproc`` processes per node.

    One node: a local rendezvous on 127.0.0.1. Several: every node runs the same line with the
    same ``rdzv_endpoint`` (host:port of one of them), c10d rendezvous (torchrun assigns ranks).
    """
    if nproc < 1 or nnodes < 1:
        raise ValueError(f"nproc and nnodes must be >= 1, got {nproc}, {nnodes}")
    argv = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    if nnodes == 1 and rdzv_endpoint is None:
        argv += ["--master_addr=127.0.0.1", f"--master_port={master_port or 29500}"]
    else:
        if not rdzv_endpoint:
            raise ValueError("several nodes need rdzv_endpoint (host:port of the first node)")
        argv += [f"--nnodes={nnodes}", "--rdzv_backend=c10d", f"--rdzv_endpoint={rdzv_endpoint}"]
        if node_rank is not None:
            argv.append(f"--node_rank={node_rank}")
    return argv + ["-m", "kit.cli", "train", str(config_path)]


def cpu_fsdp(cfg: Any, device: str) -> bool:
    """Whether this process shards the model itself (FSDP on CPU processes, see the module doc)."""
    from .runtime import world_size

    return cfg.train.distributed == "fsdp" and device == "cpu" and world_size() > 1


def shard_fsdp2(model: Any) -> Any:
    """FSDP2 ``fully_shard`` on each decoder layer (the classes of ``_no_split_modules``), then on the root.

    Parameters become DTensors sharded over the default (gloo) process group; gradients are
    reduce-scattered (averaged over ranks) in backward, so the Trainer must not wrap DDP around it.
    """
    from torch.distributed.fsdp import fully_shard  # torch.distributed: only a sharded run loads it

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layer_classes = set(getattr(base, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in layer_classes]
    if not layers:
        raise ValueError(
            f"train.distributed=fsdp: {type(base).__name__} names no decoder layer class (_no_split_modules) to shard"
        )
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)
    # transformers' flag for a model sharded before the Trainer sees it: no DDP, no second sharding
    for m in {model, base}:
        m._is_distributed_loading_by_transformers = True
    return model


def is_sharded(model: Any) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def full_state_dict(model: Any) -> dict:
    """The whole (unsharded) state dict on CPU, gathered from every rank (a collective: all ranks call it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    config = getattr(model, "config", None)
    if getattr(config, "tie_word_embeddings", False):
        # the gathered dict lists the tied head beside the embeddings; save_pretrained keeps one of them
        # only when it sees the tie on the model's own tensors, so drop the head's copy here
        for key in [k for k in state if k.endswith("lm_head.weight")]:
            del state[key]
    return state


# ------------------------------------------------------------------ launching workers from one process


def free_port() -> int:
    """A free local TCP port for a one-node rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def worker_argv(
    cfg: Any,
    nproc: int,
    launch_path: Path,
    *,
    nnodes: int = 1,
    node_rank: Optional[int] = None,
    rdzv_endpoint: Optional[str] = None,
) -> list[str]:
    """Freeze ``cfg`` into ``launch_path`` (the run directory's ``launch.yaml``, RunDir.launch_config_path:
    every rank reads the same file, so all share the run directory ``cfg`` names) and return the
    torchrun argv that trains it in ``nproc`` processes per node. An argv list: no shell."""
    if not cfg.train.output_dir:
        raise ValueError("worker_argv needs cfg.train.output_dir set: all ranks must share one run directory")
    frozen = cfg.save(launch_path)
    port = free_port() if nnodes == 1 and rdzv_endpoint is None else None
    return torchrun_argv(
        str(frozen), nproc, nnodes=nnodes, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint, master_port=port
    )


def follow_events(
    path: Path, offset: int, running: Callable[[], bool], emit: Callable[[Event], None], poll_s: float = 0.2
) -> int:
    """Hand ``emit`` each whole line rank 0 appends to ``path`` after byte ``offset``, while
    ``running()`` is true, then what is left; returns the new offset. A partial last line (being
    written) waits for its newline."""
    path = Path(path)
    buf = b""
    while True:
        alive = running()  # read after the check: a worker that just exited has written its last line
        if path.exists():
            with open(path, "rb") as fh:
                fh.seek(offset)
                chunk = fh.read()
            offset += len(chunk)
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if line.strip():
                    try:
                        emit(Event.from_json(line.decode("utf-8", errors="replace")))
                    except (ValueError, KeyError):
                        continue
        if not alive:
            return offset - len(buf)
        time.sleep(poll_s)
