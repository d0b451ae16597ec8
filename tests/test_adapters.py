"""Fine-tuning types on the tiny model: which parameters train, in which dtype, and what the
LoRA variants do at init (rsLoRA scaling, PiSSA, stacking), plus 4/8-bit loading and LoRA+."""

from __future__ import annotations

import math

import pytest
import torch

import kit
from kit.adapters import apply_adapter, build_optimizer
from kit.memory import param_counts
from kit.models import load_model

PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _adapted(cfg):
    loaded = load_model(cfg, with_adapter=False)
    torch.manual_seed(0)
    return apply_adapter(loaded.model, cfg), loaded


def _trainable(model):
    return [n for n, p in model.named_parameters() if p.requires_grad]


def _ids():
    return torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])


def _logits(model):
    model.eval()
    with torch.no_grad():
        return model(input_ids=_ids()).logits


def test_full_trains_everything(tiny_cfg):
    model, _ = _adapted(tiny_cfg(finetuning_type="full"))
    assert all(p.requires_grad and p.dtype == torch.float32 for p in model.parameters())
    t, total = param_counts(model)
    assert t == total > 0


def test_freeze_last_first_modules_extra(tiny_cfg):
    model, _ = _adapted(tiny_cfg(finetuning_type="freeze", freeze_trainable_layers=1))
    names = _trainable(model)
    assert names and all(".layers.1." in n for n in names)
    assert any(n.endswith("mlp.down_proj.weight") for n in names)

    model, _ = _adapted(tiny_cfg(finetuning_type="freeze", freeze_trainable_layers=-1))
    names = _trainable(model)
    assert names and all(".layers.0." in n for n in names)

    model, _ = _adapted(
        tiny_cfg(
            finetuning_type="freeze",
            freeze_trainable_layers=2,
            freeze_trainable_modules="mlp",
            freeze_extra_modules=["embed_tokens"],
        )
    )
    names = set(_trainable(model))
    assert "model.embed_tokens.weight" in names
    rest = names - {"model.embed_tokens.weight"}
    assert rest and all(".mlp." in n for n in rest)
    assert {n.split(".")[2] for n in rest} == {"0", "1"}

    with pytest.raises(ValueError, match="freeze_trainable_layers"):
        _adapted(tiny_cfg(finetuning_type="freeze", freeze_trainable_layers=5))


def test_lora_all_vs_named_targets(tiny_cfg):
    model, _ = _adapted(tiny_cfg(lora_rank=4))
    names = _trainable(model)
    assert names and all("lora_" in n for n in names)
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if p.requires_grad)
    hit = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in names}
    assert hit == set(PROJ)
    assert not any("lm_head" in n for n in names)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)

    model, _ = _adapted(tiny_cfg(lora_rank=4, lora_target="q_proj,v_proj"))
    hit = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in _trainable(model)}
    assert hit == {"q_proj", "v_proj"}

    with pytest.raises(ValueError, match="no_such_proj"):
        _adapted(tiny_cfg(lora_target="no_such_proj"))


def test_modules_to_save(tiny_cfg):
    model, _ = _adapted(tiny_cfg(lora_rank=4, lora_target="q_proj", modules_to_save=["lm_head"]))
    names = _trainable(model)
    assert any("modules_to_save" in n for n in names)
    assert any("lora_A" in n for n in names)
    inner = model.base_model.model
    head = inner.lm_head.modules_to_save["default"].weight
    assert head.requires_grad
    # the tiny model ties lm_head to embed_tokens: the trained copy must stay tied (one matrix)
    assert head is inner.model.embed_tokens.modules_to_save["default"].weight


def test_dora_and_rslora(tiny_cfg):
    model, _ = _adapted(tiny_cfg(lora_rank=4, lora_target="q_proj", use_dora=True))
    assert any("lora_magnitude_vector" in n for n in _trainable(model))

    model, _ = _adapted(tiny_cfg(lora_rank=4, lora_alpha=8, lora_target="q_proj", use_rslora=True))
    q = model.base_model.model.model.layers[0].self_attn.q_proj
    assert q.scaling["default"] == pytest.approx(8 / math.sqrt(4))
    model, _ = _adapted(tiny_cfg(lora_rank=4, lora_alpha=8, lora_target="q_proj"))
    assert model.base_model.model.model.layers[0].self_attn.q_proj.scaling["default"] == pytest.approx(2.0)


def test_pissa_init_keeps_output(tiny_cfg):
    cfg = tiny_cfg(lora_rank=4, init="pissa")
    base = load_model(cfg, with_adapter=False).model
    w0 = base.model.layers[0].self_attn.q_proj.weight.detach().clone()
    ref = _logits(base)
    model = apply_adapter(base, cfg)
    w1 = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight
    assert not torch.allclose(w0, w1)  # the principal components moved into A/B
    torch.testing.assert_close(_logits(model), ref, atol=1e-3, rtol=1e-3)


def test_stacking_starts_from_first_adapter(tiny_cfg, tmp_path):
    first = kit.train(
        tiny_cfg(lora_rank=4, max_steps=2, max_samples=8, save_steps=0, output_dir=str(tmp_path / "first"))
    )
    assert first.status == "finished"
    c1 = tiny_cfg(output_dir=str(tmp_path / "first"), model__adapter_path=str(tmp_path / "first"))
    ref = _logits(load_model(c1, with_adapter=True).model)
    plain = _logits(load_model(c1, with_adapter=False).model)
    assert not torch.allclose(ref, plain, atol=1e-5)  # the first adapter learned something
    model, _ = _adapted(
        tiny_cfg(lora_rank=4, resume_adapter=str(tmp_path / "first"), output_dir=str(tmp_path / "second"))
    )
    assert _trainable(model) and all("lora_" in n for n in _trainable(model))
    torch.testing.assert_close(_logits(model), ref, atol=1e-4, rtol=1e-4)


def test_qlora_4bit_and_8bit_loading(tiny_cfg):
    model, _ = _adapted(tiny_cfg(lora_rank=4, quant__bits=4, quant__double_quant=True))
    kinds = {type(m).__name__ for m in model.modules()}
    assert "Linear4bit" in kinds
    for name, mod in model.named_modules():
        if type(mod).__name__ == "Linear4bit" and name.endswith("base_layer"):
            assert not mod.weight.requires_grad
    lora = [(n, p) for n, p in model.named_parameters() if "lora_" in n]
    assert lora and all(p.requires_grad and p.dtype == torch.float32 for _, p in lora)
    assert torch.isfinite(_logits(model)).all()

    m8 = load_model(tiny_cfg(quant__bits=8), with_adapter=False).model
    assert any(type(m).__name__ == "Linear8bitLt" for m in m8.modules())
    assert torch.isfinite(_logits(m8)).all()


def test_qlora_training_run(tiny_cfg):
    run = kit.train(tiny_cfg(lora_rank=4, quant__bits=4, max_steps=3, max_samples=8, save_steps=0))
    assert run.status == "finished", run.traceback
    losses = [l for _, l in run.losses()]
    assert len(losses) == 3 and all(math.isfinite(l) for l in losses)
    assert (run.run_dir / "adapter" / "adapter_config.json").exists()


def test_loraplus_optimizer_groups(tiny_cfg):
    cfg = tiny_cfg(lora_rank=4)
    model, _ = _adapted(cfg)
    assert build_optimizer(model, cfg) is None
    cfg = tiny_cfg(lora_rank=4, loraplus_lr_ratio=16)
    opt = build_optimizer(model, cfg)
    a, b = opt.param_groups
    assert b["lr"] == pytest.approx(16 * a["lr"]) and a["lr"] == pytest.approx(1e-3)
    b_ids = {id(p) for p in b["params"]}
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert (id(p) in b_ids) == ("lora_B" in n)

    run = kit.train(
        tiny_cfg(lora_rank=4, loraplus_lr_ratio=16, max_steps=2, max_samples=8, save_steps=0, lr_scheduler="constant")
    )
    assert run.status == "finished", run.traceback
    lrs = [g["lr"] for g in run.trainer.optimizer.param_groups]
    assert len(lrs) == 2 and lrs[1] == pytest.approx(16 * lrs[0])


@pytest.mark.e2e
def test_qlora_default_model_loss_falls(tmp_path):
    run = kit.train(
        model="smollm2-135m-instruct",
        dataset="demo_sft",
        quant__bits=4,
        quant__quant_type="nf4",
        quant__double_quant=True,
        max_steps=5,
        batch_size=2,
        cutoff_len=128,
        max_samples=8,
        learning_rate=1e-3,
        lr_scheduler="constant",
        save_steps=0,
        num_threads=2,
        output_dir=str(tmp_path / "qlora"),
    )
    assert run.status == "finished", run.traceback
    losses = [l for _, l in run.losses()]
    assert len(losses) == 5
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2, losses


def test_adapter_config_cross_checks():
    from kit import ConfigError, RunConfig

    with pytest.raises(ConfigError, match="loraplus_lr_ratio"):
        RunConfig.from_kwargs(loraplus_lr_ratio=4, finetuning_type="full")
    with pytest.raises(ConfigError, match="loraplus_lr_ratio"):
        RunConfig.from_kwargs(loraplus_lr_ratio=4, optim="sgd")
    with pytest.raises(ConfigError, match="resume_adapter"):
        RunConfig.from_kwargs(resume_adapter="/tmp/x", quant__bits=4)
    with pytest.raises(ConfigError, match="freeze_trainable_layers"):
        RunConfig.from_kwargs(finetuning_type="freeze", freeze_trainable_layers=0)
    RunConfig.from_kwargs(loraplus_lr_ratio=4)  # the valid combination passes


@pytest.mark.parametrize(
    "kw,key",
    [
        (dict(quant__bits=4, finetuning_type="full"), "adapter.type"),
        (dict(quant__bits=8, finetuning_type="freeze"), "adapter.type"),
        (dict(quant__bits=4, resume_adapter="/tmp/x"), "adapter.resume_adapter"),
    ],
)
def test_quantized_base_rules_name_the_key_and_the_fix(kw, key):
    """Training a quantized base in full (or some layers of it) and merging an adapter into a quantized base
    (stacking) are refused when the config is built, naming the key and what to change."""
    from kit import ConfigError, RunConfig

    with pytest.raises(ConfigError) as e:
        RunConfig.from_kwargs(**kw)
    assert e.value.key == key and "quant.bits=null" in str(e.value), str(e.value)


@pytest.mark.parametrize("loss", ["plain", "chunked"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_activation_estimate_matches_saved_tensors(tiny_cfg, checkpointing, loss):
    """The activation part of the memory estimate vs the bytes autograd really keeps for one
    forward pass of a full packed row (LoRA on all linear layers), with the loss the run will use:
    the full logits and their cross-entropy (padded batches), or the chunked LM-head loss of the
    padding-free default (kit.stages.linear_ce), which keeps no ``tokens x vocab`` buffer."""
    import torch

    from kit.adapters import apply_adapter
    from kit.memory import activation_bytes
    from kit.models import load_model
    from kit.stages.linear_ce import chunked_loss_expected, linear_cross_entropy

    cfg = tiny_cfg(
        cutoff_len=256,
        batch_size=2,
        micro_batch_size=1,
        gradient_checkpointing=checkpointing,
        padding_free=loss == "chunked",
    )
    loaded = load_model(cfg, with_adapter=False)
    model = apply_adapter(loaded.model, cfg)
    assert chunked_loss_expected(cfg, model.config, "cpu", 4) == (loss == "chunked")
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        if st.data_ptr() not in params:
            seen[st.data_ptr()] = st.nbytes()
        return t

    ids = torch.randint(0, model.config.vocab_size, (1, 256))
    backbone = model.get_base_model().model
    head = model.get_base_model().lm_head

    def kept(fn):
        seen.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = fn()
        return sum(seen.values()), out

    def chunked():
        hidden = backbone(input_ids=ids, use_cache=False).last_hidden_state.flatten(0, 1)
        return linear_cross_entropy(hidden, head.weight, ids[0])[0]

    def plain():
        return model(input_ids=ids, labels=ids, use_cache=False).loss  # full logits + CE

    layers, _ = kept(lambda: backbone(input_ids=ids, use_cache=False).last_hidden_state)
    total, _ = kept(chunked if loss == "chunked" else plain)
    est = activation_bytes(model.config, cfg, device="cpu", dtype_bytes=4)
    c = model.config
    if checkpointing:  # the estimate adds one layer's full set, alive only while backward recomputes it
        est -= 256 * (10 * c.hidden_size + 3 * c.intermediate_size) * 4
    est_layers = est - 256 * (c.hidden_size if loss == "chunked" else c.vocab_size) * 4
    assert 0.75 * layers < est_layers < 1.33 * layers, (est_layers, layers)
    assert 0.75 * total < est < 1.33 * total, (est, total)
    if loss == "chunked":  # what the chunked loss saves is far below one logits buffer
        assert total - layers < 256 * c.vocab_size * 4 / 4, (total - layers, layers)


@pytest.mark.parametrize("optim", ["adamw_torch", "adamw_8bit", "sgd", "adafactor"])
def test_optimizer_state_estimate_equals_the_real_state(tiny_cfg, optim):
    """The optimizer part of the memory estimate (engine and adapter panel share it) against the
    bytes the optimizer really holds after one step."""
    import torch

    import kit
    from kit.memory import optimizer_state_bytes

    if optim == "adamw_8bit":
        pytest.importorskip("bitsandbytes")
    run = kit.train(tiny_cfg(optim=optim, max_steps=1, save_steps=0, cutoff_len=64, max_samples=4))
    assert run.status == "finished", run.traceback
    opt = getattr(run.trainer.optimizer, "optimizer", run.trainer.optimizer)
    held = 0
    for st in opt.state.values():
        for k, v in st.items():
            if torch.is_tensor(v) and v.dim() > 0 and k not in ("qmap1", "qmap2"):  # qmaps: one shared 256-entry table
                held += v.numel() * v.element_size()
    est = next(e for e in run.events if e.kind == "model").get("memory_estimate")
    assert est["optimizer"] == optimizer_state_bytes(run.trainer.model, optim) == held, (est["optimizer"], held)


def test_checks_that_need_the_model_raise_config_errors_naming_the_key(tiny_cfg):
    """What the validator cannot know without the model (module names, its number of layers, whether it
    has LoRA B weights) is checked when the adapter is applied, as a ConfigError naming the key."""
    from kit import ConfigError

    cases = [
        (tiny_cfg(lora_target="q_proj,no_such_proj"), "adapter.lora_target", "q_proj"),  # lists real ones
        (
            tiny_cfg(finetuning_type="freeze", freeze_trainable_layers=-3),
            "adapter.freeze_trainable_layers",
            "this model has 2 layers",
        ),
    ]
    for cfg, key, says in cases:
        with pytest.raises(ConfigError) as e:
            _adapted(cfg)
        assert e.value.key == key and says in str(e.value), str(e.value)
    plain = load_model(tiny_cfg(), with_adapter=False).model  # no LoRA applied: nothing for LoRA+ to speed up
    with pytest.raises(ConfigError) as e:
        build_optimizer(plain, tiny_cfg(lora_rank=4, loraplus_lr_ratio=16))
    assert e.value.key == "adapter.loraplus_lr_ratio" and "lora_B" in str(e.value)


def test_adapter_panel_estimate_is_the_engines(tiny_cfg, tiny_model_dir):
    """The Board's adapter panel shows the same memory estimate (every part, and the total) as the
    engine's model event for the same config: one estimate, before and during a run."""
    import kit
    from kit.widgets.estimate import estimate as panel_estimate

    cfg = tiny_cfg(max_steps=1, save_steps=0, cutoff_len=64, max_samples=4)
    shown = panel_estimate(cfg)
    run = kit.train(cfg)
    assert run.status == "finished", run.traceback
    est = next(e for e in run.events if e.kind == "model").get("memory_estimate")
    for part in ("weights", "grads", "optimizer", "activations", "runtime", "total"):
        assert shown[f"{part}_bytes"] == est[part], (part, shown[f"{part}_bytes"], est[part])
