"""Data: formats, the dataset registry, chat-template encoding with loss masks, packing, caching."""
from .formats import DataError, detect_format, normalise_rows
from .registry import DatasetSpec, list_datasets, load_registry_file, read_file, register_dataset
from .encode import IGNORE, encode_chat, encode_prompt, pack
from .collator import ForgeCollator, block_causal_mask
from .pipeline import build_rows, build_tokenized, load_rows, load_splits
from .preview import preview, render_example

__all__ = ["DataError", "detect_format", "normalise_rows", "DatasetSpec", "list_datasets", "load_registry_file",
           "read_file", "register_dataset", "IGNORE", "encode_chat", "encode_prompt", "pack", "ForgeCollator",
           "block_causal_mask", "build_rows", "build_tokenized", "load_rows", "load_splits", "preview", "render_example"]
