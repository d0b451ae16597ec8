"""The tuning menu (issue 17) on the tiny model: each knob's constraint checks and its real effect.

NEFTune, OFT, additional_target (peft modules_to_save), freeze_extra_modules, Muon (with resume),
RoPE scaling, LLaMA Pro block expansion and the quantized reference model.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

import kit
from kit import RunConfig
from kit.adapters import apply_adapter, build_optimizer
from kit.config import ConfigError
from kit.engine import Run, open_run
from kit.memory import optimizer_state_bytes
from kit.models import load_model
from kit.optimizers import MuonWithAdamW


def _weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _changed(before: dict, model) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}


def _falls(run) -> bool:
    ls = [v for _, v in run.losses()]
    return len(ls) >= 4 and sum(ls[-2:]) / 2 < sum(ls[:2]) / 2


FAST = dict(max_samples=16, save_steps=0, lr_scheduler="constant")


# ------------------------------------------------------------------ constraint checks


@pytest.mark.parametrize(
    "kw, key",
    [
        (dict(stage="dpo", neftune_noise_alpha=5.0), "train.neftune_noise_alpha"),
        (dict(optim="muon", quant__bits=4), "train.optim"),
        (dict(optim="muon", stage="dpo"), "train.optim"),
        (dict(llama_pro_blocks=1), "adapter.llama_pro_blocks"),
        (dict(oft_block_size=16), "adapter.oft_block_size"),
        (dict(stage="dpo", ref_model_quantization_bit=4), "stage.ref_model_quantization_bit"),
        (dict(rope_scaling="cubic"), "model.rope_scaling"),
    ],
)
def test_tuning_knobs_are_checked(kw, key):
    with pytest.raises(ConfigError) as e:
        RunConfig.from_kwargs(**kw)
    assert e.value.key == key


def test_additional_target_is_modules_to_save():
    cfg = RunConfig.from_kwargs(additional_target="embed_tokens,lm_head")
    assert cfg.adapter.modules_to_save == ["embed_tokens", "lm_head"]
    assert RunConfig().override(["additional_target=lm_head"]).adapter.modules_to_save == ["lm_head"]


# ------------------------------------------------------------------ NEFTune


def test_neftune_noises_embeddings_in_training_only(tiny_cfg):
    run = Run(tiny_cfg(neftune_noise_alpha=5.0, max_steps=2, **FAST))
    trainer = run._setup()
    assert trainer.args.neftune_noise_alpha == 5.0
    base = run.model.get_base_model()
    embed, first = base.get_input_embeddings(), base.model.layers[0]
    seen = []
    ids = {}
    embed.register_forward_pre_hook(lambda m, args: ids.__setitem__("x", args[0]))

    def record(mod, args, kwargs):
        h = kwargs.get("hidden_states", args[0] if args else None)
        seen.append((mod.training, not torch.allclose(h, embed.weight[ids["x"]].detach(), atol=1e-6)))

    first.register_forward_pre_hook(record, with_kwargs=True)
    run._train(trainer)
    assert seen and all(noisy for training, noisy in seen if training), seen
    seen.clear()
    base.eval()
    with torch.no_grad():
        base(input_ids=torch.tensor([[1, 2, 3, 4]]))
    assert seen == [(False, False)]  # inference: the embeddings as they are


# ------------------------------------------------------------------ OFT, additional_target, freeze extras


def test_oft_trains_orthogonal_adapters_only(tiny_cfg):
    run = Run(tiny_cfg(finetuning_type="oft", oft_block_size=16, max_steps=6, learning_rate=1e-2, **FAST))
    trainer = run._setup()
    before = _weights(run.model)
    run._train(trainer)
    run._finish()
    changed = _changed(before, run.model)
    assert changed and all(".oft_" in n for n in changed), changed
    assert _falls(run)
    saved = json.loads((run.dir.adapter_dir / "adapter_config.json").read_text())
    assert saved["peft_type"] == "OFT" and saved["oft_block_size"] == 16


def test_additional_target_trained_and_saved(tiny_cfg):
    run = Run(tiny_cfg(lora_rank=4, lora_target="q_proj", additional_target="embed_tokens", max_steps=3, **FAST))
    trainer = run._setup()
    before = _weights(run.model)
    run._train(trainer)
    run._finish()
    changed = _changed(before, run.model)
    assert any("embed_tokens" in n and "modules_to_save" in n for n in changed), changed
    assert all("lora_" in n or "modules_to_save" in n for n in changed), changed
    with safe_open(str(run.dir.adapter_dir / "adapter_model.safetensors"), "pt") as f:
        assert any("embed_tokens" in k for k in f.keys())


def test_freeze_extra_modules_train_the_embeddings(tiny_cfg):
    run = Run(
        tiny_cfg(
            finetuning_type="freeze",
            freeze_trainable_layers=1,
            freeze_extra_modules=["embed_tokens"],
            max_steps=3,
            **FAST,
        )
    )
    trainer = run._setup()
    before = _weights(run.model)
    run._train(trainer)
    changed = _changed(before, run.model)
    assert "model.embed_tokens.weight" in changed
    assert any(".layers.1." in n for n in changed)
    assert not any(".layers.0." in n for n in changed)


# ------------------------------------------------------------------ Muon


def test_muon_optimizer_trains_and_splits_params(tiny_cfg):
    cfg = tiny_cfg(finetuning_type="full", optim="muon", max_steps=6, learning_rate=3e-3, **FAST)
    model = apply_adapter(load_model(cfg, with_adapter=False).model, cfg)
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, MuonWithAdamW)
    muon, adamw = opt._inner
    assert isinstance(muon, torch.optim.Muon) and all(p.dim() == 2 for g in muon.param_groups for p in g["params"])
    assert optimizer_state_bytes(model, "muon") < optimizer_state_bytes(model, "adamw_torch")
    run = kit.train(cfg)
    assert isinstance(run.trainer.optimizer.optimizer, MuonWithAdamW)
    assert _falls(run)


def test_muon_state_round_trip():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))

    def make():
        mats = [p for p in net.parameters() if p.dim() == 2]
        return MuonWithAdamW(mats, [p for p in net.parameters() if p.dim() != 2], lr=1e-2)

    opt = make()
    net(torch.randn(4, 8)).sum().backward()
    opt.step()
    other = make()
    other.load_state_dict(opt.state_dict())
    w = net[0].weight
    assert torch.equal(other.state[w]["momentum_buffer"], opt.state[w]["momentum_buffer"])
    assert other._inner[0].state is other.state and other._inner[0].param_groups[0] is other.param_groups[0]


def _assert_resume_matches(tiny_cfg, tmp_path, common: dict, ref) -> None:
    """Stop after 2 steps, resume to 4: steps 3 and 4 must match the uninterrupted ``ref`` run."""
    first = kit.train(tiny_cfg(max_steps=2, save_steps=2, output_dir=str(tmp_path / "cut"), **common))
    assert first.last_checkpoint is not None
    again = open_run(first.run_dir)
    again.resume(max_steps=4)
    assert again.status == "finished"
    resumed, expected = dict(again.losses()), dict(ref.losses())
    for s in (3, 4):
        assert resumed[s] == pytest.approx(expected[s], rel=1e-4, abs=1e-5), s


def test_muon_resume_is_exact(tiny_cfg, tmp_path):
    common = dict(finetuning_type="full", optim="muon", learning_rate=3e-3, max_samples=16, lr_scheduler="constant")
    ref = kit.train(tiny_cfg(max_steps=4, save_steps=0, output_dir=str(tmp_path / "ref"), **common))
    _assert_resume_matches(tiny_cfg, tmp_path, common, ref)


# ------------------------------------------------------------------ RoPE scaling


def test_rope_scaling_trains_past_the_context(tiny_cfg, tmp_path):
    long_row = {"instruction": "Repeat the words. " + "alpha beta gamma delta " * 300, "output": "ok " * 50}
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps(long_row) + "\n" + json.dumps(long_row) + "\n")
    cfg = tiny_cfg(dataset=str(data), cutoff_len=2048, rope_scaling="linear", max_steps=4, batch_size=1, **FAST)
    loaded = load_model(cfg, with_adapter=False)
    c = loaded.model.config
    assert c.rope_parameters["rope_type"] == "linear" and c.rope_parameters["factor"] == 2.0
    assert c.max_position_embeddings == 2048
    plain = load_model(cfg.replace(model__rope_scaling=None), with_adapter=False).model
    scaled_inv = loaded.model.model.rotary_emb.inv_freq
    assert torch.allclose(scaled_inv, plain.model.rotary_emb.inv_freq / 2)  # linear: positions / factor
    pos = torch.arange(4)[None]
    x = torch.zeros(1, 4, 16)
    cos_s, _ = loaded.model.model.rotary_emb(x, pos * 2)
    cos_p, _ = plain.model.rotary_emb(x, pos)
    assert torch.allclose(cos_s, cos_p, atol=1e-6)  # position 2p scaled == position p plain
    run = kit.train(cfg)
    assert run.status == "finished"
    rows = [e for e in run.events if e.kind == "data"]
    assert rows and all(v == v for _, v in run.losses())
    assert _falls(run)


# ------------------------------------------------------------------ LLaMA Pro


def test_llama_pro_expands_and_trains_only_new_blocks(tiny_cfg):
    cfg = tiny_cfg(finetuning_type="freeze", llama_pro_blocks=2, max_steps=4, learning_rate=3e-3, **FAST)
    loaded = load_model(cfg, with_adapter=False)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        plain = loaded.model.eval()(input_ids=ids).logits
    model = apply_adapter(loaded.model, cfg)
    assert model.config.num_hidden_layers == 4
    with torch.no_grad():
        assert torch.allclose(model.eval()(input_ids=ids).logits, plain, atol=1e-5)  # new blocks are the identity
    trainable = {n.split(".")[2] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"1", "3"}

    run = Run(cfg)
    trainer = run._setup()
    before = _weights(run.model)
    run._train(trainer)
    run._finish()
    changed = _changed(before, run.model)
    assert changed and all(n.startswith(("model.layers.1.", "model.layers.3.")) for n in changed), changed
    assert _falls(run)
    saved = json.loads((run.dir.model_dir / "config.json").read_text())
    assert saved["num_hidden_layers"] == 4


# ------------------------------------------------------------------ quantized reference model


def test_ref_model_quantization_bit(tiny_cfg, tiny_model_dir):
    pytest.importorskip("bitsandbytes")
    from kit.stages.common import StageContext, ref_model_config, reference_model

    cfg = tiny_cfg(stage="dpo", dataset="demo_pref", ref_model=str(tiny_model_dir), ref_model_quantization_bit=4)
    assert ref_model_config(cfg).quant.bits == 4
    ctx = StageContext(cfg=cfg, model=None, tokenizer=None, run_dir=tmp_dir(cfg), device="cpu", dtype=torch.float32)
    ref = reference_model(ctx)
    assert any(type(m).__name__ == "Linear4bit" for m in ref.modules())
    assert not ref.training


def tmp_dir(cfg):
    from pathlib import Path

    return Path(cfg.train.output_dir)


# ------------------------------------------------------------------ new special tokens


def test_new_tokens_trained_and_saved_with_the_adapter(tiny_cfg, tmp_path):
    rows = [{"instruction": "Think first.", "output": "<think> ok </think> done"}] * 4
    data = tmp_path / "think.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tiny_cfg(
        dataset=str(data),
        new_special_tokens=["<think>", "</think>"],
        lora_rank=4,
        lora_target="q_proj",
        max_steps=3,
        **FAST,
    )
    run = Run(cfg)
    trainer = run._setup()
    tok = run.tokenizer
    new_id = tok.convert_tokens_to_ids("<think>")
    assert new_id >= len(tok) - 2 and tok("<think>", add_special_tokens=False)["input_ids"] == [new_id]
    embed = run.model.get_input_embeddings()
    assert embed.weight.shape[0] == len(tok)
    row = run.model.get_input_embeddings().weight[new_id].detach().clone()
    run._train(trainer)
    run._finish()
    trained = run.model.get_input_embeddings().weight[new_id].detach().clone()
    assert not torch.equal(row, trained)
    # chat (and export, which loads the same way) see the trained row and the same token ids
    again = load_model(cfg.replace(model__adapter_path=str(run.run_dir)))
    assert again.tokenizer.convert_tokens_to_ids("<think>") == new_id
    assert torch.allclose(again.model.get_input_embeddings().weight[new_id], trained)


# ------------------------------------------------------------------ LongLoRA S²-attn


def _qkv(t=24, heads=4, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, heads, t, d, generator=g) for _ in range(3)]


def test_s2attn_without_shift_is_full_attention_within_examples():
    from kit.models.s2attn import s2_attention

    q, k, v = _qkv()
    cu = [0, 10, 24]
    full = torch.cat(
        [
            torch.nn.functional.scaled_dot_product_attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], is_causal=True)
            for s, e in zip(cu, cu[1:])
        ],
        2,
    )
    assert torch.allclose(s2_attention(q, k, v, cu, g=16, shift=False), full, atol=1e-6)  # groups >= examples


def test_s2attn_shift_stays_within_groups():
    from kit.models.s2attn import s2_attention

    q, k, v = _qkv(t=16)
    cu, g = [0, 16], 8
    out = s2_attention(q, k, v, cu, g=g)
    # change the keys/values of token 3: unshifted heads' group [0, 8) and shifted heads' groups [0, 4) see it
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 3] += 5.0
    v2[:, :, 3] += 5.0
    moved = (s2_attention(q, k2, v2, cu, g=g) - out).abs().amax(-1)[0]  # (heads, T)
    assert moved[:2, 8:].max() == 0 and moved[:2, 3:8].min() > 0  # heads 0-1: groups [0,8), [8,16)
    assert moved[2:, 4:].max() == 0 and moved[2:, 3:4].min() > 0  # heads 2-3: groups [0,4), [4,12), [12,16)
    # the shift changes the answer (it is not full attention)
    assert not torch.allclose(out, s2_attention(q, k, v, cu, g=g, shift=False))


def test_s2attn_checked_and_trains(tiny_cfg):
    with pytest.raises(ConfigError) as e:
        tiny_cfg(shift_attn=True, shift_attn_group=48)
    assert e.value.key == "model.shift_attn_group"
    with pytest.raises(ConfigError):
        tiny_cfg(shift_attn=True, padding_free=False)
    run = kit.train(tiny_cfg(shift_attn=True, shift_attn_group=32, max_steps=4, learning_rate=3e-3, **FAST))
    base = run.model.get_base_model()
    assert base.config._attn_implementation == "forge_s2attn" and base.config.forge_s2_group == 32
    assert _falls(run)


# ------------------------------------------------------------------ APOLLO (apollo-torch, installed with --no-deps)


def test_apollo_trains_and_resumes(tiny_cfg, tmp_path):
    pytest.importorskip("apollo_torch")
    with pytest.raises(ConfigError):
        RunConfig.from_kwargs(optim="apollo_adamw")  # the default adapter is LoRA
    common = dict(
        finetuning_type="full", optim="apollo_adamw", learning_rate=3e-3, max_samples=16, lr_scheduler="constant"
    )
    ref = kit.train(tiny_cfg(max_steps=4, save_steps=0, output_dir=str(tmp_path / "ref"), **common))
    opt = ref.trainer.optimizer.optimizer
    assert type(opt).__module__.startswith("apollo_torch") and any("rank" in g for g in opt.param_groups)
    assert _falls(ref) or [v for _, v in ref.losses()][-1] < [v for _, v in ref.losses()][0]
    _assert_resume_matches(tiny_cfg, tmp_path, common, ref)


# ------------------------------------------------------------------ Adam-mini and BAdam (the optimizers extra)


@pytest.mark.parametrize(
    "kw, key",
    [
        (dict(optim="adam_mini"), "train.optim"),  # the default adapter is LoRA
        (dict(optim="badam", finetuning_type="freeze"), "train.optim"),
        (dict(optim="badam", finetuning_type="full", quant__bits=4), "adapter.type"),
        (dict(optim="badam", finetuning_type="full", stage="dpo"), "train.optim"),
        (dict(badam_switch_every=5), "train.badam_switch_every"),  # read only with optim=badam
        (dict(pure_bf16=True, dtype="float32", finetuning_type="full"), "train.pure_bf16"),
    ],
)
def test_new_optimizers_are_checked(kw, key):
    with pytest.raises(ConfigError) as e:
        RunConfig.from_kwargs(**kw)
    assert e.value.key == key


def test_adam_mini_trains_and_resumes(tiny_cfg, tmp_path):
    adam_mini = pytest.importorskip("adam_mini")
    common = dict(
        finetuning_type="full", optim="adam_mini", learning_rate=3e-3, max_samples=16, lr_scheduler="constant"
    )
    ref = kit.train(tiny_cfg(max_steps=4, save_steps=0, output_dir=str(tmp_path / "ref"), **common))
    opt = ref.trainer.optimizer.optimizer
    assert isinstance(opt, adam_mini.Adam_mini)
    # one second moment per head / neuron: far fewer values than weights (AdamW keeps one per weight)
    v = sum(s["vmean"].numel() for s in opt.state.values() if "vmean" in s)
    m = sum(s["m"].numel() for s in opt.state.values() if "m" in s)
    assert 0 < v < m / 10
    assert optimizer_state_bytes(ref.model, "adam_mini") * 2 == optimizer_state_bytes(ref.model, "adamw_torch")
    assert _falls(ref)
    _assert_resume_matches(tiny_cfg, tmp_path, common, ref)


def test_badam_trains_one_layer_at_a_time_and_resumes(tiny_cfg, tmp_path):
    pytest.importorskip("badam")
    cfg = tiny_cfg(finetuning_type="full", optim="badam", learning_rate=3e-3, max_steps=3, **FAST)
    run = Run(cfg)
    trainer = run._setup()
    before = _weights(run.model)
    run._train(trainer)
    changed = _changed(before, run.model)
    # ascending, switching every 50 steps: only decoder layer 0 trained in these 3 steps
    assert changed and all(n.startswith("model.layers.0.") for n in changed), changed
    assert _falls(run) or [v for _, v in run.losses()][-1] < [v for _, v in run.losses()][0]
    whole = apply_adapter(load_model(cfg, with_adapter=False).model, cfg)  # every weight trainable, as at set-up
    layer = sum(p.numel() for n, p in whole.named_parameters() if n.startswith("model.layers.0."))
    assert optimizer_state_bytes(whole, "badam") == 12 * layer < optimizer_state_bytes(whole, "adamw_torch") / 2
    # switching every step: the checkpoint must restore the block schedule and the active block's moments
    common = dict(
        finetuning_type="full",
        optim="badam",
        badam_switch_every=1,
        learning_rate=3e-3,
        max_samples=16,
        lr_scheduler="constant",
    )
    ref = kit.train(tiny_cfg(max_steps=4, save_steps=0, output_dir=str(tmp_path / "ref"), **common))
    _assert_resume_matches(tiny_cfg, tmp_path, common, ref)


# ------------------------------------------------------------------ pure bf16


def test_pure_bf16_full_tuning(tiny_cfg):
    cfg = tiny_cfg(finetuning_type="full", pure_bf16=True, max_steps=6, learning_rate=3e-3, **FAST)
    run = Run(cfg)
    trainer = run._setup()
    assert not trainer.args.bf16 and not trainer.args.fp16  # no autocast: the math runs on the bf16 weights
    run._train(trainer)
    assert {p.dtype for p in run.model.parameters()} == {torch.bfloat16}  # no fp32 copy was ever made
    state = trainer.optimizer.state
    assert state and all(s["exp_avg"].dtype == torch.bfloat16 for s in state.values())
    assert _falls(run)
    est = next(e for e in run.events if e.kind == "model").get("memory_estimate")
    fp32 = kit.memory.estimate(load_model(cfg.replace(train__pure_bf16=False), with_adapter=False).model, cfg)
    assert est["weights"] * 2 == fp32.weights and est["optimizer"] * 2 == fp32.optimizer


# ------------------------------------------------------------------ quantized reward model (PPO)


def test_reward_model_quantization_bit_for_ppo(tiny_cfg, tmp_path, monkeypatch):
    pytest.importorskip("bitsandbytes")
    from kit.stages import rm as rm_stage

    rows = [{"prompt": f"Say yes {i}.", "chosen": "yes", "rejected": "no no no no"} for i in range(8)]
    pref = tmp_path / "pref.jsonl"
    pref.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in rows))
    rm = kit.train(tiny_cfg(stage="rm", dataset=str(pref), max_steps=2, save_steps=0, output_dir=str(tmp_path / "rm")))
    with pytest.raises(ConfigError) as e:
        tiny_cfg(stage="ppo", dataset=str(prompts), reward_funcs=["length"], reward_model_quantization_bit=4)
    assert e.value.key == "stage.reward_model_quantization_bit"
    loaded = []
    real = rm_stage.load_reward_model

    def spy(*a, **kw):
        loaded.append(real(*a, **kw))
        return loaded[-1]

    import kit.stages.ppo as ppo_stage

    monkeypatch.setattr(ppo_stage, "load_reward_model", spy)
    run = kit.train(
        tiny_cfg(
            stage="ppo",
            dataset=str(prompts),
            reward_model=str(rm.run_dir),
            reward_model_quantization_bit=4,
            stage__max_new_tokens=4,
            num_generations=2,
            max_steps=1,
            save_steps=0,
            output_dir=str(tmp_path / "ppo"),
        )
    )
    assert run.status == "finished"
    reward = [e.get("reward") for e in run.events if e.kind == "step"]
    assert reward and all(r == r for r in reward)  # scored by the quantized model: finite
    kinds = {type(m).__name__ for m in loaded[0].model.modules()}
    assert "Linear4bit" in kinds  # the base weights are 4-bit
