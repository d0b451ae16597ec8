"""Export: merged weights reproduce the adapter model, the Ollama Modelfile, dry-run push, CLI."""

from __future__ import annotations

import pytest
import torch

import kit
from kit.cli import main
from kit.config import ModelConfig
from kit.export import ExportError, chat_template_to_go, export
from kit.models import load_model
from kit.models.loading import load_tokenizer


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_model_dir):
    out = tmp_path_factory.mktemp("export-run") / "run"
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
        generate__system="You are terse.",
    )
    assert run.status == "finished", run.traceback
    return run


def _greedy(model, tok):
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "Say hi"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        gen = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=8,
            do_sample=False,
            min_new_tokens=8,
            pad_token_id=tok.pad_token_id,
        )
    return gen[0, ids.shape[1] :].tolist(), logits


def test_merge_matches_adapter_and_modelfile(trained_run, tmp_path):
    out = tmp_path / "merged"
    res = export(trained_run, out)
    assert res["merged"] and (out / "model.safetensors").exists() and (out / "tokenizer_config.json").exists()
    assert not (out / "adapter_config.json").exists()

    cfg = trained_run.config.replace(model__adapter_path=str(trained_run.run_dir / "adapter"))
    ad = load_model(cfg, with_adapter=True)
    assert hasattr(ad.model, "peft_config")
    merged = load_model(cfg.replace(model__name=str(out), model__adapter_path=None), with_adapter=False)
    assert not hasattr(merged.model, "peft_config")
    ids_a, log_a = _greedy(ad.model, ad.tokenizer)
    ids_m, log_m = _greedy(merged.model, merged.tokenizer)
    assert ids_a == ids_m and len(ids_a) == 8
    torch.testing.assert_close(log_m, log_a, atol=1e-4, rtol=1e-4)
    base = load_model(cfg, with_adapter=False)
    assert not torch.allclose(_greedy(base.model, base.tokenizer)[1], log_a, atol=1e-4)  # the merge carried the LoRA
    assert merged.tokenizer.chat_template == ad.tokenizer.chat_template

    mf = (out / "Modelfile").read_text()
    assert mf.startswith(f"FROM {out.resolve()}\n")
    assert "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>" in mf
    assert "<|im_start|>assistant\n{{ .Response }}<|im_end|>" in mf
    assert 'PARAMETER stop "<|im_end|>"' in mf
    assert 'SYSTEM """You are terse."""' in mf


def test_kit_export_is_the_function():
    import importlib

    # a lazy attribute once recursed here; and importing the submodule must not shadow the function
    assert kit.export is export and importlib.import_module("kit.export").export is export
    assert callable(kit.export)


def test_qlora_run_merges_into_full_precision_base(tiny_cfg, tmp_path):
    """A 4-bit base cannot take the LoRA delta exactly: export merges into an fp32 copy of the base."""
    import json

    from safetensors import safe_open

    run = kit.train(tiny_cfg(lora_rank=4, quant__bits=4, max_steps=2, max_samples=8, save_steps=0, learning_rate=5e-3))
    assert run.status == "finished", run.traceback
    out = tmp_path / "merged"
    assert export(run, out, modelfile=False)["merged"]
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}
    fp32_plus_adapter = load_model(run.config.replace(quant__bits=None, model__adapter_path=str(run.run_dir)))
    merged = load_model(run.config.replace(quant__bits=None, model__name=str(out)), with_adapter=False)
    assert not hasattr(merged.model, "peft_config")
    torch.testing.assert_close(
        _greedy(merged.model, merged.tokenizer)[1],
        _greedy(fp32_plus_adapter.model, fp32_plus_adapter.tokenizer)[1],
        atol=1e-4,
        rtol=1e-4,
    )


def test_non_chatml_template_is_refused(default_tokenizer):
    import copy

    tok = copy.deepcopy(default_tokenizer)
    assert "im_start" in chat_template_to_go(tok)
    tok.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(ExportError, match="not ChatML"):
        chat_template_to_go(tok)


def test_cli_no_merge_dry_run_push(trained_run, tmp_path, capsys, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", lambda *a, **k: pytest.fail("dry run must not upload"))
    out = tmp_path / "adapter-export"
    rc = main(["export", str(trained_run.run_dir), "--out", str(out), "--no-merge", "--push", "me/tiny", "--dry-run"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "me/tiny" in text and "adapter/adapter_model.safetensors" in text and "Modelfile" in text
    assert (out / "adapter" / "adapter_config.json").exists() and not (out / "model.safetensors").exists()
    mf = (out / "Modelfile").read_text()
    assert f"ADAPTER {(out / 'adapter').resolve()}" in mf

    with pytest.raises(ExportError, match="merge"):
        export(trained_run, tmp_path / "g", gguf="f16", merge=False)
    with pytest.raises(ExportError, match="q4"):
        export(trained_run, tmp_path / "g", gguf="q4")
    with pytest.raises(ExportError, match="token"):
        monkeypatch.delenv("HF_TOKEN", raising=False)
        export(trained_run, tmp_path / "p", push_to_hub="me/tiny", modelfile=False)


@pytest.mark.parametrize("kind", ["f16", "q8_0"])
def test_gguf_roundtrip_same_greedy_output(trained_run, tmp_path, kind):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "gg"
    res = main(["export", str(trained_run.run_dir), "--out", str(out), "--gguf", kind])
    assert res == 0
    gfile = out / f"gg-{kind}.gguf"
    assert gfile.exists()
    assert (out / "Modelfile").read_text().startswith(f"FROM {gfile.resolve()}\n")
    merged = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(out))
    back = AutoModelForCausalLM.from_pretrained(str(out), gguf_file=gfile.name, dtype=torch.float32)
    # kit's loader reads the tokenizer from the GGUF alone, not from the tokenizer files beside it
    gtok = load_tokenizer(ModelConfig(name=str(gfile)), str(out), gfile.name)
    assert gtok.name_or_path == str(gfile.resolve())
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi, café 😀"}]
    assert gtok.chat_template == tok.chat_template
    assert gtok.apply_chat_template(msgs, add_generation_prompt=True) == tok.apply_chat_template(
        msgs, add_generation_prompt=True
    )
    for attr in ("bos_token", "eos_token", "pad_token", "unk_token"):
        assert getattr(gtok, attr) == getattr(tok, attr), attr
    ids_m, log_m = _greedy(merged, tok)
    ids_g, log_g = _greedy(back, tok)
    assert ids_m == ids_g
    tol = 2e-3 if kind == "f16" else 5e-2
    assert (log_m - log_g).abs().max().item() < tol * max(1.0, log_m.abs().max().item())


QUESTION = "What is the capital of France?"


@pytest.mark.e2e
def test_gguf_default_model_answers_like_merged(tmp_path):
    """A LoRA run on the real default model, merged and written as q8_0 GGUF, answers the same through
    transformers' GGUF loader (kit's chat path; weights, config and tokenizer all from the GGUF) as the
    merged weights. f16 is covered on the tiny model: reading a GGUF back costs ~15 s here, mostly in
    the gguf reader's metadata parsing, so one kind keeps this test short."""
    from kit.infer.hf import ChatModel

    run = kit.train(
        model="smollm2-135m-instruct",
        dataset="demo_sft",
        output_dir=str(tmp_path / "run"),
        max_steps=1,
        batch_size=2,
        cutoff_len=64,
        max_samples=4,
        save_steps=0,
        learning_rate=1e-3,
        lora_rank=8,
        num_threads=2,
    )
    assert run.status == "finished", run.traceback
    res = export(run, tmp_path / "out", gguf="q8_0", modelfile=False)
    merged = ChatModel.load(res["out_dir"])
    want = merged.generate_ids(QUESTION, max_new_tokens=24)
    answer = merged.tokenizer.decode(want, skip_special_tokens=True)
    assert "Paris" in answer, answer

    back = ChatModel.load(res["gguf"])
    assert back.model.config.model_type == "llama" and not hasattr(back.model, "peft_config")
    assert back.tokenizer.chat_template == merged.tokenizer.chat_template
    got = back.generate_ids(QUESTION, max_new_tokens=24)
    assert got == want, (back.tokenizer.decode(got), answer)
    # weights come back where they were (q rows un-permuted from llama.cpp's rope layout) within q8_0 error
    name = "model.layers.0.self_attn.q_proj.weight"
    w_m, w_g = merged.model.state_dict()[name], back.model.state_dict()[name]
    assert (w_g - w_m).abs().max() < 0.01 * w_m.abs().max()
