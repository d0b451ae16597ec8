"""Preview a config's training data: its first examples encoded as its stage trains them.

    from kit.preview import preview
    for item in preview("run.yaml", 2):
        print(item["rendered"])            # tokens, with the trained part in [[...]]

It sits above the data layer because it needs what the data layer must not import: the stage's
recipe (which kind of data the stage reads) and the model's tokenizer.
"""

from __future__ import annotations

from typing import Any

from .config import RunConfig
from .data.pipeline import load_splits
from .data.preview import preview_examples
from .models import load_tokenizer
from .stages import get_recipe


def preview(config: Any = None, n: int = 2, *, tokenizer=None, style: str = "text", **overrides) -> list[dict]:
    """Encode the first ``n`` training examples of ``config`` (a RunConfig, dict, YAML path or
    keyword overrides). Each item has ``input_ids``, ``labels``, ``n_tokens``, ``n_trained`` and
    ``rendered`` (trained spans in ``[[...]]``, or highlighted HTML with ``style="html"``)."""
    cfg = RunConfig.coerce(config, **overrides)
    tok = tokenizer or load_tokenizer(cfg.model)
    kind = get_recipe(cfg.stage.name).data_kind
    rows, _ = load_splits(cfg.replace(data__shuffle=False), kind)
    return preview_examples(rows[:n], tok, cfg, kind, style=style)
