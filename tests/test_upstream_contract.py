"""The private members of TRL, transformers, peft and huggingface_hub that Forge Kit relies on.

Our speed layer overrides and reads library internals (no public API offers them). A new release may
rename or drop any of them; most of our uses degrade silently (``getattr(..., default)``,
``hasattr`` guards), so the breakage would surface as a wrong token count or a slow path in a
learner's notebook. Each test here names one member, where we use it, and fails loudly when it moves.
When one fails after an upgrade: adapt the code named in the test, then raise the pin in
constraints.txt and the bound in pyproject.toml.
"""

from __future__ import annotations

import inspect
import json
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def params(fn) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p != "self"]


# ------------------------------------------------------------------ TRL (kit/stages/sft.py)


@pytest.fixture(scope="module")
def sft_trainer(tiny_model_dir, tmp_path_factory):
    """A real ForgeSFTTrainer built by our recipe on the tiny model (no training step)."""
    from kit import RunConfig
    from kit.models import load_model
    from kit.stages.common import StageContext
    from kit.stages.sft import build_sft_trainer

    run_dir = tmp_path_factory.mktemp("contract-run")
    cfg = RunConfig.from_kwargs(
        model=str(tiny_model_dir),
        output_dir=str(run_dir),
        max_steps=1,
        batch_size=2,
        cutoff_len=64,
        max_samples=4,
        save_steps=0,
        adapter__type="full",
        num_threads=1,
    )
    loaded = load_model(cfg, with_adapter=False)
    ctx = StageContext(
        cfg=cfg,
        model=loaded.model,
        tokenizer=loaded.tokenizer,
        run_dir=run_dir,
        device=loaded.device,
        dtype=loaded.dtype,
        loaded=loaded,
    )
    return build_sft_trainer(ctx)


def test_trl_sft_metrics_dict(sft_trainer):
    """sft.py appends ``mean_token_accuracy`` and sets ``num_tokens`` in ``SFTTrainer._metrics[mode]``."""
    m = sft_trainer._metrics
    assert set(m) >= {"train", "eval"}
    assert isinstance(m["train"], defaultdict) and m["train"].default_factory is list


def test_trl_sft_total_train_tokens(sft_trainer):
    """sft.py keeps TRL's token counter ``SFTTrainer._total_train_tokens`` right for packed/padding-free batches."""
    assert sft_trainer._total_train_tokens == 0
    from trl import SFTTrainer

    assert "self._total_train_tokens" in inspect.getsource(SFTTrainer.compute_loss)


def test_trl_sft_overridden_methods():
    """sft.py overrides ``compute_loss`` and ``training_step`` and calls them through ``super()``."""
    from transformers import Trainer
    from trl import SFTTrainer

    assert params(SFTTrainer.compute_loss) == ["model", "inputs", "return_outputs", "num_items_in_batch"]
    assert params(Trainer.training_step)[:3] == ["model", "inputs", "num_items_in_batch"]


def test_trl_sft_loss_switches(sft_trainer):
    """sft.py takes its own loss path only when TRL would compute plain NLL: ``args.loss_type``,
    ``compute_loss_func`` and ``label_smoother`` must keep their meaning."""
    assert sft_trainer.args.loss_type == "nll"
    assert sft_trainer.compute_loss_func is None and sft_trainer.label_smoother is None


# ------------------------------------------------------------------ transformers Trainer (kit/stages/ppo.py)


def test_trainer_private_methods_ppo_overrides():
    """ppo.py overrides ``Trainer._save`` / ``_load_from_checkpoint`` (the value head) and calls
    ``_prepare_inputs`` and ``log(logs, start_time)``."""
    from transformers import Trainer

    assert params(Trainer._save) == ["output_dir", "state_dict"]
    assert params(Trainer._load_from_checkpoint) == ["resume_from_checkpoint", "model"]
    assert params(Trainer._prepare_inputs) == ["inputs"]
    assert params(Trainer.log) == ["logs", "start_time"]
    # the trainer still routes checkpoint saving and resuming through them
    assert "self._save(" in inspect.getsource(Trainer.save_model)
    assert "self._load_from_checkpoint(" in inspect.getsource(Trainer.train) + inspect.getsource(
        Trainer._inner_training_loop
    )


# ------------------------------------------------------------------ transformers attention (kit/models/attention.py)


def test_sdpa_attention_forward_signature_and_shape():
    """attention.py calls ``transformers.integrations.sdpa_attention.sdpa_attention_forward`` per
    example with ``is_causal=True`` and expects ``(out (B, L, H, D), weights)``."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    names = params(sdpa_attention_forward)
    assert names[:5] == ["module", "query", "key", "value", "attention_mask"]
    assert "dropout" in names and "scaling" in names and "is_causal" in names

    class M(torch.nn.Module):
        is_causal = True
        num_key_value_groups = 1

    q = torch.randn(1, 2, 5, 8)
    out, _ = sdpa_attention_forward(M(), q, q, q, None, dropout=0.0, scaling=None, is_causal=True)
    assert out.shape == (1, 5, 2, 8)


def test_config_attn_implementation_and_registries(tiny_model_dir):
    """attention.py reads ``config._attn_implementation``, registers ``forge_varlen`` with
    ``AttentionInterface`` / ``AttentionMaskInterface`` (+ ``masking_utils.sdpa_mask``) and switches
    with ``set_attn_implementation``."""
    from transformers import AttentionInterface, AutoModelForCausalLM
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    from kit.models.attention import NAME, register

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), attn_implementation="sdpa")
    assert model.config._attn_implementation == "sdpa"
    register()
    assert NAME in AttentionInterface._global_mapping and NAME in AttentionMaskInterface._global_mapping
    assert callable(sdpa_mask)
    model.set_attn_implementation(NAME)
    assert model.config._attn_implementation == NAME


def test_cu_seq_lens_reach_the_attention_function(tiny_model_dir):
    """Padding-free batches rely on transformers passing ``cu_seq_lens_q/k`` from the model's forward
    kwargs down to every attention call, and on ``logits_to_keep`` taking a tensor of positions (sft.py)."""
    from transformers import AttentionInterface, AutoModelForCausalLM

    from kit.models import attention

    seen = []

    def spy(module, query, key, value, attention_mask, **kw):
        seen.append(kw.get("cu_seq_lens_q"))
        return attention.varlen_sdpa_forward(module, query, key, value, attention_mask, **kw)

    AttentionInterface.register("forge_contract_spy", spy)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), attn_implementation="forge_contract_spy")
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    cu = torch.tensor([0, 2, 5], dtype=torch.int32)
    with torch.no_grad():
        out = model(
            input_ids=ids,
            position_ids=torch.tensor([[0, 1, 0, 1, 2]]),
            cu_seq_lens_q=cu,
            cu_seq_lens_k=cu,
            max_length_q=3,
            max_length_k=3,
            use_cache=False,
            logits_to_keep=torch.tensor([0, 3]),
        )
    assert len(seen) == model.config.num_hidden_layers and all(s is not None and torch.equal(s, cu) for s in seen)
    assert out.logits.shape[:2] == (1, 2)


# ------------------------------------------------------------------ cached availability checks (kit/runtime.py)


def test_cached_bitsandbytes_probes():
    """runtime.deferred_bitsandbytes clears the cached answers of these probes (``functools`` caches);
    its ``hasattr(fn, "cache_clear")`` guard would otherwise skip them silently."""
    import peft.import_utils as peft_imports
    import transformers.utils.import_utils as hf_imports

    for fn in (peft_imports.is_bnb_available, peft_imports.is_bnb_4bit_available, hf_imports.is_bitsandbytes_available):
        assert callable(getattr(fn, "cache_clear", None)), fn


# ------------------------------------------------------------------ GGUF conversion progress (kit/models/loading.py)


def test_gguf_loader_progress_is_a_module_global():
    """loading._conversion_progress swaps ``transformers.modeling_gguf_pytorch_utils.tqdm`` for our
    own progress line; the GGUF tensor loop must still call that module global."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    assert hasattr(gguf_utils, "tqdm")
    assert "tqdm(" in inspect.getsource(gguf_utils.load_gguf_checkpoint)


def test_conversion_progress_replaces_and_restores(capsys):
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    from kit.models.loading import _conversion_progress

    before = gguf_utils.tqdm
    bars = hf_logging.is_progress_bar_enabled()
    with _conversion_progress("tiny"):
        assert list(gguf_utils.tqdm(range(8), desc="x")) == list(range(8))
        assert not hf_logging.is_progress_bar_enabled()
    assert gguf_utils.tqdm is before and hf_logging.is_progress_bar_enabled() == bars
    out = capsys.readouterr()
    assert "converting the embedded model" in out.out and " 25% 50% 75% 100%, done in" in out.out
    assert out.err == ""


# ------------------------------------------------------------------ huggingface_hub (kit/hub.py)


def test_hub_default_ignore_patterns():
    """hub.py filters uploads with ``huggingface_hub.utils._paths.DEFAULT_IGNORE_PATTERNS``."""
    from huggingface_hub.utils._paths import DEFAULT_IGNORE_PATTERNS

    assert isinstance(DEFAULT_IGNORE_PATTERNS, list) and all(isinstance(p, str) for p in DEFAULT_IGNORE_PATTERNS)
    assert any(".git" in p for p in DEFAULT_IGNORE_PATTERNS)


# ------------------------------------------------------------------ ipywidgets 7 (kit/widgets/compat.py)


def test_ipywidgets7_titles_trait():
    """compat.set_titles writes ipywidgets 7's private ``_titles`` dict (one state message for all
    titles). Checked in the widgets-7 environment that scripts/make_widgets7_env.sh builds."""
    from widgets7_env import widgets7_python

    py = widgets7_python()
    code = (
        "import ipywidgets as W, json; t = W.Tab(children=[W.Label('a'), W.Label('b')]); "
        "t._titles = {'0': 'A', '1': 'B'}; "
        "print(json.dumps([W.__version__, t.has_trait('_titles'), t.get_title(0), t.get_title(1), "
        "t.get_state()['_titles']]))"
    )
    r = subprocess.run([py, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    version, has, a, b, state = json.loads(r.stdout.strip().splitlines()[-1])
    assert version.startswith("7.") and has and (a, b) == ("A", "B") and state == {"0": "A", "1": "B"}
