"""``generate.backend: llamacpp``: llama.cpp (through ``llama-cpp-python``) on a GGUF file.

The fast way to chat on a CPU: llama.cpp's kernels read f16/q8_0 weights directly, where torch on a
CPU computes in fp32. Which GGUF:

* ``model.name`` is a ``.gguf`` file (or a folder with ``model.gguf_file``): that file;
* a run directory or a model: an f16 GGUF written on first use with :func:`kit.gguf.write_gguf`
  (the writer ``forge export --gguf`` uses) into ``FORGE_HOME/gguf/<model>-<fingerprint>/``; a
  LoRA run's adapter is merged first, and retrained weights get a new fingerprint, so a new file.

Prompts are encoded by our tokenizer (the chat template the run trained with) and given to llama.cpp
as token ids; answers are decoded, stopped and streamed by :mod:`kit.infer.decoding` like every other
back end. Sampling settings map onto llama.cpp's (min-p and the other llama.cpp-only filters off).
One difference: llama.cpp's repetition penalty looks at the last 64 tokens, transformers' at all.
Requests run one at a time (a llama.cpp context holds one sequence here).
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from ..config import ConfigError
from .decoding import AnswerText, stop_token_ids
from .engine import FINISH_LENGTH, FINISH_STOP, ChatRequest, Completion, Delta, check_fits, prompt_ids

MAX_CONTEXT = 16384  # the KV cache is allocated up front: cap it for long-context models


def physical_cores() -> int:
    try:
        import psutil
        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def _gguf_context(path: Path) -> Optional[int]:
    """The trained context length a GGUF declares (``<arch>.context_length``)."""
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(path))
        arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
        field = reader.fields.get(f"{arch}.context_length")
        return int(field.parts[-1][0]) if field is not None else None
    except Exception:  # unreadable metadata: let llama.cpp decide
        return None


def _cache_dir(cfg: Any) -> Path:
    """Where the GGUF of ``cfg``'s weights is kept: a folder per weights fingerprint (base model
    files + adapter files, with sizes and times), so retrained weights get a new file."""
    import hashlib

    from ..models.loading import resolve_model_path
    from ..paths import forge_home
    from ..rundir import fingerprint

    path, _, _ = resolve_model_path(str(cfg.model.name))
    parts = [fingerprint(path), fingerprint(cfg.model.adapter_path) if cfg.model.adapter_path else ()]
    key = hashlib.sha256(repr(parts).encode()).hexdigest()[:16]
    return forge_home() / "gguf" / f"{Path(str(cfg.model.name)).name}-{key}"


def write_f16(cfg: Any, folder: Path) -> Path:
    """Merge ``cfg``'s adapter (if any) into fp32 weights and write them as an f16 GGUF, with the
    tokenizer files beside it (the chat template the run trained with)."""
    from ..gguf import write_gguf
    from ..models import load_model

    print(f"llamacpp back end: writing an f16 GGUF of {cfg.model.name} into {folder} (once)", flush=True)
    loaded = load_model(cfg.replace(quant__bits=None, model__dtype="float32", model__device="cpu"), with_adapter=True)
    model = loaded.model.merge_and_unload() if hasattr(loaded.model, "merge_and_unload") else loaded.model
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "model-f16.gguf.tmp"
    write_gguf(model, loaded.tokenizer, tmp, "f16")
    loaded.tokenizer.save_pretrained(str(folder))
    return tmp.replace(folder / "model-f16.gguf")  # renamed when complete: a crash leaves no half file


def gguf_for(cfg: Any) -> Path:
    """The GGUF file that serves ``cfg`` (written as f16 when there is none yet, see the module doc)."""
    name = str(cfg.model.name)
    if name.endswith(".gguf") and Path(name).is_file():
        if cfg.model.adapter_path:
            raise ConfigError("the llamacpp back end cannot apply an adapter to a GGUF; export the merged run "
                              "(forge export RUN --gguf f16) and chat with that file", "generate.backend")
        return Path(name)
    if cfg.model.gguf_file and (Path(name) / cfg.model.gguf_file).is_file():
        return Path(name) / cfg.model.gguf_file
    folder = _cache_dir(cfg)
    found = folder / "model-f16.gguf"
    return found if found.is_file() else write_f16(cfg, folder)


class LlamaCppEngine:
    """A ``ChatEngine`` over a ``llama_cpp.Llama``."""

    backend = "llamacpp"
    concurrency = 1

    def __init__(self, gguf_path: str | os.PathLike, tokenizer: Any, *, name: Optional[str] = None,
                 n_ctx: Optional[int] = None, n_threads: Optional[int] = None):
        try:
            from llama_cpp import Llama
        except ImportError as e:
            raise ConfigError("the llamacpp back end needs llama-cpp-python: pip install llama-cpp-python "
                              "(or scripts/install_llamacpp.sh)", "generate.backend") from e
        path = Path(gguf_path)
        threads = n_threads or physical_cores()
        ctx = n_ctx or min(_gguf_context(path) or 4096, MAX_CONTEXT)
        self.llm = Llama(model_path=str(path), n_ctx=ctx, n_threads=threads, n_threads_batch=threads,
                         n_gpu_layers=0, verbose=False)
        self.tokenizer = tokenizer
        self.name = name or path.stem
        self.path = path
        self.context_length = int(self.llm.n_ctx())
        self.stop_ids = set(stop_token_ids(tokenizer)) | {int(self.llm.token_eos())}
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg: Any) -> "LlamaCppEngine":
        from ..models.loading import load_tokenizer, resolve_model_path

        path = gguf_for(cfg)
        # the tokenizer files the export saved next to the GGUF, else the GGUF's own vocabulary
        if (path.parent / "tokenizer_config.json").is_file():
            tok = load_tokenizer(cfg.model, str(path.parent))
        else:
            folder, gguf_file, _ = resolve_model_path(str(path))
            tok = load_tokenizer(cfg.model, folder, gguf_file)
        return cls(path, tok, name=str(cfg.model.name))

    def prepare(self, request: ChatRequest) -> list[int]:
        ids = prompt_ids(self.tokenizer, request)
        check_fits(request, self.context_length)
        return ids

    def stream(self, request: ChatRequest) -> Iterator[Delta]:
        ids = self.prepare(request)
        s = request.settings
        max_new = min(s.max_new_tokens, self.context_length - len(ids))
        text = AnswerText(self.tokenizer, s.stop)
        n = 0
        with self._lock:
            if s.seed is not None:
                self.llm.set_seed(int(s.seed))
            # temp 0 is llama.cpp's greedy sampler; top_k 0 and top_p 1 are "off" in both libraries
            tokens = self.llm.generate(ids, top_k=s.top_k, top_p=s.top_p, min_p=0.0, typical_p=1.0,
                                       temp=0.0 if s.greedy else s.temperature, repeat_penalty=s.repetition_penalty,
                                       reset=True)
            try:
                for tok in tokens:
                    n += 1
                    if tok in self.stop_ids:
                        yield Delta(text.finish(), [tok], len(ids), n, FINISH_STOP)
                        return
                    piece, stopped = text.push([tok])
                    finish = FINISH_STOP if stopped else (FINISH_LENGTH if n >= max_new else None)
                    if finish == FINISH_LENGTH:
                        piece += text.finish()
                    yield Delta(piece, [tok], len(ids), n, finish)
                    if finish is not None:
                        return
            finally:
                tokens.close()

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        out = []
        for r in requests:
            pieces, ids, last = [], [], None
            for d in self.stream(r):
                pieces.append(d.text)
                ids += d.token_ids
                last = d
            out.append(Completion(text="".join(pieces), token_ids=ids, prompt_tokens=len(r.prompt_ids or []),
                                  finish_reason=last.finish_reason if last else FINISH_STOP))
        return out
