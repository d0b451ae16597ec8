"""Write a transformers model and its tokenizer as one GGUF file that llama.cpp runs as the model itself.

    write_gguf(model, tok, "out/model-q8_0.gguf", "q8_0")

Everything in the file comes from the model's own facts, through gguf-py's helpers:

* architecture and tensor names: :data:`ARCHS` says which llama.cpp architecture a
  ``config.model_type`` is and what its tensors need on the way (llama's Q/K row order for its
  rope, Gemma's ``1 + w`` norms); ``gguf.get_tensor_name_map`` names every tensor, and a tensor it
  cannot name stops the export (nothing is dropped silently);
* hyper-parameters: the ``GGUFWriter.add_*`` keys llama.cpp reads for that architecture, plus
  ``general.quantization_version``;
* tokenizer: byte-level BPE ("gpt2" in GGUF terms) with the pre-tokenizer llama.cpp must use
  (:func:`kit.models.tokenizer.llama_cpp_pre_name`: ``"smollm"`` for SmolLM2), token types (added
  special tokens are control tokens), merges, special ids and the chat template from
  ``gguf.SpecialVocab``, and the BOS/EOS/space-prefix flags as the tokenizer behaves;
* weights: :data:`GGUF_TYPES` are written here with ``gguf.quants.quantize``. In q4/q5 files the
  token embedding (also the output matrix when tied) stays q8_0, as in the model's own Q4_1
  GGUF. A matrix whose rows do not split into the type's blocks is written f16.

k-quants (q4_k_m, q5_k_m, q6_k, ...; :data:`LLAMA_QUANTIZE_TYPES`) are llama.cpp's own
quantizer's job, which gguf-py does not implement: :func:`llama_quantize` runs the
``llama-quantize`` program when it is on PATH, else the same quantizer through llama-cpp-python's
``llama_model_quantize`` when that is installed, and otherwise raises an error saying to install
one of them.

Mistral checkpoints are written as llama.cpp's "llama" architecture (as llama.cpp's own converter
does); its sliding window is not written, so a GGUF of a model with a window attends to the whole
context beyond it. Rope scaling other than none/linear and SentencePiece-style vocabularies stop
the export with an error rather than producing a file that runs differently.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from .errors import ForgeError


class GGUFExportError(ForgeError, ValueError):
    """The model or tokenizer cannot be written as a GGUF that llama.cpp would run the same way."""


# kind -> (tensor type of the matrices, general.file_type)
GGUF_TYPES: dict[str, tuple[str, str]] = {
    "f16": ("F16", "MOSTLY_F16"),
    "bf16": ("BF16", "MOSTLY_BF16"),
    "q8_0": ("Q8_0", "MOSTLY_Q8_0"),
    "q4_0": ("Q4_0", "MOSTLY_Q4_0"),
    "q4_1": ("Q4_1", "MOSTLY_Q4_1"),
    "q5_0": ("Q5_0", "MOSTLY_Q5_0"),
    "q5_1": ("Q5_1", "MOSTLY_Q5_1"),
}
# kind -> llama-quantize's type name (and llama.cpp's LLAMA_FTYPE_MOSTLY_<name>)
LLAMA_QUANTIZE_TYPES: dict[str, str] = {
    k: k.upper()
    for k in ("q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k", "iq4_nl", "iq4_xs")
}
ALL_TYPES = tuple(GGUF_TYPES) + tuple(LLAMA_QUANTIZE_TYPES)


@dataclass(frozen=True)
class ArchSpec:
    arch: str  # gguf.MODEL_ARCH member name
    permute_qk: bool = False  # llama.cpp's llama rope pairs rows (0,1),(2,3)..; HF's rotate_half pairs i, i+d/2
    norm_plus_one: bool = False  # Gemma's RMSNorm scales by (1 + w); llama.cpp's by the stored weight
    fused: bool = False  # Phi-3 keeps qkv_proj and gate_up_proj fused, as llama.cpp does


# config.model_type -> how llama.cpp runs it. The families kit.models.registry registers that
# llama.cpp runs with the weights as they are (no extra tensors, no scaling factors to invent).
ARCHS: dict[str, ArchSpec] = {
    "llama": ArchSpec("LLAMA", permute_qk=True),
    "mistral": ArchSpec("LLAMA", permute_qk=True),
    "qwen2": ArchSpec("QWEN2"),
    "qwen3": ArchSpec("QWEN3"),
    "gemma": ArchSpec("GEMMA", norm_plus_one=True),
    "phi3": ArchSpec("PHI3", fused=True),
}


def _permute_qk(w, n_head: int):
    # rows of each head from HF's half-split rope order into llama.cpp's interleaved order
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _rope(c) -> tuple[float, dict]:
    """(rope theta, rope scaling parameters) from either transformers config layout."""
    params = dict(getattr(c, "rope_parameters", None) or {})
    scaling = dict(getattr(c, "rope_scaling", None) or {})
    theta = params.get("rope_theta", getattr(c, "rope_theta", None)) or 10000.0
    merged = {**scaling, **params}
    return float(theta), merged


def _head_dim(c) -> int:
    return getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads


def _write_hparams(w, c, spec: ArchSpec, n_vocab: int) -> None:
    import gguf

    head_dim = _head_dim(c)
    w.add_context_length(int(c.max_position_embeddings))
    w.add_embedding_length(int(c.hidden_size))
    w.add_block_count(int(c.num_hidden_layers))
    w.add_feed_forward_length(int(c.intermediate_size))
    w.add_head_count(int(c.num_attention_heads))
    w.add_head_count_kv(int(getattr(c, "num_key_value_heads", None) or c.num_attention_heads))
    w.add_layer_norm_rms_eps(float(c.rms_norm_eps))
    if head_dim != c.hidden_size // c.num_attention_heads or spec.arch in ("GEMMA", "QWEN3"):
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    theta, rope = _rope(c)
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    rotary = float(rope.get("partial_rotary_factor", getattr(c, "partial_rotary_factor", 1.0)) or 1.0)
    w.add_rope_dimension_count(int(head_dim * rotary))
    w.add_rope_freq_base(theta)
    if rope_type == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(rope["factor"]))
    elif rope_type not in (None, "default"):
        raise GGUFExportError(
            f"rope scaling {rope_type!r} ({rope}) is not written by this exporter; convert with "
            "llama.cpp's convert_hf_to_gguf.py, which writes the extra tensors it needs"
        )
    if spec.arch == "PHI3":
        w.add_rope_scaling_orig_ctx_len(
            int(
                rope.get("original_max_position_embeddings")
                or getattr(c, "original_max_position_embeddings", None)
                or c.max_position_embeddings
            )
        )
        w.add_sliding_window(int(getattr(c, "sliding_window", None) or 0))
    w.add_vocab_size(n_vocab)


# ------------------------------------------------------------------ tokenizer


def _adds(tok, token_id: Optional[int], at: int) -> bool:
    """Whether encoding with special tokens puts ``token_id`` first (at=0) or last (at=-1)."""
    if token_id is None:
        return False
    plain = tok.encode("hello", add_special_tokens=False)
    full = tok.encode("hello", add_special_tokens=True)
    return len(full) > len(plain) and full[at] == token_id


def _write_tokenizer(w, tok, n_vocab: int) -> str:
    import gguf

    from .models.tokenizer import TokenizerMismatch, adds_space_prefix, llama_cpp_pre_name

    backend = getattr(tok, "backend_tokenizer", None)
    model_type = type(backend.model).__name__ if backend is not None else type(tok).__name__
    decoder = type(backend.decoder).__name__ if backend is not None and backend.decoder is not None else None
    if model_type != "BPE" or decoder != "ByteLevel":
        raise GGUFExportError(
            f"GGUF export writes byte-level BPE tokenizers (GPT-2 style), not {model_type} with a {decoder} decoder "
            "(SentencePiece-style vocabularies need scores and byte tokens); convert this model with llama.cpp's "
            "convert_hf_to_gguf.py"
        )
    try:
        pre = llama_cpp_pre_name(tok)
    except TokenizerMismatch as e:
        raise GGUFExportError(str(e)) from e
    vocab = tok.get_vocab()
    if max(vocab.values()) >= n_vocab:
        raise GGUFExportError(f"tokenizer has id {max(vocab.values())} but the model's vocab_size is {n_vocab}")
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [gguf.TokenType.UNUSED] * n_vocab
    for text, i in vocab.items():
        tokens[i], types[i] = text, gguf.TokenType.NORMAL
    for i, added in tok.added_tokens_decoder.items():
        types[i] = gguf.TokenType.CONTROL if added.special else gguf.TokenType.USER_DEFINED
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_add_space_prefix(adds_space_prefix(tok))
    with tempfile.TemporaryDirectory(prefix="forge-gguf-vocab-") as d:
        tok.save_pretrained(d)  # SpecialVocab reads the saved files: merges, special ids, chat template
        special = gguf.SpecialVocab(d, load_merges=True, n_vocab=n_vocab)
    if not special.merges:
        raise GGUFExportError("the tokenizer has no BPE merges to write")
    # the flags say what the tokenizer does, not what a config file happens to spell out
    special.add_special_token["bos"] = _adds(tok, tok.bos_token_id, 0)
    special.add_special_token["eos"] = _adds(tok, tok.eos_token_id, -1)
    special.add_to_gguf(w, quiet=True)
    return pre


# ------------------------------------------------------------------ tensors


def _tensors(model, spec: ArchSpec) -> Iterator[tuple[str, Any]]:
    """(GGUF name, float32 numpy array) for every weight, transformed as llama.cpp expects."""
    import gguf
    import torch

    c = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[spec.arch], c.num_hidden_layers)
    tied = bool(getattr(c, "tie_word_embeddings", False))
    n_head, n_kv = c.num_attention_heads, getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if tied and name == "lm_head.weight":
                continue  # llama.cpp reuses token_embd as the output matrix when output.weight is absent
            t = t.detach().to(torch.float32).cpu()
            if spec.permute_qk and name.endswith(("q_proj.weight", "q_proj.bias")):
                t = _permute_qk(t, n_head)
            elif spec.permute_qk and name.endswith(("k_proj.weight", "k_proj.bias")):
                t = _permute_qk(t, n_kv)
            if spec.norm_plus_one and name.endswith("norm.weight"):
                t = t + 1
            gname = names.get_name(name, try_suffixes=(".weight", ".bias"))
            if gname is None:
                raise GGUFExportError(
                    f"tensor {name} {tuple(t.shape)} has no llama.cpp name for architecture "
                    f"{spec.arch.lower()}; the exporter will not drop it silently"
                )
            yield gname, t.numpy()


def _stored_type(kind: str, gname: str, a) -> str:
    """The GGML type one tensor is stored in for a file of ``kind``."""
    import gguf

    if a.ndim == 1:
        return "F32"
    qtype = GGUF_TYPES[kind][0]
    if kind in ("q4_0", "q4_1", "q5_0", "q5_1") and gname in ("token_embd.weight", "output.weight"):
        qtype = "Q8_0"  # as the model's own Q4_1 GGUF keeps its embedding: q4 there costs the most quality
    block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]][0]
    return qtype if a.shape[-1] % block == 0 else "F16"


def write_gguf(model, tok, path, kind: str = "f16") -> Path:
    """Write ``model`` (a transformers causal LM) and ``tok`` as one GGUF file of ``kind``.

    ``kind``: one of :data:`GGUF_TYPES` (written here) or :data:`LLAMA_QUANTIZE_TYPES` (written
    f16 here, then quantized by llama.cpp's own quantizer, see :func:`llama_quantize`).
    """
    import gguf
    import numpy as np

    kind = kind.lower()
    path = Path(path)
    if kind in LLAMA_QUANTIZE_TYPES:
        with tempfile.TemporaryDirectory(prefix="forge-gguf-", dir=str(path.parent)) as d:
            f16 = write_gguf(model, tok, Path(d) / "model-f16.gguf", "f16")
            return llama_quantize(f16, path, kind)
    if kind not in GGUF_TYPES:
        raise GGUFExportError(f"gguf type must be one of {', '.join(ALL_TYPES)}, got {kind!r}")
    c = model.config
    model_type = getattr(c, "model_type", "")
    spec = ARCHS.get(model_type)
    if spec is None:
        raise GGUFExportError(
            f"GGUF export supports model types {', '.join(ARCHS)}, not {model_type!r}; convert it "
            "with llama.cpp's convert_hf_to_gguf.py"
        )
    n_vocab = int(c.vocab_size)
    w = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[spec.arch]])
    try:
        w.add_type(gguf.GGUFType.MODEL)
        w.add_name(Path(str(getattr(c, "name_or_path", "") or "model")).name)
        _write_hparams(w, c, spec, n_vocab)
        w.add_file_type(gguf.LlamaFileType[GGUF_TYPES[kind][1]])
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _write_tokenizer(w, tok, n_vocab)
        for gname, a in _tensors(model, spec):
            qtype = _stored_type(kind, gname, a)
            if qtype == "F32":
                w.add_tensor(gname, a.astype(np.float32))
            elif qtype == "F16":
                w.add_tensor(gname, a.astype(np.float16))
            else:
                t = gguf.GGMLQuantizationType[qtype]
                w.add_tensor(gname, gguf.quants.quantize(a, t), raw_dtype=t)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()
    return path


# ------------------------------------------------------------------ llama.cpp's quantizer


def llama_quantize(src, dst, kind: str) -> Path:
    """Quantize the GGUF ``src`` to the k-quant ``kind`` with llama.cpp's own quantizer.

    Uses the ``llama-quantize`` program when it is on PATH (run as an argv list), else
    llama-cpp-python's binding of the same function (``llama_cpp.llama_model_quantize``). With
    neither installed it raises, naming both.
    """
    kind = kind.lower()
    if kind not in LLAMA_QUANTIZE_TYPES:
        raise GGUFExportError(f"llama.cpp quantize types: {', '.join(LLAMA_QUANTIZE_TYPES)}; got {kind!r}")
    src, dst = Path(src), Path(dst)
    name = LLAMA_QUANTIZE_TYPES[kind]
    exe = shutil.which("llama-quantize")
    if exe:
        proc = subprocess.run([exe, str(src), str(dst), name], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise GGUFExportError(f"llama-quantize {name} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        return dst
    try:
        import llama_cpp
    except ImportError as e:
        raise GGUFExportError(
            f"gguf type {kind} is a llama.cpp k-quant that gguf-py cannot write: install llama.cpp's llama-quantize "
            f"(on PATH) or llama-cpp-python (bash scripts/install_llamacpp.sh), or pick one of {', '.join(GGUF_TYPES)}"
        ) from e
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name}")
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise GGUFExportError(f"llama.cpp's quantizer failed ({rc}) on {src} -> {name}")
    return dst
