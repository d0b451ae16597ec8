"""Safe by default (issue #13): safetensors only unless model.allow_pickle, no checkpoint code without
model.trust_remote_code, and a device that is not there -- each refused as a ConfigError naming the key."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from kit import ConfigError
from kit.models import load_model


def _pickled_copy(src, dst):
    """``src`` (a safetensors model folder) with its weights as a pickled pytorch_model.bin instead."""
    from safetensors.torch import load_file

    shutil.copytree(src, dst)
    state = load_file(str(dst / "model.safetensors"))
    (dst / "model.safetensors").unlink()
    torch.save(state, dst / "pytorch_model.bin")
    return dst


def test_a_pickled_model_loads_only_with_the_opt_in(tiny_cfg, tiny_model_dir, tmp_path):
    folder = _pickled_copy(tiny_model_dir, tmp_path / "pickled")
    with pytest.raises(ConfigError) as e:
        load_model(tiny_cfg(model=str(folder)), with_adapter=False)
    assert e.value.key == "model.allow_pickle" and "pytorch_model.bin" in str(e.value), str(e.value)
    loaded = load_model(tiny_cfg(model=str(folder), allow_pickle=True), with_adapter=False)
    ref = load_model(tiny_cfg(), with_adapter=False)
    emb = loaded.model.get_input_embeddings().weight
    torch.testing.assert_close(emb, ref.model.get_input_embeddings().weight)  # the same weights, from the pickle


def test_a_pickled_adapter_is_refused_without_the_opt_in(tiny_cfg, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = load_model(tiny_cfg(), with_adapter=False).model
    peft_model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"]))
    folder = tmp_path / "adapter"
    peft_model.save_pretrained(str(folder))  # safetensors, then turned into a pickle
    from safetensors.torch import load_file

    state = load_file(str(folder / "adapter_model.safetensors"))
    (folder / "adapter_model.safetensors").unlink()
    torch.save(state, folder / "adapter_model.bin")
    with pytest.raises(ConfigError) as e:
        load_model(tiny_cfg(adapter_path=str(folder)), with_adapter=True)
    assert e.value.key == "model.allow_pickle" and "adapter_model.bin" in str(e.value), str(e.value)
    loaded = load_model(tiny_cfg(adapter_path=str(folder), allow_pickle=True), with_adapter=True)
    assert any("lora_A" in n for n, _ in loaded.model.named_parameters())


def test_checkpoint_code_needs_trust_remote_code(tiny_cfg, tiny_model_dir, tmp_path):
    folder = tmp_path / "remote"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    # a model type transformers does not know, whose classes the checkpoint's own Python files define
    config["model_type"] = "forge-test-custom"
    config["auto_map"] = {"AutoConfig": "configuration_mine.MyConfig", "AutoModelForCausalLM": "modeling_mine.MyModel"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError) as e:
        load_model(tiny_cfg(model=str(folder)), with_adapter=False)
    assert e.value.key == "model.trust_remote_code" and "trust_remote_code=true" in str(e.value), str(e.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_device_cuda_without_a_gpu_names_the_key(tiny_cfg):
    with pytest.raises(ConfigError) as e:
        load_model(tiny_cfg(device="cuda"), with_adapter=False)
    assert e.value.key == "model.device" and "no CUDA GPU" in str(e.value)
