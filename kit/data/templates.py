"""Named chat templates for tokenizers that lack one (or to override one).

The tokenizer's own template is always preferred; these exist for base models without a
template, and for the Ollama Modelfile export that needs a Go-template rendering.
"""
from __future__ import annotations

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TEMPLATES: dict[str, str] = {"chatml": CHATML}


def register_template(name: str, jinja: str) -> None:
    TEMPLATES[name] = jinja


def resolve_template(name_or_jinja: str) -> str:
    """A registered name, or a Jinja template string (recognised by '{%' or '{{')."""
    if name_or_jinja in TEMPLATES:
        return TEMPLATES[name_or_jinja]
    if "{%" in name_or_jinja or "{{" in name_or_jinja:
        return name_or_jinja
    raise ValueError(f"unknown chat template '{name_or_jinja}'; registered: {', '.join(TEMPLATES)} (or give a Jinja string)")
