"""Ollama Modelfiles for every chat template we support, checked by rendering the Go TEMPLATE.

The templates: the embedded default's own (SmolLM2, which adds a default system prompt), the
registered ones (kit.data.templates: chatml, chatml_tools) and the layouts of the families the
registry knows end-of-turn tokens for (Llama 3 <|eot_id|>, Gemma <end_of_turn>, Phi-3 <|end|>),
written here as those models' templates are. Each Go TEMPLATE is rendered the way Ollama renders a
.System/.Prompt/.Response template (one exchange after another) and must give the Jinja text.
"""

from __future__ import annotations

import copy
import re

import pytest

from kit.data.templates import TEMPLATES
from kit.export import ExportError, chat_layout, modelfile_text

LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + "
    "m['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for m in messages %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + m['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
PHI3 = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
FAMILY = {
    "llama3": (LLAMA3, "<|eot_id|>", "<|begin_of_text|>"),
    "gemma": (GEMMA, "<end_of_turn>", "<bos>"),
    "phi3": (PHI3, "<|end|>", None),
}


def go_render(template: str, system: str | None, exchanges: list[tuple[str, str]]) -> str:
    """Ollama's rendering of a .System/.Prompt/.Response template: each exchange in turn, the
    system prompt with the first, the last response empty and the text cut after it."""
    parts = re.fullmatch(
        r"(?:\{\{ if \.System \}\}(.*?)\{\{ \.System \}\}(.*?)\{\{ end \}\})?"
        r"\{\{ if \.Prompt \}\}(.*?)\{\{ \.Prompt \}\}(.*?)\{\{ end \}\}(.*?)\{\{ \.Response \}\}(.*)",
        template,
        flags=re.S,
    )
    assert parts, template
    s0, s1, u0, u1, a0, a1 = (p or "" for p in parts.groups())
    out = ""
    for i, (prompt, response) in enumerate(exchanges):
        if i == 0 and system:
            out += s0 + system + s1
        out += u0 + prompt + u1 + a0 + response
        if i < len(exchanges) - 1:
            out += a1
    return out


def with_template(tok, template, *tokens):
    tok = copy.deepcopy(tok)
    if tokens:
        tok.add_special_tokens({"additional_special_tokens": list(tokens)})
    tok.chat_template = template
    return tok


def _check(tok, system):
    layout = chat_layout(tok)
    go = layout.go_template()
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "2+2?"},
    ]
    want = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    got = layout.preamble + go_render(go, system or layout.default_system, [("Hi", "Hello!"), ("2+2?", "")])
    assert got == want
    return layout


def test_default_model_template_with_its_default_system_prompt(default_tokenizer):
    layout = _check(default_tokenizer, None)
    _check(default_tokenizer, "Be brief.")
    assert layout.default_system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    mf = modelfile_text(default_tokenizer, None, "/models/x.gguf")
    assert 'PARAMETER stop "<|im_end|>"' in mf
    assert f'SYSTEM """{layout.default_system}"""' in mf  # so an Ollama chat starts like ours
    assert 'SYSTEM """Mine."""' in modelfile_text(default_tokenizer, None, "/models/x.gguf", system="Mine.")


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_registered_templates(default_tokenizer, name):
    tok = with_template(default_tokenizer, TEMPLATES[name])
    layout = _check(tok, None)
    _check(tok, "Be brief.")
    assert layout.default_system is None
    assert 'PARAMETER stop "<|im_end|>"' in modelfile_text(tok, None, "/m")


@pytest.mark.parametrize("family", sorted(FAMILY))
def test_family_templates(default_tokenizer, family):
    template, end, bos = FAMILY[family]
    tokens = [t for t in (end, bos, "<|start_header_id|>", "<|end_header_id|>", "<start_of_turn>") if t]
    tok = with_template(default_tokenizer, template, *tokens)
    if bos:  # these models' tokenizers add BOS themselves; the template writes it once more for HF
        from tokenizers import processors

        tok.bos_token = bos
        tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, tok.convert_tokens_to_ids(bos))]
        )
    layout = _check(tok, None if family == "gemma" else "Be brief.")
    assert layout.preamble == (bos or "")
    mf = modelfile_text(tok, None, "/m.gguf")
    assert f"PARAMETER stop {end!r}".replace("'", '"') in mf  # the token that ends an assistant turn
    if family == "gemma":
        assert layout.system is None and "SYSTEM" not in mf
        with pytest.raises(ExportError, match="no system turn"):
            modelfile_text(tok, None, "/m.gguf", system="Be brief.")


def test_untranslatable_template_relies_on_the_gguf(default_tokenizer):
    tok = with_template(
        default_tokenizer,
        "{% for m in messages %}{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}>>{% endif %}",
    )
    with pytest.raises(ExportError, match="does not translate"):
        modelfile_text(tok, None, "/models/dir")  # safetensors: Ollama has no template to read
    mf = modelfile_text(tok, None, "/models/x.gguf")
    assert "TEMPLATE" not in mf.replace("no TEMPLATE", "")
    assert "Ollama takes it from the chat template embedded in the GGUF (tokenizer.chat_template)" in mf
