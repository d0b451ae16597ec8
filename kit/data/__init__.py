"""Data: formats, the dataset registry, file readers, chat-template encoding with loss masks, packing, caching.

(The config-level ``preview`` lives in :mod:`kit.preview`, above this layer: it needs the stage's recipe
and the model's tokenizer.)
"""

from .collator import ForgeCollator, block_causal_mask
from .encode import IGNORE, TemplateError, encode_chat, encode_prompt, pack
from .formats import DataError, detect_format, normalise_rows
from .pipeline import build_rows, build_tokenized, load_rows, load_splits, validate_dataset
from .preview import preview_examples, render_example
from .registry import DatasetSpec, list_datasets, load_registry_file, read_file, register_dataset

__all__ = [
    "DataError",
    "TemplateError",
    "detect_format",
    "normalise_rows",
    "DatasetSpec",
    "list_datasets",
    "load_registry_file",
    "read_file",
    "register_dataset",
    "IGNORE",
    "encode_chat",
    "encode_prompt",
    "pack",
    "ForgeCollator",
    "block_causal_mask",
    "build_rows",
    "build_tokenized",
    "load_rows",
    "load_splits",
    "validate_dataset",
    "preview_examples",
    "render_example",
]
