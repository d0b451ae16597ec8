"""Pre-quantized checkpoints and the 8-bit optimizer."""
import json
import shutil

import pytest

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
