"""Named chat templates for tokenizers that lack one (or to override one).

The tokenizer's own template is always preferred; these exist for base models without a
template, and for the Ollama Modelfile export that needs a Go-template rendering.
"""

from __future__ import annotations

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# ChatML with function calling in the Hermes / Qwen2.5 style: tools listed in the system turn,
# calls as <tool_call>{json}</tool_call>, results as <tool_response> in a user-side "tool" turn.
CHATML_TOOLS = (
    "{%- if tools %}{{- '<|im_start|>system\n' }}{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\n\n' }}"
    "{%- endif %}{{- '# Tools\n\nYou may call one or more functions. Available functions:\n<tools>' }}"
    "{%- for tool in tools %}{{- '\n' + (tool | tojson) }}{%- endfor %}"
    '{{- \'\n</tools>\n\nFor each call, return <tool_call>{"name": ..., "arguments": ...}</tool_call>.<|im_end|>\n\' }}'
    "{%- elif messages[0]['role'] == 'system' %}{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}"
    "{%- elif message['role'] == 'tool' %}{{- '<|im_start|>tool\n<tool_response>\n' + message['content'] + '\n</tool_response><|im_end|>\n' }}"
    "{%- else %}{{- '<|im_start|>' + message['role'] + '\n' + message['content'] }}"
    "{%- for call in message.get('tool_calls') or [] %}{%- set f = call['function'] if call['function'] is defined else call %}"
    "{{- '\n<tool_call>\n{\"name\": \"' + f['name'] + '\", \"arguments\": ' + (f['arguments'] if f['arguments'] is string else (f['arguments'] | tojson)) + '}\n</tool_call>' }}"
    "{%- endfor %}{{- '<|im_end|>\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)

TEMPLATES: dict[str, str] = {"chatml": CHATML, "chatml_tools": CHATML_TOOLS}


def renders_tools(template) -> bool:
    """Whether a chat template renders tool calls at all (many small models' templates drop them)."""
    if isinstance(template, dict):
        template = " ".join(str(v) for v in template.values())
    return isinstance(template, str) and "tool_calls" in template


def register_template(name: str, jinja: str) -> None:
    TEMPLATES[name] = jinja


def resolve_template(name_or_jinja: str) -> str:
    """A registered name, or a Jinja template string (recognised by '{%' or '{{')."""
    if name_or_jinja in TEMPLATES:
        return TEMPLATES[name_or_jinja]
    if "{%" in name_or_jinja or "{{" in name_or_jinja:
        return name_or_jinja
    raise ValueError(
        f"unknown chat template '{name_or_jinja}'; registered: {', '.join(TEMPLATES)} (or give a Jinja string)"
    )
