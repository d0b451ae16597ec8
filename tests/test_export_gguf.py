"""GGUF writer (kit.gguf): every type gguf-py writes, every architecture we map, the tokenizer metadata.

These run without llama.cpp: the files are read back with gguf-py's reader (and transformers'
GGUF loader where it knows the architecture). A small byte-level BPE vocabulary trained here keeps
each file quick to write and read; tests/test_llamacpp.py runs the same writer on the SmolLM2
vocabulary inside llama.cpp itself.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kit.gguf import ARCHS, GGUF_TYPES, LLAMA_QUANTIZE_TYPES, GGUFExportError, _permute_qk, llama_quantize, write_gguf

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TEXTS = [
    "What's the capital of France? Paris, 1 2 3 45.",
    "def f(x):\n    return x + 1  # ok",
    "I'm here, you're there.",
    "我想在apple工作 café 🚀",
    "\n\n# Title\n\n- item 1\n- item 22",
] * 20


@pytest.fixture(scope="module")
def small_tok():
    """A 400-token byte-level BPE with SmolLM2's split rule, its special tokens and ChatML."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(
        TEXTS,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=t,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
    )
    tok.chat_template = CHATML
    return tok


def tiny(model_type: str, vocab: int, **kw):
    """A tiny random model of ``model_type`` (2 layers, hidden 64: rows split into 32-blocks)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    base = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    if model_type == "gemma":
        base["head_dim"] = 16
    if model_type == "phi3":
        base["original_max_position_embeddings"] = 256
    if model_type == "mistral":
        base["sliding_window"] = None
    base.update(kw)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **base), dtype=torch.float32)
    with torch.no_grad():  # random non-trivial norms, so Gemma's 1 + w is visible
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
    return model.eval()


def read(path):
    import gguf

    r = gguf.GGUFReader(str(path))
    kv = {
        k: f.contents()
        for k, f in r.fields.items()
        if not k.startswith("tokenizer.ggml.")
        or k.endswith(("pre", "model", "_id", "add_bos_token", "add_eos_token", "add_space_prefix", "chat_template"))
    }
    kv["token_type"] = r.fields["tokenizer.ggml.token_type"].contents()
    kv["n_merges"] = len(r.fields["tokenizer.ggml.merges"].data)
    return kv, {t.name: t for t in r.tensors}


def test_every_type_gguf_py_writes(small_tok, tmp_path):
    """f16 .. q5_1: tensor types, file type, quantization version, sizes in order, weights back within the type's error."""
    import gguf

    model = tiny("llama", len(small_tok), tie_word_embeddings=True)  # tied like SmolLM2
    sd = model.state_dict()
    sizes = {}
    for kind, (qtype, ftype) in GGUF_TYPES.items():
        path = write_gguf(model, small_tok, tmp_path / f"m-{kind}.gguf", kind)
        sizes[kind] = path.stat().st_size
        kv, tensors = read(path)
        assert kv["general.file_type"] == int(gguf.LlamaFileType[ftype]) and kv["general.quantization_version"] == 2
        assert "output.weight" not in tensors and len(tensors) == 1 + 1 + 2 * 9  # tied head: token_embd reused
        assert tensors["blk.0.attn_norm.weight"].tensor_type.name == "F32"
        assert tensors["blk.0.ffn_down.weight"].tensor_type.name == qtype
        # as the model's own Q4_1 GGUF: the embedding stays q8_0 in 4/5-bit files
        want_embd = "Q8_0" if kind.startswith(("q4", "q5")) else qtype
        assert tensors["token_embd.weight"].tensor_type.name == want_embd
        # every matrix comes back as the model's (q/k rows in llama.cpp's rope order) within the type's error
        tol = {"f16": 1e-3, "bf16": 8e-3, "q8_0": 1e-2, "q5_1": 4e-2, "q5_0": 5e-2, "q4_1": 8e-2, "q4_0": 1e-1}[kind]
        for hf, gg, n in (
            ("model.layers.1.self_attn.q_proj.weight", "blk.1.attn_q.weight", 4),
            ("model.layers.1.self_attn.k_proj.weight", "blk.1.attn_k.weight", 2),
            ("model.layers.0.mlp.up_proj.weight", "blk.0.ffn_up.weight", None),
        ):
            t = tensors[gg]
            back = gguf.quants.dequantize(t.data, t.tensor_type).reshape(sd[hf].shape)
            want = _permute_qk(sd[hf], n).numpy() if n else sd[hf].numpy()
            assert np.abs(back - want).max() <= tol * np.abs(want).max(), (kind, hf)
    assert sizes["f16"] == sizes["bf16"] > sizes["q8_0"] > sizes["q5_1"] > sizes["q5_0"] > sizes["q4_1"] > sizes["q4_0"]


def test_tokenizer_metadata_from_the_tokenizer(small_tok, tmp_path):
    model = tiny("llama", len(small_tok))
    kv, _ = read(write_gguf(model, small_tok, tmp_path / "m.gguf", "f16"))
    assert kv["tokenizer.ggml.model"] == "gpt2" and kv["tokenizer.ggml.pre"] == "smollm"
    assert kv["token_type"][:4] == [3, 3, 3, 3] and set(kv["token_type"][4:]) == {1}  # added specials are control
    assert kv["tokenizer.ggml.add_bos_token"] is False and kv["tokenizer.ggml.add_eos_token"] is False
    assert kv["tokenizer.ggml.add_space_prefix"] is False
    assert (
        kv["tokenizer.ggml.bos_token_id"],
        kv["tokenizer.ggml.eos_token_id"],
        kv["tokenizer.ggml.padding_token_id"],
        kv["tokenizer.ggml.unknown_token_id"],
    ) == (1, 2, 2, 0)
    merges = json.loads(small_tok.backend_tokenizer.to_str())["model"]["merges"]
    assert kv["tokenizer.chat_template"] == CHATML and kv["n_merges"] == len(merges) > 0

    # a tokenizer that adds BOS itself says so; one whose split rule llama.cpp has no name for is refused
    import copy

    from tokenizers import pre_tokenizers, processors

    bos = copy.deepcopy(small_tok)
    bos.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|im_start|> $A", special_tokens=[("<|im_start|>", 1)]
    )
    kv, _ = read(write_gguf(model, bos, tmp_path / "bos.gguf", "f16"))
    assert kv["tokenizer.ggml.add_bos_token"] is True
    odd = copy.deepcopy(small_tok)
    odd.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Punctuation(), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    with pytest.raises(GGUFExportError, match="splits text like none of the llama.cpp rules"):
        write_gguf(model, odd, tmp_path / "odd.gguf", "f16")


# transformers reads these architectures back from GGUF (Gemma 1 it does not; llama.cpp checks it)
_HF_READS = {"llama", "mistral", "qwen2", "qwen3", "phi3"}


@pytest.mark.parametrize("model_type", sorted(ARCHS))
def test_each_family_writes_and_reads_back(small_tok, tmp_path, model_type):
    import gguf

    model = tiny(model_type, len(small_tok))
    path = write_gguf(model, small_tok, tmp_path / f"{model_type}.gguf", "f16")
    kv, tensors = read(path)
    arch = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[ARCHS[model_type].arch]]
    assert kv["general.architecture"] == arch
    assert kv[f"{arch}.block_count"] == 2 and kv[f"{arch}.attention.head_count_kv"] == 2
    n_params = sum(
        p.numel()
        for n, p in model.state_dict().items()
        if not (model.config.tie_word_embeddings and n == "lm_head.weight")
    )
    assert sum(int(np.prod(t.shape)) for t in tensors.values()) == n_params  # every weight written, none twice
    if model_type == "gemma":  # llama.cpp's RMSNorm scales by the weight; Gemma's by 1 + weight
        w = model.state_dict()["model.layers.0.input_layernorm.weight"].numpy()
        np.testing.assert_allclose(tensors["blk.0.attn_norm.weight"].data, w + 1, rtol=1e-6)
    if model_type == "phi3":
        assert "blk.0.attn_qkv.weight" in tensors and f"{arch}.rope.scaling.original_context_length" in kv
    if model_type == "qwen2":
        assert "blk.0.attn_q.bias" in tensors
    if model_type == "qwen3":
        assert "blk.0.attn_q_norm.weight" in tensors
    if model_type not in _HF_READS:
        return
    from transformers import AutoModelForCausalLM

    back = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, dtype=torch.float32).eval()
    ids = torch.tensor([small_tok.encode("What's 12 + 30? I'm sure it's 42.")])
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, model(ids).logits, atol=2e-3, rtol=2e-3)


def test_refusals_say_why(small_tok, tmp_path, monkeypatch):
    with pytest.raises(GGUFExportError, match="model types .* not 'falcon'"):
        write_gguf(_Fake("falcon"), small_tok, tmp_path / "x.gguf", "f16")
    with pytest.raises(GGUFExportError, match="must be one of"):
        write_gguf(tiny("llama", len(small_tok)), small_tok, tmp_path / "x.gguf", "q3")
    with pytest.raises(GGUFExportError, match="rope scaling 'yarn'"):
        m = tiny(
            "llama",
            len(small_tok),
            rope_parameters={
                "rope_type": "yarn",
                "factor": 2.0,
                "rope_theta": 1e4,
                "original_max_position_embeddings": 128,
            },
        )
        write_gguf(m, small_tok, tmp_path / "x.gguf", "f16")
    # k-quants are llama.cpp's quantizer's job: without it, the error names what to install
    import builtins
    import shutil as _shutil

    real_import = builtins.__import__
    monkeypatch.setattr(_shutil, "which", lambda name: None)
    monkeypatch.setattr(
        builtins,
        "__import__",
        lambda name, *a, **k: (
            (_ for _ in ()).throw(ImportError(name)) if name == "llama_cpp" else real_import(name, *a, **k)
        ),
    )
    with pytest.raises(GGUFExportError, match="llama-quantize.*llama-cpp-python"):
        llama_quantize(tmp_path / "in.gguf", tmp_path / "out.gguf", "q4_k_m")
    assert set(LLAMA_QUANTIZE_TYPES).isdisjoint(GGUF_TYPES)


class _Fake:
    def __init__(self, model_type):
        self.config = type("C", (), {"model_type": model_type, "vocab_size": 400})()
