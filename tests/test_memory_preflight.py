"""The pre-flight memory check (kit.memory.preflight): from the model's config.json, before weights load.

Cheap: the tiny random model of conftest, shapes on the meta device, and one 1-step run.
"""

from __future__ import annotations

import pytest

import kit
from kit import memory


def _totals(cfg, path):
    """The estimate as configured and with gradient checkpointing, on the meta model."""
    model = memory.meta_model(cfg, path)
    plain = memory.estimate(model, cfg, device="cpu", dtype_bytes=4).total
    gc = memory.estimate(model, cfg.replace(train__gradient_checkpointing=True), device="cpu", dtype_bytes=4).total
    return model, plain, gc


def test_preflight_fits_checkpoints_or_names_the_knobs(tiny_cfg, tiny_model_dir):
    cfg = tiny_cfg(cutoff_len=1024, batch_size=4)
    model, plain, gc = _totals(cfg, str(tiny_model_dir))
    assert memory.RUNTIME_BYTES < gc < plain  # checkpointing keeps fewer activations

    ok = memory.preflight(cfg, str(tiny_model_dir), "cpu", 4, available=plain + 1, model=model)
    assert ok.fits and not ok.enable_checkpointing and ok.message == ""

    tight = memory.preflight(cfg, str(tiny_model_dir), "cpu", 4, available=(plain + gc) // 2, model=model)
    assert tight.enable_checkpointing and tight.estimate.total == gc
    assert "gradient checkpointing is on" in tight.message and "GB" in tight.message

    with pytest.raises(memory.WillNotFit) as e:
        memory.preflight(cfg, str(tiny_model_dir), "cpu", 4, available=gc // 2, model=model)
    msg = str(e.value)
    assert "will not fit" in msg and "train.gradient_checkpointing=true" in msg and "quant.bits=4" in msg
    assert "train.micro_batch_tokens=" in msg and e.value.key == "train.gradient_checkpointing"
    assert "model.dtype=bfloat16" in msg  # fp32 weights: bf16 halves them
    assert isinstance(e.value, kit.ConfigError)  # front ends print it as one line (ForgeError)


def test_run_that_cannot_fit_fails_before_the_model_loads(tiny_cfg, monkeypatch):
    import kit.models

    def no_load(*a, **k):
        raise AssertionError("the model was loaded although the pre-flight said it cannot fit")

    monkeypatch.setattr(kit.models, "load_model", no_load)
    monkeypatch.setattr(memory, "available_bytes", lambda device: 1 << 20)  # 1 MiB free
    with pytest.raises(memory.WillNotFit, match="will not fit"):
        kit.train(tiny_cfg(max_steps=1, save_steps=0))


def test_run_that_fits_only_with_checkpointing_gets_it(tiny_cfg, tiny_model_dir, monkeypatch, capsys):
    cfg = tiny_cfg(max_steps=1, save_steps=0, cutoff_len=256, batch_size=2)
    _, plain, gc = _totals(cfg, str(tiny_model_dir))
    monkeypatch.setattr(memory, "available_bytes", lambda device: (plain + gc) // 2)
    run = kit.train(cfg)
    assert run.status == "finished", run.traceback
    assert run.config.train.gradient_checkpointing and run.dir.config().train.gradient_checkpointing
    assert "gradient checkpointing is on" in capsys.readouterr().err
    assert any(e.kind == "status" and e.get("status") == "gradient checkpointing on" for e in run.events)
