"""The model's own tokenizer (kit.models.tokenizer): what the embedded default is converted with.

The token-for-token comparison with llama.cpp's tokenization of the original GGUF is in
tests/test_llamacpp.py (it needs llama-cpp-python); these run everywhere.
"""

from __future__ import annotations

import copy
import json
import shutil

import pytest

from kit.models import tokenizer as T


def test_default_tokenizer_is_the_models_own(default_tokenizer, default_model_dir):
    tok = default_tokenizer
    assert T.llama_cpp_pre_name(tok) == "smollm"  # the name the model's own GGUF gives
    # SmolLM2 splits every digit on its own first: a plain ByteLevel rule keeps "12" together
    assert tok.tokenize("\n\n1, 12, 2026") == ["ĊĊ", "1", ",", "Ġ", "1", "2", ",", "Ġ", "2", "0", "2", "6"]
    assert {i for i, a in tok.added_tokens_decoder.items() if a.special} == set(range(17))  # control tokens 0..16
    assert tok("hi")["input_ids"] == tok("hi", add_special_tokens=False)["input_ids"]  # no BOS, no EOS added
    assert not T.adds_space_prefix(tok) and tok.model_max_length == 8192
    stamp = json.loads((default_model_dir / T.STAMP).read_text())
    assert stamp["version"] == T.TOKENIZER_FIX_VERSION and stamp["pre"] == "smollm"
    assert stamp["gguf_general"]["license"] == "apache-2.0"


@pytest.mark.parametrize("name", sorted(T.PRE_TOKENIZERS))
def test_each_rule_is_recognised_by_its_splits(default_tokenizer, name):
    tok = T.set_pre_tokenizer(copy.deepcopy(default_tokenizer), name)
    assert T.llama_cpp_pre_name(tok) == name


def test_unknown_rule_is_refused(default_tokenizer):
    from tokenizers import pre_tokenizers

    tok = copy.deepcopy(default_tokenizer)
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(T.TokenizerMismatch, match="splits text like none of the llama.cpp rules"):
        T.llama_cpp_pre_name(tok)
    with pytest.raises(T.TokenizerMismatch, match="known: "):
        T.set_pre_tokenizer(tok, "deepseek-llm")


def _stale_copy(default_model_dir, dst):
    """The converted tokenizer as transformers' GGUF reader left it before the fix."""
    from transformers import AutoTokenizer

    dst.mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(default_model_dir / f, dst / f)
    (dst / "config.json").write_text((default_model_dir / "config.json").read_text())
    tok = AutoTokenizer.from_pretrained(str(dst))
    T.set_pre_tokenizer(tok, "gpt-2")  # the plain ByteLevel rule the reader rebuilds
    tok.save_pretrained(str(dst))
    return dst


def test_upgrade_rewrites_a_stale_cache_once(default_model_dir, tmp_path, monkeypatch):
    """Caches converted before the fix get the model's tokenizer on their next use, once per fix version."""
    from transformers import AutoTokenizer

    stale = _stale_copy(default_model_dir, tmp_path / "model")
    facts = T.GGUFTokenizerFacts(
        pre="smollm",
        model="gpt2",
        control_ids=list(range(17)),
        add_bos=False,
        add_space_prefix=False,
        context_length=8192,
        general={"license": "apache-2.0"},
    )
    reads = []
    monkeypatch.setattr(T, "read_gguf_tokenizer_facts", lambda p: reads.append(p) or facts)
    assert AutoTokenizer.from_pretrained(str(stale)).tokenize("\n\n1") == ["Ċ", "Ċ", "1"]  # split as never in training
    assert T.upgrade_cached_tokenizer(stale, lambda: tmp_path / "model.gguf") is True
    assert AutoTokenizer.from_pretrained(str(stale)).tokenize("\n\n1") == ["ĊĊ", "1"]
    assert T.upgrade_cached_tokenizer(stale, lambda: pytest.fail("a current cache must not read the GGUF")) is False
    assert len(reads) == 1 and json.loads((stale / T.STAMP).read_text())["version"] == T.TOKENIZER_FIX_VERSION
    monkeypatch.setattr(T, "TOKENIZER_FIX_VERSION", T.TOKENIZER_FIX_VERSION + 1)  # a later fix: rewritten again
    assert T.upgrade_cached_tokenizer(stale, tmp_path / "model.gguf") is True and len(reads) == 2
    # the package gone: the cache keeps what it has
    (stale / T.STAMP).unlink()
    assert T.upgrade_cached_tokenizer(stale, lambda: None) is False


def test_apply_facts_marks_control_tokens_and_flags(default_tokenizer):
    tok = copy.deepcopy(default_tokenizer)
    from tokenizers import AddedToken

    tok.backend_tokenizer.add_tokens([AddedToken("<repo_name>", special=False, normalized=False)])
    tok.backend_tokenizer.pre_tokenizer = T.PRE_TOKENIZERS["gpt-2"](False)
    facts = T.GGUFTokenizerFacts(
        pre="smollm",
        model="gpt2",
        control_ids=list(range(17)),
        add_bos=True,
        add_eos=False,
        add_space_prefix=False,
        context_length=4096,
    )
    T.apply_gguf_tokenizer_facts(tok, facts)
    assert T.llama_cpp_pre_name(tok) == "smollm" and tok.added_tokens_decoder[3].special
    assert tok("hi")["input_ids"][0] == tok.bos_token_id and tok.model_max_length == 4096
    # a SentencePiece-style GGUF ("llama" vocabulary) names no split rule: nothing to restore
    before = tok.backend_tokenizer.to_str()
    T.apply_gguf_tokenizer_facts(tok, T.GGUFTokenizerFacts(pre="default", model="llama"))
    assert tok.backend_tokenizer.to_str() == before
