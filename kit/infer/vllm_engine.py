"""``generate.backend: vllm``: vLLM's engine on a CUDA GPU (the ``vllm`` extra).

Written against vLLM's V1 API (``vllm.v1.engine.async_llm.AsyncLLM``, what ``AsyncLLMEngine`` is
in current versions): one engine serves both ``generate`` (all requests submitted at once, batched
by vLLM's scheduler) and ``stream`` (``RequestOutputKind.DELTA`` outputs). A run's LoRA adapter is
served as a ``vllm.lora.request.LoRARequest`` on the base model (``enable_lora``, no merge);
merged or fully trained models are served directly. Prompts are encoded with our tokenizer (the
chat template the run trained with, ``model.template`` included) and passed as token ids, so
vLLM sees exactly what the ``hf`` back end would.

vLLM runs its engine core in a separate process and its output handler on an asyncio loop; here
that loop lives in a daemon thread and the sync API bridges to it. Tests: ``-m vllm`` (need a GPU).
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import json
import queue
import threading
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from ..config import ConfigError
from ..rundir import find_adapter_dir
from .decoding import stop_token_ids
from .engine import FINISH_CANCELLED, FINISH_LENGTH, FINISH_STOP, ChatRequest, Completion, Delta, check_fits, prompt_ids

NEEDS = "the vllm back end needs a CUDA GPU and `pip install forge-kit[vllm]`"
_IDS = itertools.count(1)


def check_available() -> None:
    """ConfigError naming what is missing, before anything heavy is imported."""
    import torch

    missing = []
    if importlib.util.find_spec("vllm") is None:
        missing.append("vllm is not installed")
    if not torch.cuda.is_available():
        missing.append("no CUDA GPU is visible")
    if missing:
        raise ConfigError(
            f"{NEEDS} ({'; '.join(missing)}); on CPU use generate.backend=hf or llamacpp", "generate.backend"
        )


def _lora_rank(adapter_dir: Path) -> int:
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    return int(cfg.get("r", 16))


class VLLMEngine:
    """A ``ChatEngine`` over vLLM's ``AsyncLLM``; ``concurrency`` is how many requests a server lets
    run at once (vLLM batches them)."""

    backend = "vllm"
    concurrency = 64

    def __init__(
        self,
        model_path: str,
        tokenizer: Any,
        *,
        adapter: Optional[Path] = None,
        name: Optional[str] = None,
        dtype: str = "auto",
        trust_remote_code: bool = False,
        revision: Optional[str] = None,
        gpu_memory_utilization: float = 0.85,
        max_model_len: Optional[int] = None,
    ):
        check_available()
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.lora.request import LoRARequest

        self.tokenizer = tokenizer
        self.name = name or Path(model_path).name
        self.stop_ids = set(stop_token_ids(tokenizer))
        args = dict(
            model=model_path,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            revision=revision,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            enable_log_requests=False,
            disable_log_stats=True,
        )
        self.lora = None
        if adapter is not None:
            args.update(enable_lora=True, max_loras=1, max_lora_rank=max(8, _lora_rank(adapter)))
            # lora_name, lora_int_id (unique, > 0), lora_path
            self.lora = LoRARequest(self.name, 1, str(adapter))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="forge-vllm-loop", daemon=True)
        self._thread.start()
        self.engine = self._run(self._start(AsyncEngineArgs(**{k: v for k, v in args.items() if v is not None})))
        self.context_length = int(self.engine.model_config.max_model_len)

    async def _start(self, engine_args: Any) -> Any:
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(engine_args)

    def _run(self, coro) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    @classmethod
    def from_config(cls, cfg: Any) -> VLLMEngine:
        check_available()
        from ..models.loading import load_tokenizer, resolve_model_path

        path, gguf_file, _ = resolve_model_path(cfg.model.name, cfg.model.gguf_file)
        if gguf_file:
            raise ConfigError(
                "the vllm back end serves safetensors checkpoints; for a GGUF use generate.backend=llamacpp",
                "generate.backend",
            )
        adapter = find_adapter_dir(cfg.model.adapter_path) if cfg.model.adapter_path else None
        tok = load_tokenizer(cfg.model, path)
        return cls(
            path,
            tok,
            adapter=Path(adapter) if adapter else None,
            name=str(cfg.model.name),
            dtype=cfg.model.dtype,
            trust_remote_code=cfg.model.trust_remote_code,
            revision=cfg.model.revision,
        )

    # ---------------------------------------------------------------- requests

    def prepare(self, request: ChatRequest) -> list[int]:
        ids = prompt_ids(self.tokenizer, request)
        check_fits(request, self.context_length)
        return ids

    def _params(self, request: ChatRequest) -> Any:
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        s = request.settings
        n = len(request.prompt_ids or [])
        return SamplingParams(
            max_tokens=min(s.max_new_tokens, self.context_length - n),
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k if s.top_k > 0 else -1,
            repetition_penalty=s.repetition_penalty,
            seed=s.seed,
            stop=list(s.stop) or None,
            stop_token_ids=sorted(self.stop_ids),
            skip_special_tokens=True,
            output_kind=RequestOutputKind.DELTA,
        )

    async def _pump(self, request: ChatRequest, out: queue.Queue) -> None:
        """Run one request on the loop, putting (text, token_ids, finish) deltas into ``out``."""
        rid = f"forge-{next(_IDS)}"
        try:
            agen = self.engine.generate(
                {"prompt_token_ids": request.prompt_ids}, self._params(request), rid, lora_request=self.lora
            )
            async for o in agen:
                c = o.outputs[0]
                finish = None
                if o.finished:
                    finish = (
                        FINISH_LENGTH
                        if c.finish_reason == "length"
                        else (FINISH_CANCELLED if c.finish_reason == "abort" else FINISH_STOP)
                    )
                out.put((c.text, list(c.token_ids), finish))
        except asyncio.CancelledError:  # the reader went away: AsyncLLM.generate aborts the request
            raise
        except Exception as e:
            out.put(e)

    def stream(self, request: ChatRequest) -> Iterator[Delta]:
        self.prepare(request)
        out: queue.Queue = queue.Queue()
        fut = asyncio.run_coroutine_threadsafe(self._pump(request, out), self._loop)
        n_prompt, n_out = len(request.prompt_ids), 0
        try:
            while True:
                item = out.get()
                if isinstance(item, BaseException):
                    raise item
                text, ids, finish = item
                n_out += len(ids)
                yield Delta(
                    text=text, token_ids=ids, prompt_tokens=n_prompt, completion_tokens=n_out, finish_reason=finish
                )
                if finish is not None:
                    return
        finally:
            if not fut.done():
                fut.cancel()

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        for r in requests:
            self.prepare(r)

        async def one(r: ChatRequest) -> Completion:
            out: queue.Queue = queue.Queue()
            await self._pump(r, out)
            text, ids, finish = [], [], FINISH_STOP
            while not out.empty():
                item = out.get()
                if isinstance(item, BaseException):
                    raise item
                text.append(item[0])
                ids += item[1]
                finish = item[2] or finish
            return Completion(text="".join(text), token_ids=ids, prompt_tokens=len(r.prompt_ids), finish_reason=finish)

        async def all_of():
            return await asyncio.gather(*[one(r) for r in requests])

        return list(self._run(all_of()))

    def close(self) -> None:
        self.engine.shutdown()
        self._loop.call_soon_threadsafe(self._loop.stop)
