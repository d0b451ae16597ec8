"""Shared fixtures.

* ``forge_home``: one FORGE_HOME for the whole session (kept in ``.pytest_cache`` so the embedded
  model is converted once per machine, not once per test run), set before anything imports kit.
* ``tiny_model_dir``: a tiny random llama (2 layers, hidden 64) with the SmolLM2 tokenizer, for fast
  unit tests of real training code.
* ``default_tokenizer``: the embedded default model's tokenizer.
* ``tiny_cfg``: a RunConfig factory on the tiny model with a fresh run dir.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_HOME = Path(os.environ.get("FORGE_TEST_HOME", ROOT / ".pytest_cache" / "forge-home"))
os.environ.setdefault("FORGE_HOME", str(_HOME))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may reach a hub at test time
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


@pytest.fixture(scope="session")
def forge_home() -> Path:
    p = Path(os.environ["FORGE_HOME"])
    p.mkdir(parents=True, exist_ok=True)
    return p


@pytest.fixture(scope="session")
def default_model_dir(forge_home) -> Path:
    """The embedded default converted to safetensors (once)."""
    from kit.models import resolve_model_path

    path, _, _ = resolve_model_path("smollm2-135m-instruct")
    return Path(path)


@pytest.fixture(scope="session")
def default_tokenizer(default_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(default_model_dir))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, default_model_dir) -> Path:
    """A tiny random LlamaForCausalLM sharing the SmolLM2 tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(str(default_model_dir))
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    return out


@pytest.fixture
def tiny_cfg(tiny_model_dir, tmp_path):
    """``tiny_cfg(**overrides)`` -> RunConfig on the tiny model, writing into a fresh tmp run dir."""
    from kit import RunConfig

    def make(**kw):
        base = dict(
            model=str(tiny_model_dir),
            output_dir=str(tmp_path / "run"),
            max_steps=4,
            batch_size=2,
            cutoff_len=128,
            save_steps=2,
            learning_rate=1e-3,
            num_threads=2,
        )
        base.update(kw)
        return RunConfig.from_kwargs(**base)

    return make
