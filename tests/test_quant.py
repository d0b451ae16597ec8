"""Pre-quantized checkpoints and the memory-saving optimizers (8-bit AdamW, GaLore)."""

import json
import shutil
import sys

import pytest
import torch

import kit
from kit.models.loading import PREQUANT_LIBS, check_prequantized


@pytest.mark.parametrize("method,extra", [("gptq", "gptq"), ("awq", "awq")])
def test_prequantized_checkpoint_names_the_missing_extra(tiny_model_dir, tmp_path, method, extra):
    import importlib.util

    if importlib.util.find_spec(PREQUANT_LIBS[method][0]) is not None:
        pytest.skip(f"{method} library installed here: the missing-extra error cannot occur")
    d = tmp_path / method
    shutil.copytree(tiny_model_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": method, "bits": 4}
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ImportError, match=rf"forge-kit\[{extra}\]"):
        check_prequantized(str(d))
    assert check_prequantized(str(tiny_model_dir)) is None


def test_adamw_8bit_from_bitsandbytes_trains(tiny_cfg):
    run = kit.train(tiny_cfg(max_steps=3, save_steps=0, optim="adamw_8bit"))
    assert run.status == "finished"
    opt = run.trainer.optimizer
    inner = getattr(opt, "optimizer", opt)
    assert "bitsandbytes" in type(inner).__module__, type(inner)
    assert all(l == l for _, l in run.losses())


GALORE_TARGETS = {
    f"model.layers.{i}.{m}.weight"
    for i in range(2)
    for m in (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    )
}


def _galore_cfg(tiny_cfg, **kw):
    base = dict(
        finetuning_type="full",
        optim="galore_adamw",
        max_samples=8,
        cutoff_len=64,
        learning_rate=1e-2,
        lr_scheduler="constant",
    )
    base.update(kw)
    return tiny_cfg(**base)


def test_galore_full_finetuning_trains_and_resumes(tiny_cfg, tiny_model_dir, tmp_path):
    pytest.importorskip("galore_torch")
    from safetensors.torch import load_file

    from kit.engine import open_run

    before = load_file(str(tiny_model_dir / "model.safetensors"))
    run = kit.train(_galore_cfg(tiny_cfg, max_steps=2, save_steps=2, output_dir=str(tmp_path / "g")))
    assert run.status == "finished", run.traceback
    inner = getattr(run.trainer.optimizer, "optimizer", run.trainer.optimizer)
    assert type(inner).__module__.startswith("galore_torch"), type(inner)
    # exactly the attention/MLP matrices get the low-rank projection; the rest is plain AdamW
    names = {id(p): n for n, p in run.trainer.model.named_parameters()}
    low = [g for g in inner.param_groups if "rank" in g]
    assert len(low) == 1 and {names[id(p)] for p in low[0]["params"]} == GALORE_TARGETS
    assert all("projector" in inner.state[p] for p in low[0]["params"])
    losses = [l for _, l in run.losses()]
    assert len(losses) == 2 and losses[0] != losses[1]
    after = load_file(str(run.run_dir / "model" / "model.safetensors"))
    for n in GALORE_TARGETS:
        assert not torch.equal(before[n], after[n]), f"{n} did not change"

    # the model event's estimate counts what GaLore keeps: the projected moments and the projection
    inner_states = 0
    for st in inner.state.values():
        tensors = [v for v in st.values() if torch.is_tensor(v) and v.dim() > 0]  # the moments, not the step
        if "projector" in st:
            tensors.append(st["projector"].ortho_matrix)
        inner_states += sum(t.numel() * t.element_size() for t in tensors)
    est = next(e for e in run.events if e.kind == "model").get("memory_estimate")
    assert est["optimizer"] == inner_states, (est, inner_states)

    # a GaLore checkpoint holds projector objects; resuming it gives the same steps as one straight run
    resumed = open_run(run.run_dir).resume(max_steps=4)
    assert resumed.status == "finished", resumed.traceback
    straight = kit.train(_galore_cfg(tiny_cfg, max_steps=4, save_steps=0, output_dir=str(tmp_path / "s")))
    got, ref = dict(resumed.losses()), dict(straight.losses())
    assert got[4] == pytest.approx(ref[4], rel=1e-5) and got[3] == pytest.approx(ref[3], rel=1e-5)


def test_galore_missing_package_names_the_extra(tiny_cfg, monkeypatch):
    # None in sys.modules makes `import galore_torch` raise ImportError, as on a machine without it
    monkeypatch.setitem(sys.modules, "galore_torch", None)
    monkeypatch.setitem(sys.modules, "galore_torch.galore_projector", None)
    with pytest.raises(ImportError, match=r"pip install 'forge-kit\[galore\]'"):
        kit.train(_galore_cfg(tiny_cfg, max_steps=1, save_steps=0))


def test_galore_refuses_lora():
    from kit import ConfigError, RunConfig

    with pytest.raises(ConfigError, match=r"train.optim.*GaLore.*adapter.type=full"):
        RunConfig.from_kwargs(optim="galore_adamw")  # the default adapter is LoRA
    assert RunConfig.from_kwargs(optim="galore_adamw", finetuning_type="full").train.optim == "galore_adamw"
    RunConfig.from_kwargs(optim="galore_adamw", finetuning_type="freeze")
