"""Inference: one chat-engine interface (:mod:`kit.infer.engine`) over several back ends.

* ``hf`` (default, :mod:`kit.infer.batch`): transformers, our batched decode loop;
* ``vllm`` (:mod:`kit.infer.vllm_engine`): a CUDA GPU with the vllm extra; a run's LoRA served as a LoRARequest;
* ``llamacpp`` (:mod:`kit.infer.llamacpp`): a GGUF file (``forge export --gguf``) through llama-cpp-python;
* a running OpenAI-compatible server (:mod:`kit.infer.remote`, ``ChatModel.connect(url)``).

:class:`ChatModel` is what the front ends use; ``forge serve`` (:mod:`kit.infer.server`) serves any
engine over an OpenAI-compatible HTTP API.
"""

from .backends import engine_for_config
from .engine import BACKENDS, ChatEngine, ChatRequest, Completion, Delta, GenerationSettings
from .hf import ChatModel, as_messages, chat, load_engine, stop_token_ids

__all__ = [
    "ChatModel",
    "chat",
    "stop_token_ids",
    "as_messages",
    "ChatEngine",
    "ChatRequest",
    "Completion",
    "Delta",
    "GenerationSettings",
    "load_engine",
    "engine_for_config",
    "BACKENDS",
]
