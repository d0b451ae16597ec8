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

    ta = TrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to="none",
        **distributed_args(_cfg(tiny_model_dir, distributed="fsdp")),
    )
    assert ta.fsdp_config["version"] == 2 and ta.fsdp


@pytest.mark.parametrize("preset,stage,offload", [("zero2", 2, False), ("zero3", 3, False), ("zero3_offload", 3, True)])
def test_deepspeed_presets(preset, stage, offload, tiny_model_dir, tmp_path):
    """With the deepspeed extra installed (it installs on CPU: scripts/setup.sh), each preset goes
    through transformers' HfTrainerDeepSpeedConfig and accelerate's DeepSpeedPlugin, which fill the
    "auto" values from TrainingArguments. A ZeRO run itself needs a GPU (test_deepspeed_zero3_offload_run)."""
    pytest.importorskip("deepspeed")
    from transformers import TrainingArguments

    cfg = _cfg(tiny_model_dir, distributed="deepspeed", distributed_config=preset, batch_size=2, grad_accum=3)
    ds = distributed_args(cfg)["deepspeed"]
    assert ds["zero_optimization"]["stage"] == stage and ds == DEEPSPEED_PRESETS[preset]
    ta = TrainingArguments(
        output_dir=str(tmp_path),
        report_to="none",
        per_device_train_batch_size=2,
        gradient_accumulation_steps=3,
        **distributed_args(cfg),
    )
    filled = ta.hf_deepspeed_config
    assert filled.config["train_micro_batch_size_per_gpu"] == 2 and filled.config["gradient_accumulation_steps"] == 3
    assert filled.is_zero3() == (stage == 3) and filled.is_offload() == offload
    assert ta.deepspeed_plugin.zero_stage == stage


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
    assert (
        distributed_args(_cfg(tiny_model_dir, distributed="deepspeed", distributed_config=str(own)))["deepspeed"][
            "zero_optimization"
        ]["stage"]
        == 2
    )
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "deepspeed" else real(n, *a))
    with pytest.raises(ConfigError, match="deepspeed is not installed"):
        _cfg(tiny_model_dir, distributed="deepspeed")


def test_torchrun_argv_single_and_multi_node():
    one = torchrun_argv("run.yaml", 2, master_port=1234)
    assert one == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        "--master_port=1234",
        "-m",
        "kit.cli",
        "train",
        "run.yaml",
    ]
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


def test_forge_train_multi_node_flags(tiny_cfg, monkeypatch, tmp_path):
    """`forge train --nproc 8 --nnodes 2 --rdzv-endpoint head:29500`: one torchrun line per node, as
    examples/slurm_multinode.sh runs it; the run directory is shared and must be given."""
    import subprocess

    from kit import cli

    seen = []
    monkeypatch.setattr(
        subprocess, "run", lambda argv, check=False: seen.append(argv) or subprocess.CompletedProcess(argv, 0)
    )
    path = tiny_cfg().save(tmp_path / "c.yaml")
    assert (
        cli.main(
            ["train", str(path), "--nproc", "8", "--nnodes", "2", "--rdzv-endpoint", "head:29500", "--node-rank", "1"]
        )
        == 0
    )
    argv = seen[0]
    assert argv[:4] == [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=8"]
    assert {"--nnodes=2", "--rdzv_backend=c10d", "--rdzv_endpoint=head:29500", "--node_rank=1"} <= set(argv)
    launch_yaml = tmp_path / "run" / "launch.yaml"
    assert argv[-4:] == ["-m", "kit.cli", "train", str(launch_yaml)] and launch_yaml.exists()
    no_dir = RunConfig.from_kwargs(model=str(tiny_cfg().model.name)).save(tmp_path / "d.yaml")
    assert cli.main(["train", str(no_dir), "--nproc", "8", "--nnodes", "2", "--rdzv-endpoint", "head:1"]) == 2
