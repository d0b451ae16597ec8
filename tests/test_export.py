"""Export: merged weights reproduce the adapter model, the Ollama Modelfile, dry-run push, CLI."""
from __future__ import annotations

import pytest
import torch

import kit
from kit.cli import main
from kit.export import ExportError, chat_template_to_go, export
from kit.models import load_model


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_model_dir):
    out = tmp_path_factory.mktemp("export-run") / "run"
    run = kit.train(model=str(tiny_model_dir), dataset="demo_sft", output_dir=str(out), max_steps=2, batch_size=2,
                    cutoff_len=64, max_samples=8, save_steps=0, learning_rate=5e-3, lora_rank=4, num_threads=2,
                    generate__system="You are terse.")
    assert run.status == "finished", run.traceback
    return run


def _greedy(model, tok):
    ids = tok.apply_chat_template([{"role": "user", "content": "Say hi"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                             min_new_tokens=8, pad_token_id=tok.pad_token_id)
    return gen[0, ids.shape[1]:].tolist(), logits


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


def test_non_chatml_template_is_refused(default_tokenizer):
    import copy
    tok = copy.deepcopy(default_tokenizer)
    assert "im_start" in chat_template_to_go(tok)
    tok.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(ExportError, match="not ChatML"):
        chat_template_to_go(tok)


def test_cli_no_merge_dry_run_push(trained_run, tmp_path, capsys, monkeypatch):
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder",
                        lambda *a, **k: pytest.fail("dry run must not upload"))
    out = tmp_path / "adapter-export"
    rc = main(["export", str(trained_run.run_dir), "--out", str(out), "--no-merge", "--push", "me/tiny",
               "--dry-run"])
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
    gtok = AutoTokenizer.from_pretrained(str(out), gguf_file=gfile.name)
    text = "<|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\n"
    assert gtok(text, add_special_tokens=False)["input_ids"] == tok(text, add_special_tokens=False)["input_ids"]
    ids_m, log_m = _greedy(merged, tok)
    ids_g, log_g = _greedy(back, tok)
    assert ids_m == ids_g
    tol = 2e-3 if kind == "f16" else 5e-2
    assert (log_m - log_g).abs().max().item() < tol * max(1.0, log_m.abs().max().item())
