"""Chat with transformers' ``generate``: streaming, the training chat template, the adapter applied."""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import torch

from ..config import GenerateConfig, RunConfig
from ..data.encode import encode_prompt
from ..models.registry import get_family

Messages = Union[str, list]


def stop_token_ids(tok, model_config=None) -> list[int]:
    """eos plus the family's end-of-turn tokens that exist in this vocabulary."""
    ids = set()
    if tok.eos_token_id is not None:
        ids.add(tok.eos_token_id)
    fam = get_family(getattr(model_config, "model_type", "") if model_config is not None else "")
    vocab = tok.get_vocab()
    for t in fam.end_of_turn:
        if t in vocab:
            ids.add(vocab[t])
    gen_eos = getattr(getattr(model_config, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    return sorted(ids)


def as_messages(messages: Messages, system: Optional[str] = None) -> list[dict]:
    msgs = [{"role": "user", "content": messages}] if isinstance(messages, str) else [dict(m) for m in messages]
    if system and not (msgs and msgs[0]["role"] == "system"):
        msgs = [{"role": "system", "content": system}] + msgs
    return msgs


class ChatModel:
    """A loaded model + tokenizer ready to answer chats."""

    def __init__(self, model, tokenizer, generate: Optional[GenerateConfig] = None):
        self.model = model
        self.tokenizer = tokenizer
        self.gen = generate or GenerateConfig()
        self.stop_ids = stop_token_ids(tokenizer, getattr(model, "config", None))

    @classmethod
    def load(cls, source: Any = None, **overrides: Any) -> "ChatModel":
        """From a Run, a run directory, a RunConfig/dict/YAML, or a model name/path."""
        from ..engine import Run, open_run
        from ..models import load_model

        if isinstance(source, ChatModel):
            return source
        if isinstance(source, Run):
            if source.model is not None and source.tokenizer is not None:
                return cls(source.model, source.tokenizer, source.config.generate)
            source = source.run_dir
        if isinstance(source, (str, os.PathLike)) and (Path(source) / "config.yaml").exists():
            run = open_run(source)
            cfg = run.config
            adapter = Path(source) / "adapter"
            full = Path(source) / "model"
            if full.exists():
                cfg = cfg.replace(model__name=str(full), quant__bits=None)
            elif adapter.exists():
                cfg = cfg.replace(model__adapter_path=str(adapter))
            cfg = cfg.replace(**overrides) if overrides else cfg
        elif isinstance(source, (str, os.PathLike)) and not str(source).endswith((".yaml", ".yml")):
            cfg = RunConfig.coerce(None, model=str(source), **overrides)
        else:
            cfg = RunConfig.coerce(source, **overrides)
        loaded = load_model(cfg, with_adapter=True)
        loaded.model.eval()
        return cls(loaded.model, loaded.tokenizer, cfg.generate)

    def _gen_kwargs(self, **over: Any) -> dict:
        g = self.gen
        temperature = over.pop("temperature", g.temperature)
        kw = dict(max_new_tokens=over.pop("max_new_tokens", g.max_new_tokens), eos_token_id=self.stop_ids,
                  pad_token_id=self.tokenizer.pad_token_id, repetition_penalty=over.pop("repetition_penalty", g.repetition_penalty))
        if temperature and temperature > 0:
            kw.update(do_sample=True, temperature=temperature, top_p=over.pop("top_p", g.top_p))
            top_k = over.pop("top_k", g.top_k)
            if top_k:
                kw["top_k"] = top_k
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        kw.update(over)
        return kw

    def _inputs(self, messages: Messages, system: Optional[str]) -> dict:
        msgs = as_messages(messages, system if system is not None else self.gen.system)
        ids = encode_prompt(self.tokenizer, msgs)
        device = next(self.model.parameters()).device
        t = torch.tensor([ids], device=device)
        return {"input_ids": t, "attention_mask": torch.ones_like(t)}

    def stream(self, messages: Messages, *, system: Optional[str] = None, **gen: Any) -> Iterator[str]:
        """Yield the answer piece by piece as tokens are generated."""
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
        kwargs = {**self._inputs(messages, system), **self._gen_kwargs(**gen), "streamer": streamer}
        err: list[BaseException] = []

        def work():
            try:
                with torch.inference_mode():
                    self.model.generate(**kwargs)
            except BaseException as e:  # surface generation errors in the caller's thread
                err.append(e)
                streamer.end()

        th = threading.Thread(target=work, daemon=True)
        th.start()
        for piece in streamer:
            if piece:
                yield piece
        th.join()
        if err:
            raise err[0]

    def generate(self, messages: Messages, *, system: Optional[str] = None, **gen: Any) -> str:
        inputs = self._inputs(messages, system)
        with torch.inference_mode():
            out = self.model.generate(**inputs, **self._gen_kwargs(**gen))
        return self.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()

    def generate_ids(self, messages: Messages, **gen: Any) -> list[int]:
        inputs = self._inputs(messages, None)
        with torch.inference_mode():
            out = self.model.generate(**inputs, **self._gen_kwargs(**gen))
        return out[0, inputs["input_ids"].shape[1]:].tolist()


_CACHE: dict = {}


def chat(model_or_run: Any = None, messages: Messages = "Hello!", *, stream: bool = False,
         system: Optional[str] = None, **gen: Any):
    """Answer ``messages`` with a model, a Run, a run directory or a config.

    ``stream=True`` returns an iterator of text pieces; otherwise the full answer string.
    Loaded models are cached per source so repeated calls are fast.
    """
    if isinstance(model_or_run, (str, os.PathLike, type(None))):
        key = str(model_or_run)
        if key not in _CACHE:
            _CACHE[key] = ChatModel.load(model_or_run)
        cm = _CACHE[key]
    else:
        cm = ChatModel.load(model_or_run)  # a Run or ChatModel already holds its model
    return cm.stream(messages, system=system, **gen) if stream else cm.generate(messages, system=system, **gen)
