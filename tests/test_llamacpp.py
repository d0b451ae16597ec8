"""Our exports checked in llama.cpp itself (llama-cpp-python): tokens, template, weights, quantization.

Skipped, with the reason, where llama_cpp does not import (``bash scripts/install_llamacpp.sh``
builds it; .ci/run does). What is checked:

* our tokenizer (the model's own, restored at conversion) splits text token for token like
  llama.cpp does with the ORIGINAL GGUF of the embedded default;
* every architecture we map (tiny random models, SmolLM2 vocabulary) loads without warnings and
  gives the same logits and greedy tokens as transformers;
* every GGUF type loads without warnings; a LoRA run on the real default model, merged and
  exported, has llama.cpp's prompt tokens and rendered chat template equal to ours, f16 greedy
  output equal to the merged model's, and quantized outputs close. The measure for "close": the
  top-1 (argmax) agreement of llama.cpp's next-token logits with the merged model's, teacher-forced
  over each prompt and the merged model's own greedy continuation (every position counts).
"""

from __future__ import annotations

import copy
import ctypes
from contextlib import contextmanager

import numpy as np
import pytest
import torch

try:
    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
except ImportError as e:  # not marker-gated: absent llama.cpp is a skip with its reason, everywhere
    pytest.skip(
        f"llama_cpp is not importable ({e}); build it with: bash scripts/install_llamacpp.sh", allow_module_level=True
    )

import kit
from kit.export import export
from kit.gguf import ARCHS, GGUF_TYPES, write_gguf

QUESTION = "What's the capital of France (the country, not the state)? Don't explain - I'm in a hurry."
PROMPTS = [
    [{"role": "user", "content": QUESTION}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "List 3 primes: 2, 3, ..."}],
    [
        {"role": "user", "content": "Write a Python one-liner that sums [1, 22, 333]."},
        {"role": "assistant", "content": "print(sum([1, 22, 333]))"},
        {"role": "user", "content": "And in C?"},
    ],
]
TEXTS = [
    QUESTION,
    "\n\n1, 1, 2, 3, 5, 8, 13, 21",
    "3.14159 1,000,000 2026-12-01 v2.0.1 x=-12e3 ١٢٣",
    "def f(x):\n    return {'a': [1, 2]}  # it's fine\n\n\n\tpass",
    "Hello,world!How's it going?? I'm OK -- you'll see...",
    "  leading and   inner   spaces \t tabs\r\nand CRLF\n \n",
    "我想在apple工作1314151天～ 你好，世界！",
    "emoji 🚀😶\u200d🌫️✅🦙🦙 flags 🇫🇷",
    "'s 'm 're 've 'll 'd 'S 'M He's I'm we're they've you'll she'd",
    "\n\n# Title\n\n## Section 2\n\n- item",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "naïve café résumé Ελληνικά русский ქართული",
    '```json\n{"k": [1, 2.5, null, true]}\n```',
]
N_GREEDY = 16


@contextmanager
def llama_log():
    """llama.cpp's log lines (level, text) while the block runs; its usual logger after."""
    lines: list[tuple[int, str]] = []

    @llama_cpp.llama_log_callback
    def collect(level, text, user_data):
        lines.append((int(level), text.decode("utf-8", "replace")))

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        from llama_cpp import _logger

        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


# ggml_log_level of this llama.cpp: DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (continues the line before)
WARN, ERROR, CONT = 3, 4, 5


def warnings_of(lines: list[tuple[int, str]]) -> list[str]:
    """The WARN and ERROR lines (with their continuations): e.g. 'control-looking token ... was not control-type'."""
    out, last = [], None
    for level, text in lines:
        level = last if level == CONT else level
        if level in (WARN, ERROR):
            out.append(text)
        last = level
    return [t for t in out if t.strip()]


def load(path, *, vocab_only: bool = False, n_ctx: int = 256, logits_all: bool = False):
    """A Llama on ``path`` and the warnings llama.cpp logged while loading it."""
    with llama_log() as lines:
        llm = llama_cpp.Llama(
            model_path=str(path),
            vocab_only=vocab_only,
            n_ctx=n_ctx,
            n_threads=1,
            n_batch=256,
            logits_all=logits_all,
            verbose=False,
            seed=0,
        )
    return llm, warnings_of(lines)


def llama_prompt_tokens(llm, tok, msgs) -> tuple[str, list[int]]:
    """The prompt as llama.cpp builds it: the GGUF's own chat template, then llama.cpp's tokenizer."""
    meta = llm.metadata
    fmt = Jinja2ChatFormatter(
        template=meta["tokenizer.chat_template"],
        eos_token=tok.eos_token,
        bos_token=tok.bos_token,
        add_generation_prompt=True,
    )
    text = fmt(messages=msgs).prompt
    return text, llm.tokenize(
        text.encode("utf-8"), add_bos=meta.get("tokenizer.ggml.add_bos_token") == "true", special=True
    )


def chat_ids(tok, msgs) -> list[int]:
    """Our prompt tokens for a chat (the tokenizer's template, tokenized as training and chat do)."""
    return list(tok.apply_chat_template(msgs, add_generation_prompt=True, return_dict=True)["input_ids"])


def hf_greedy(model, ids: list[int], n: int) -> tuple[list[int], torch.Tensor]:
    """n argmax steps (no stopping at EOS) and the logits at every position of prompt + continuation."""
    new: list[int] = []
    with torch.no_grad():
        step = model(torch.tensor([ids]), use_cache=True)
        for _ in range(n):
            new.append(int(step.logits[0, -1].argmax()))
            step = model(torch.tensor([new[-1:]]), cache=step.cache, use_cache=True)
        logits = model(torch.tensor([list(ids) + new])).logits[0]
    return new, logits


def llama_greedy(llm, ids: list[int], n: int) -> list[int]:
    llm.reset()
    got = []
    for t in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
        got.append(int(t))
        if len(got) == n:
            break
    return got


def llama_logits(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)])


# ------------------------------------------------------------------ the model's own tokenizer


def test_our_tokenizer_equals_llamacpp_on_the_original_gguf(default_tokenizer):
    from kit.models.loading import _embedded_gguf
    from kit.models.registry import resolve_model_info

    original = _embedded_gguf(resolve_model_info("smollm2-135m-instruct"))
    llm, _ = load(original, vocab_only=True)
    assert llm.metadata["tokenizer.ggml.pre"] == "smollm"
    for text in TEXTS:
        ours = default_tokenizer.encode(text, add_special_tokens=False)
        assert llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) == ours, text
        assert llm.detokenize(ours, special=True).decode("utf-8") == default_tokenizer.decode(ours), text


# ------------------------------------------------------------------ every architecture we map


def _family_model(model_type: str, tok):
    from transformers import AutoConfig, AutoModelForCausalLM

    kw = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        rms_norm_eps=1e-5,
    )
    kw.update(
        {
            "gemma": dict(head_dim=16),
            "phi3": dict(original_max_position_embeddings=512),
            "mistral": dict(sliding_window=None),
            "llama": dict(tie_word_embeddings=True),
        }.get(model_type, {})
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **kw), dtype=torch.float32).eval()
    with torch.no_grad():  # weights large enough that greedy tokens are not near-ties of a random model
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif p.ndim == 2:
                p.normal_(0, 0.08)
    return model


# each family with a split rule llama.cpp knows: SmolLM2's, GPT-2's and Qwen2's (set on the SmolLM2 vocabulary)
_FAMILY_PRE = {
    "llama": "smollm",
    "mistral": "gpt-2",
    "qwen2": "qwen2",
    "qwen3": "qwen2",
    "gemma": "smollm",
    "phi3": "smollm",
}


@pytest.mark.parametrize("model_type", sorted(ARCHS))
def test_each_family_runs_in_llamacpp_like_transformers(default_tokenizer, tmp_path, model_type):
    from kit.models.tokenizer import set_pre_tokenizer

    tok = set_pre_tokenizer(copy.deepcopy(default_tokenizer), _FAMILY_PRE[model_type])
    model = _family_model(model_type, tok)
    path = write_gguf(model, tok, tmp_path / f"{model_type}.gguf", "f16")
    llm, warns = load(path)
    assert warns == [], warns
    assert llm.metadata["tokenizer.ggml.pre"] == _FAMILY_PRE[model_type]
    for text in TEXTS[:6]:
        assert llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) == tok.encode(
            text, add_special_tokens=False
        ), (model_type, text)
    ids = chat_ids(tok, PROMPTS[0])
    want, logits = hf_greedy(model, ids, 8)
    assert llama_greedy(llm, ids, 8) == want
    got = llama_logits(load(path, logits_all=True)[0], ids)
    ref = logits[: len(ids)].numpy()
    assert np.abs(got - ref).max() < 2e-2 * max(1.0, np.abs(ref).max())


# ------------------------------------------------------------------ every type, on the real default model


@pytest.fixture(scope="module")
def default_export(tmp_path_factory):
    """A one-step LoRA run on the default model, merged and exported as every type (gguf-py's and one k-quant)."""
    from kit.models import load_model

    root = tmp_path_factory.mktemp("llamacpp")
    run = kit.train(
        model="smollm2-135m-instruct",
        dataset="demo_sft",
        output_dir=str(root / "run"),
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
    res = export(run, root / "out", gguf=list(EXPORT_KINDS))
    merged = load_model(
        run.config.replace(
            model__name=res["out_dir"], model__adapter_path=None, model__dtype="float32", model__device="cpu"
        ),
        with_adapter=False,
    )
    model, tok = merged.model.eval(), merged.tokenizer
    # the merged model's greedy continuation and logits on the first prompts, computed once for every type
    refs = [(ids, *hf_greedy(model, ids, N_GREEDY)) for ids in (chat_ids(tok, m) for m in PROMPTS[:2])]
    return res, refs, tok


def test_default_export_prompt_tokens_and_template_equal_ours(default_export):
    res, _, tok = default_export
    llm, warns = load(res["gguf_files"]["f16"])  # the whole model: a vocab-only context warns about its 0 context
    assert warns == [], warns
    meta = llm.metadata
    assert meta["tokenizer.ggml.pre"] == "smollm" and meta["general.quantization_version"] == "2"
    assert meta["tokenizer.ggml.add_bos_token"] == "false" and meta["tokenizer.ggml.add_space_prefix"] == "false"
    assert [llm._model.token_get_attr(i) & llama_cpp.LLAMA_TOKEN_ATTR_CONTROL for i in range(18)] == [
        llama_cpp.LLAMA_TOKEN_ATTR_CONTROL
    ] * 17 + [0]
    for msgs in PROMPTS:
        text, ids = llama_prompt_tokens(llm, tok, msgs)
        assert text == tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        assert ids == chat_ids(tok, msgs)
    assert len(llama_prompt_tokens(llm, tok, PROMPTS[0])[1]) == 54  # the issue saw 59 with the old metadata


# the lowest top-1 agreement each type may show (1-step run, 2 prompts, 16 greedy tokens; every CI run writes
# its figures to test-artifacts/export-fidelity.json); the bounds leave room for other CPUs' float paths.
# f16 and bf16 must also reproduce the merged model's greedy tokens exactly. Measured here (118 positions):
# f16 1.0, bf16 1.0, q8_0 1.0, q4_1 0.99, q4_k_m 0.93, q5_0 0.88, q5_1 0.78, q4_0 0.69. q4_1 beats q5_*: the
# embedded default was dequantized from a Q4_1 GGUF, so its weights already sit on Q4_1's grid, and a 5-bit grid
# of other block bounds rounds them again.
EXPORT_KINDS = {
    "f16": 1.0,
    "bf16": 0.95,
    "q8_0": 0.9,
    "q5_1": 0.7,
    "q5_0": 0.7,
    "q4_1": 0.6,
    "q4_0": 0.6,
    "q4_k_m": 0.6,
}
FIDELITY: dict[str, dict] = {}


@pytest.mark.parametrize("kind,min_top1", list(EXPORT_KINDS.items()))
def test_default_export_runs_like_the_merged_model(default_export, kind, min_top1):
    """f16: the same greedy tokens; others: top-1 agreement of next-token logits at least ``min_top1``."""
    import json
    from pathlib import Path

    res, refs, tok = default_export
    path = Path(res["gguf_files"][kind])
    llm, warns = load(path, logits_all=True)
    assert warns == [], warns
    agree, total, same_greedy = 0, 0, 0
    # greedy decoding token by token only for the float types: the quantized ones are compared teacher-forced
    # (one batched pass), which also keeps this test off llama.cpp's one-token quantized kernels that crash
    # on AMX CPUs in native builds (see scripts/install_llamacpp.sh)
    float_type = kind in ("f16", "bf16")
    for ids, want, logits in refs:
        if float_type:
            greedy = llama_greedy(llm, ids, N_GREEDY)
            same_greedy += int(greedy == want)
            assert greedy == want, (kind, tok.decode(want))
        got = llama_logits(llm, ids + want)
        agree += int((got.argmax(-1) == logits.numpy().argmax(-1)).sum())
        total += len(ids + want)
    FIDELITY[kind] = {
        "bytes": path.stat().st_size,
        "top1_agreement": round(agree / total, 4),
        "greedy_equal_prompts": f"{same_greedy}/{len(refs)}" if float_type else None,
        "positions": total,
    }
    out = Path(__file__).resolve().parent.parent / "test-artifacts"
    out.mkdir(exist_ok=True)
    (out / "export-fidelity.json").write_text(json.dumps(FIDELITY, indent=1))
    assert agree / total >= min_top1, (kind, agree / total)


def test_every_type_loads_without_warnings(default_tokenizer, tmp_path):
    """f16 .. q5_1 written here and a k-quant through llama.cpp's own quantizer all load cleanly."""
    from kit.models.tokenizer import set_pre_tokenizer

    tok = set_pre_tokenizer(copy.deepcopy(default_tokenizer), "smollm")
    model = _family_model("llama", tok)
    for kind in list(GGUF_TYPES) + ["q4_k_m"]:
        path = write_gguf(model, tok, tmp_path / f"m-{kind}.gguf", kind)
        llm, warns = load(path)
        assert warns == [], (kind, warns)
        assert llm.metadata["general.file_type"] == str(int(getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind.upper()}")))
        assert len(llama_greedy(llm, tok.encode("Hello"), 2)) == 2


def test_the_warning_check_sees_llamacpp_warnings(default_tokenizer, tmp_path, monkeypatch):
    """The log capture above is what makes "loads without warnings" mean something: a GGUF without
    tokenizer.ggml.pre (what llama.cpp warns degrades generation) must show up in it."""
    import gguf

    monkeypatch.setattr(gguf.GGUFWriter, "add_tokenizer_pre", lambda self, pre: None)
    path = write_gguf(_family_model("llama", default_tokenizer), default_tokenizer, tmp_path / "nopre.gguf", "f16")
    _, warns = load(path, vocab_only=True)
    assert any("missing pre-tokenizer type" in w for w in warns), warns
