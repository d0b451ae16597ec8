"""Model registry and loading (hub id, local path, GGUF, the embedded default)."""

from .loading import LoadedModel, load_model, load_tokenizer, pick_device, pick_dtype, resolve_model_path
from .registry import ModelFamily, ModelInfo, get_family, list_models, register_model, resolve_model_info

__all__ = [
    "ModelFamily",
    "ModelInfo",
    "get_family",
    "list_models",
    "register_model",
    "resolve_model_info",
    "load_model",
    "load_tokenizer",
    "resolve_model_path",
    "LoadedModel",
    "pick_device",
    "pick_dtype",
]
