"""Inference back ends: transformers (streaming) and, where installed, vLLM."""
from .hf import ChatModel, chat, stop_token_ids

__all__ = ["ChatModel", "chat", "stop_token_ids"]
