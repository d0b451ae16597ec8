"""train.distributed: presets and checks at config time, TrainingArguments keywords, torchrun argv.

DeepSpeed runs need a GPU: here its presets are validated only (the run test is marked gpu).
"""
from __future__ import annotations

import json
import sys

import pytest

from kit.config import ConfigError, RunConfig
from kit.launch import DEEPSPEED_PRESETS, distributed_args, torchrun_argv


def _cfg(tiny_model_dir, **kw):
    return RunConfig.from_kwargs(model=str(tiny_model_dir), **kw)


def test_ddp_is_the_default_and_adds_nothing(tiny_model_dir):
    assert distributed_args(_cfg(tiny_model_dir)) == {}


def test_fsdp_builds_trainingarguments_fsdp2(tiny_model_dir, tmp_path):
    args = distributed_args(_cfg(tiny_model_dir, distributed="fsdp"))
    assert args["fsdp"] == "full_shard auto_wrap" and args["fsdp_config"]["version"] == 2
    own = tmp_path / "accelerate_fsdp.yaml"
    own.write_text("fsdp_config:\n  fsdp_reshard_after_forward: false\n  fsdp_version: 2\n")
    args = distributed_args(_cfg(tiny_model_dir, distributed="fsdp", distributed_config=str(own)))
    assert args["fsdp_config"]["reshard_after_forward"] is False


def test_fsdp_args_are_accepted_by_transformers(tiny_model_dir, tmp_path):
    from transformers import TrainingArguments
    ta = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none",
                           **distributed_args(_cfg(tiny_model_dir, distributed="fsdp")))
    assert ta.fsdp_config["version"] == 2 and ta.fsdp


@pytest.mark.parametrize("preset,stage", [("zero2", 2), ("zero3", 3), ("zero3_offload", 3)])
def test_deepspeed_presets(preset, stage, tiny_model_dir, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object() if n == "deepspeed" else real(n, *a))
    cfg = _cfg(tiny_model_dir, distributed="deepspeed", distributed_config=preset)
    ds = distributed_args(cfg)["deepspeed"]
    assert ds["zero_optimization"]["stage"] == stage and ds == DEEPSPEED_PRESETS[preset]


def test_config_time_checks(tiny_model_dir, tmp_path, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    with pytest.raises(ConfigError, match="train.distributed_config.*not a preset"):
        monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object() if n == "deepspeed" else real(n, *a))
        _cfg(tiny_model_dir, distributed="deepspeed", distributed_config="zero9")
    with pytest.raises(ConfigError, match="GaLore .* not distributed"):
        _cfg(tiny_model_dir, distributed="fsdp", optim="galore_adamw", adapter__type="full")
    with pytest.raises(ConfigError, match="QLoRA with sharded parameters"):
        _cfg(tiny_model_dir, distributed="deepspeed", distributed_config="zero3", bits=4)
    with pytest.raises(ConfigError, match="DeepSpeed preset: set train.distributed=deepspeed"):
        _cfg(tiny_model_dir, distributed="fsdp", distributed_config="zero3")
    with pytest.raises(ConfigError, match="not ddp"):
        _cfg(tiny_model_dir, distributed_config="zero2")
    own = tmp_path / "ds.json"
    own.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    assert distributed_args(_cfg(tiny_model_dir, distributed="deepspeed", distributed_config=str(own)))[
        "deepspeed"]["zero_optimization"]["stage"] == 2
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "deepspeed" else real(n, *a))
    with pytest.raises(ConfigError, match="deepspeed is not installed"):
        _cfg(tiny_model_dir, distributed="deepspeed")


def test_torchrun_argv_single_and_multi_node():
    one = torchrun_argv("run.yaml", 2, master_port=1234)
    assert one == [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                   "--master_port=1234", "-m", "kit.cli", "train", "run.yaml"]
    many = torchrun_argv("run.yaml", 8, nnodes=2, rdzv_endpoint="head:29500")
    assert "--nnodes=2" in many and "--rdzv_endpoint=head:29500" in many and "--rdzv_backend=c10d" in many
    with pytest.raises(ValueError, match="rdzv_endpoint"):
        torchrun_argv("run.yaml", 8, nnodes=2)


@pytest.mark.gpu
def test_deepspeed_zero3_offload_run(tiny_cfg):
    """A one-GPU ZeRO-3 run with CPU offload is still a real run (needs deepspeed and CUDA)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("deepspeed")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from kit import Run
    run = Run(tiny_cfg(distributed="deepspeed", distributed_config="zero3_offload", max_steps=2, save_steps=0))
    run.start(blocking=True)
    assert run.status == "finished"
