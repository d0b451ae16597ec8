"""``generate.backend: llamacpp``: llama.cpp (through ``llama-cpp-python``) on a GGUF file.

The fast way to chat on a CPU: llama.cpp's kernels read f16/q8_0 weights directly, where torch on a
CPU computes in fp32. Which GGUF:

* ``model.name`` is a ``.gguf`` file (or a folder with ``model.gguf_file``): that file;
* a run directory or a model: an f16 GGUF written on first use with :func:`kit.gguf.write_gguf`
  (the writer ``forge export --gguf`` uses) into ``FORGE_HOME/gguf/<model>-<fingerprint>/``; a
  LoRA run's adapter is merged first, and retrained weights get a new fingerprint, so a new file.

Prompts are encoded by our tokenizer (the chat template the run trained with) and given to llama.cpp
as token ids; answers are decoded, stopped and streamed by :mod:`kit.infer.decoding` like every other
back end, and the next token is chosen by :mod:`kit.infer.sampling`, so temperature, top-k/p,
repetition penalty and seeds mean what they mean on the ``hf`` back end. A request that starts
with the tokens of the previous one (the next turn of a chat) reuses their cached keys/values.
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


def default_threads() -> int:
    """torch's thread count (physical cores unless OMP_NUM_THREADS / torch.set_num_threads say
    otherwise), so both back ends use the same cores; more threads than free cores makes llama.cpp's
    busy-waiting threads fight each other."""
    import torch

    return max(1, torch.get_num_threads())


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
            raise ConfigError(
                "the llamacpp back end cannot apply an adapter to a GGUF; export the merged run "
                "(forge export RUN --gguf f16) and chat with that file",
                "generate.backend",
            )
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

    def __init__(
        self,
        gguf_path: str | os.PathLike,
        tokenizer: Any,
        *,
        name: Optional[str] = None,
        n_ctx: Optional[int] = None,
        n_threads: Optional[int] = None,
    ):
        try:
            from llama_cpp import Llama
        except ImportError as e:
            raise ConfigError(
                "the llamacpp back end needs llama-cpp-python: pip install llama-cpp-python "
                "(or scripts/install_llamacpp.sh)",
                "generate.backend",
            ) from e
        path = Path(gguf_path)
        threads = n_threads or default_threads()
        ctx = n_ctx or min(_gguf_context(path) or 4096, MAX_CONTEXT)
        self.llm = Llama(
            model_path=str(path), n_ctx=ctx, n_threads=threads, n_threads_batch=threads, n_gpu_layers=0, verbose=False
        )
        self.tokenizer = tokenizer
        self.name = name or path.stem
        self.path = path
        self.context_length = int(self.llm.n_ctx())
        self.stop_ids = set(stop_token_ids(tokenizer)) | {int(self.llm.token_eos())}
        self._n_vocab = int(self.llm.n_vocab())
        self._n_batch = int(self.llm.n_batch)
        self._cached: list[int] = []  # the tokens whose keys/values are in llama.cpp's cache, in order
        self._lock = threading.RLock()

    @classmethod
    def from_config(cls, cfg: Any) -> LlamaCppEngine:
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

    def reset(self) -> None:
        """Forget the cached prompt (the next request processes its whole prompt)."""
        with self._lock:
            self._cached = []

    # ---------------------------------------------------------------- the decode loop
    # llama.cpp's C API through llama-cpp-python's bindings: one llama_decode per token, the logits
    # read in place as a numpy array, the next token chosen by kit.infer.sampling (the same
    # settings mean the same thing as on the hf back end). Llama.generate would add its own sampler
    # chain and batch bookkeeping per token; this loop keeps the Python work per token to a few calls.

    def _decode(self, tokens: Sequence[int]) -> None:
        import llama_cpp as C

        for i in range(0, len(tokens), self._n_batch):
            chunk = tokens[i : i + self._n_batch]
            arr = (C.llama_token * len(chunk))(*chunk)
            rc = C.llama_decode(self.llm.ctx, C.llama_batch_get_one(arr, len(chunk)))
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")
            self._cached.extend(chunk)

    def _logits(self):
        import llama_cpp as C
        import numpy as np

        return np.ctypeslib.as_array(C.llama_get_logits_ith(self.llm.ctx, -1), shape=(self._n_vocab,))

    def _start(self, ids: list[int]) -> None:
        """Prefill ``ids``, reusing the cached prefix a previous request left (a chat's earlier turns)."""
        import llama_cpp as C

        keep = 0
        for a, b in zip(self._cached, ids):
            if a != b:
                break
            keep += 1
        keep = min(keep, len(ids) - 1)  # at least one token is decoded: its logits start the answer
        C.llama_memory_seq_rm(C.llama_get_memory(self.llm.ctx), 0, keep, -1)
        self._cached = self._cached[:keep]
        self._decode(ids[keep:])

    def stream(self, request: ChatRequest) -> Iterator[Delta]:
        import torch

        from .sampling import next_tokens, seeded_generator

        ids = self.prepare(request)
        s = request.settings
        max_new = min(s.max_new_tokens, self.context_length - len(ids))
        text = AnswerText(self.tokenizer, s.stop)
        plain = s.greedy and s.repetition_penalty == 1.0
        generator = seeded_generator(s)
        seen = torch.tensor(sorted(set(ids))) if s.repetition_penalty != 1.0 else None
        n = 0
        with self._lock:
            try:
                self._start(ids)
                while True:
                    logits = self._logits()
                    if plain:
                        tok = int(logits.argmax())
                    else:
                        tok = next_tokens(torch.from_numpy(logits.copy())[None], [s], [seen], [generator])[0]
                        if seen is not None:
                            seen = torch.cat([seen, torch.tensor([tok])])
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
                    self._decode([tok])
            except GeneratorExit:  # the reader closed the stream at a yield: the cache is consistent
                raise
            except BaseException:
                self._cached = []  # an interrupted decode leaves the cache in an unknown state
                raise

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        out = []
        for r in requests:
            pieces, ids, last = [], [], None
            for d in self.stream(r):
                pieces.append(d.text)
                ids += d.token_ids
                last = d
            out.append(
                Completion(
                    text="".join(pieces),
                    token_ids=ids,
                    prompt_tokens=len(r.prompt_ids or []),
                    finish_reason=last.finish_reason if last else FINISH_STOP,
                )
            )
        return out
