"""The model's own tokenizer: pre-tokenizers in llama.cpp's names and in Hugging Face terms.

A GGUF names its pre-tokenizer (``tokenizer.ggml.pre``, e.g. ``"smollm"``) instead of spelling
out the regexes, and llama.cpp splits text with its own copy of each named rule
(``llama-vocab.cpp``). transformers' GGUF reader ignores that name and rebuilds every byte-level
BPE tokenizer with a plain ByteLevel pre-tokenizer, so a tokenizer read from a GGUF can split
text differently from the model it came from (SmolLM2's ``smollm`` rule splits every digit on
its own first). This module is the one place that knows the correspondence, in both directions:

* :func:`apply_gguf_tokenizer_facts` puts a GGUF's pre-tokenizer, token types and BOS/EOS/space
  flags back on a transformers tokenizer (used when the embedded default is converted, through
  :func:`upgrade_cached_tokenizer`);
* :func:`llama_cpp_pre_name` tells the GGUF writer which ``tokenizer.ggml.pre`` a tokenizer needs,
  from how its pre-tokenizer actually splits :data:`CHECK_TEXT` (not from the vocabulary, so it
  holds for any vocabulary with that rule).

Each entry of :data:`PRE_TOKENIZERS` is checked token for token against llama.cpp itself in
``tests/test_llamacpp.py``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

log = logging.getLogger(__name__)

# Bump when what upgrade_cached_tokenizer writes changes: caches stamped with an older version
# are rewritten on their next use (the weights stay; only the tokenizer files are re-saved).
TOKENIZER_FIX_VERSION = 1
STAMP = "FORGE_TOKENIZER"

# What the pre-tokenizers disagree on: contractions in both cases, digit runs of every length,
# punctuation before letters, whitespace runs of each kind, non-Latin scripts, emoji.
CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n# Title\n\n## 1. Intro\r\n"
    "3 33 333 3333 33333 3.14 1,000,000 v2.0 x=-12e3 ٣٤ ²\n"
    "I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like tea? We'Ve a'lL"
    " don't won't it's (the country, not the state)? Don't explain - I'm in a hurry.\n"
    "def f(x):\n    return {'a': [1, 2]}  # ok!!! ... ?? -- == ``` \"\"\" ''' <|im_end|>\n"
    "我想在apple工作1314151天～ нещо на Български Ελληνικά café naïve 🚀 😶\u200d🌫️ ✅ 🦙🦙 "
)

# llama.cpp `tokenizer.ggml.pre` name -> how to build the same split rule with `tokenizers`.
# Qwen2's rule is the one in Qwen2's tokenizer.json (llama.cpp's adapted copy spells the
# case-insensitive contractions out); it isolates single digits and lets one non-letter lead a word.
_QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _byte_level(add_prefix_space: bool, use_regex: bool = True):
    from tokenizers import pre_tokenizers as pt

    return pt.ByteLevel(add_prefix_space=add_prefix_space, use_regex=use_regex)


def _gpt2(add_prefix_space: bool = False):
    return _byte_level(add_prefix_space)


def _smollm(add_prefix_space: bool = False):
    # llama.cpp: "\p{N}" first, then GPT-2's rule (StarCoder / SmolLM / SmolLM2 tokenizers)
    from tokenizers import pre_tokenizers as pt

    return pt.Sequence([pt.Digits(individual_digits=True), _byte_level(add_prefix_space)])


def _qwen2(add_prefix_space: bool = False):
    from tokenizers import Regex
    from tokenizers import pre_tokenizers as pt

    return pt.Sequence(
        [
            pt.Split(Regex(_QWEN2_REGEX), behavior="isolated", invert=False),
            _byte_level(add_prefix_space, use_regex=False),
        ]
    )


PRE_TOKENIZERS: dict[str, Callable[..., object]] = {"smollm": _smollm, "gpt-2": _gpt2, "qwen2": _qwen2}


class TokenizerMismatch(ValueError):
    """A tokenizer whose pre-tokenizer llama.cpp has no name for (its GGUF would split text differently)."""


def _splits(pre_tokenizer, text: str = CHECK_TEXT) -> list[str]:
    return [piece for piece, _ in pre_tokenizer.pre_tokenize_str(text)]


def _backend(tok):
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise TokenizerMismatch(f"tokenizer {getattr(tok, 'name_or_path', '?')!r} is not a fast (tokenizers) tokenizer")
    return backend


def adds_space_prefix(tok) -> bool:
    """Whether the tokenizer puts a space before the first word ('hello' encodes like ' hello')."""
    first = tok.convert_ids_to_tokens(tok.encode("hello", add_special_tokens=False))[0]
    return first.startswith(("Ġ", "▁"))


def llama_cpp_pre_name(tok) -> str:
    """The ``tokenizer.ggml.pre`` under which llama.cpp splits text exactly as ``tok`` does.

    Compares the tokenizer's pre-tokenization of :data:`CHECK_TEXT` with each rule of
    :data:`PRE_TOKENIZERS`: a behavioural fingerprint like llama.cpp's convert script uses, but
    of the split alone, so any vocabulary with a known rule is recognised.
    """
    pre = _backend(tok).pre_tokenizer
    if pre is None:
        raise TokenizerMismatch("the tokenizer has no pre-tokenizer; llama.cpp's BPE vocabularies need one")
    ours = _splits(pre)
    space = adds_space_prefix(tok)
    for name, make in PRE_TOKENIZERS.items():
        if _splits(make(space)) == ours:
            return name
    state = json.loads(_backend(tok).to_str()).get("pre_tokenizer")
    raise TokenizerMismatch(
        f"the pre-tokenizer of {getattr(tok, 'name_or_path', '?')!r} ({json.dumps(state)[:300]}) splits text like none "
        f"of the llama.cpp rules known here ({', '.join(PRE_TOKENIZERS)}); a GGUF of it would tokenize differently "
        "in llama.cpp. Convert it with llama.cpp's convert_hf_to_gguf.py, which knows more models by hash."
    )


def set_pre_tokenizer(tok, name: str, add_prefix_space: Optional[bool] = None):
    """Give ``tok`` llama.cpp's pre-tokenizer ``name`` (in place; returns ``tok``)."""
    if name not in PRE_TOKENIZERS:
        raise TokenizerMismatch(
            f"no Hugging Face equivalent known for llama.cpp pre-tokenizer {name!r}; known: {', '.join(PRE_TOKENIZERS)}"
        )
    space = adds_space_prefix(tok) if add_prefix_space is None else add_prefix_space
    _backend(tok).pre_tokenizer = PRE_TOKENIZERS[name](space)
    return tok


# ------------------------------------------------------------------ from a GGUF's metadata


@dataclass
class GGUFTokenizerFacts:
    """What a GGUF says about its tokenizer beyond the vocabulary (None: the key is absent)."""

    pre: Optional[str] = None
    model: Optional[str] = None
    control_ids: list[int] = field(default_factory=list)  # token_type CONTROL
    user_defined_ids: list[int] = field(default_factory=list)  # token_type USER_DEFINED
    add_bos: Optional[bool] = None
    add_eos: Optional[bool] = None
    add_space_prefix: Optional[bool] = None
    context_length: Optional[int] = None
    general: dict = field(default_factory=dict)  # general.* strings: name, license, ...


def read_gguf_tokenizer_facts(path: Union[str, os.PathLike]) -> GGUFTokenizerFacts:
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(path))

    def value(key: str):
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    arch = value("general.architecture")
    facts = GGUFTokenizerFacts(
        pre=value("tokenizer.ggml.pre"),
        model=value("tokenizer.ggml.model"),
        add_bos=value("tokenizer.ggml.add_bos_token"),
        add_eos=value("tokenizer.ggml.add_eos_token"),
        add_space_prefix=value("tokenizer.ggml.add_space_prefix"),
        context_length=value(f"{arch}.context_length") if arch else None,
    )
    for key in reader.fields:
        if key.startswith("general.") and isinstance(v := value(key), str):
            facts.general[key[len("general.") :]] = v
    types = reader.fields.get("tokenizer.ggml.token_type")
    if types is not None:
        arr = np.concatenate([types.parts[i] for i in types.data])
        facts.control_ids = np.flatnonzero(arr == int(gguf.TokenType.CONTROL)).tolist()
        facts.user_defined_ids = np.flatnonzero(arr == int(gguf.TokenType.USER_DEFINED)).tolist()
    return facts


def apply_gguf_tokenizer_facts(tok, facts: GGUFTokenizerFacts):
    """Make a tokenizer that transformers rebuilt from a GGUF behave like the model's own (in place).

    The pre-tokenizer named by ``tokenizer.ggml.pre``, control tokens as special tokens and
    user-defined ones as added tokens, the BOS/EOS/space-prefix flags and the context length.
    """
    from tokenizers import AddedToken

    if facts.model not in (None, "gpt2"):
        return tok  # SentencePiece-style vocabularies carry no pre-tokenizer name to restore
    if facts.pre is not None:
        if facts.pre in PRE_TOKENIZERS:
            set_pre_tokenizer(tok, facts.pre, bool(facts.add_space_prefix))
        else:
            log.warning(
                "GGUF pre-tokenizer %r has no Hugging Face equivalent here (known: %s); keeping %s",
                facts.pre,
                ", ".join(PRE_TOKENIZERS),
                type(_backend(tok).pre_tokenizer).__name__,
            )
    backend = _backend(tok)
    added = tok.added_tokens_decoder
    wrong = [i for i in facts.control_ids if i not in added or not added[i].special]
    if wrong:
        backend.add_special_tokens(
            [AddedToken(tok.convert_ids_to_tokens(i), special=True, normalized=False) for i in wrong]
        )
    plain = [i for i in facts.user_defined_ids if i not in added]
    if plain:
        backend.add_tokens([AddedToken(tok.convert_ids_to_tokens(i), special=False, normalized=False) for i in plain])
    for flag, wanted in (("add_bos_token", facts.add_bos), ("add_eos_token", facts.add_eos)):
        if wanted is not None and hasattr(tok, flag):
            setattr(tok, flag, bool(wanted))  # transformers rebuilds the post-processor from these
    if facts.context_length:
        tok.model_max_length = int(facts.context_length)
    return tok


def upgrade_cached_tokenizer(
    model_dir: Union[str, os.PathLike], gguf_path: Union[str, os.PathLike, Callable[[], Path]]
) -> bool:
    """Re-save the tokenizer of a model converted from ``gguf_path`` as the model's own; once.

    A cheap stamp check on every use; the work (reading the GGUF's metadata, re-saving the
    tokenizer files) happens once per cache and :data:`TOKENIZER_FIX_VERSION`. Each file is
    replaced atomically and the stamp is written last, so concurrent users see either the old
    complete tokenizer or the new one. Returns whether it rewrote anything.
    """
    model_dir = Path(model_dir)
    stamp = model_dir / STAMP
    try:
        if json.loads(stamp.read_text()).get("version") == TOKENIZER_FIX_VERSION:
            return False
    except (OSError, ValueError, AttributeError):
        pass
    from transformers import AutoTokenizer

    src = gguf_path() if callable(gguf_path) else gguf_path
    if src is None:  # the GGUF's package is gone: keep the cached tokenizer as it is
        return False
    src = Path(src)
    facts = read_gguf_tokenizer_facts(src)
    tok = apply_gguf_tokenizer_facts(AutoTokenizer.from_pretrained(str(model_dir)), facts)
    tmp = Path(tempfile.mkdtemp(prefix=".tokenizer-", dir=str(model_dir)))
    try:
        for name in tok.save_pretrained(str(tmp)):
            p = Path(name)
            if p.is_file():
                os.replace(p, model_dir / p.name)
        info = {
            "version": TOKENIZER_FIX_VERSION,
            "source": str(src),
            "pre": facts.pre,
            "control_tokens": len(facts.control_ids),
            "add_bos": facts.add_bos,
            "add_eos": facts.add_eos,
            "add_space_prefix": facts.add_space_prefix,
            "gguf_general": facts.general,
        }
        (tmp / STAMP).write_text(json.dumps(info, indent=1) + "\n")
        os.replace(tmp / STAMP, stamp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("tokenizer of %s restored from %s (pre-tokenizer %s)", model_dir, src.name, facts.pre)
    return True
