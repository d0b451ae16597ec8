"""Every non-SFT stage end to end on the tiny random model, each checking a real effect."""

from __future__ import annotations

import random

import pytest
import torch

import kit
from kit.data import DataError, register_dataset

COLORS = ["red", "blue", "green", "yellow", "black", "white", "purple", "orange"]


def pref_rows(n: int = 16) -> list[dict]:
    """A learnable preference: the chosen answer is polite and on topic, the rejected one rude."""
    return [
        {
            "prompt": f"What color do you like, number {i}?",
            "chosen": f"I like {COLORS[i % len(COLORS)]} very much, thank you for asking.",
            "rejected": "No. Go away.",
        }
        for i in range(n)
    ]


def kto_rows(n: int = 16) -> list[dict]:
    rows = []
    for i, r in enumerate(pref_rows(n)):
        good = i % 2 == 0
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": r["prompt"]},
                    {"role": "assistant", "content": r["chosen"] if good else r["rejected"]},
                ],
                "label": good,
            }
        )
    return rows


def text_rows(n: int = 8) -> list[dict]:
    rnd = random.Random(0)
    return [{"text": " ".join(rnd.choice(COLORS[:3]) for _ in range(40)) + " the end."} for _ in range(n)]


def prompt_rows(n: int = 8) -> list[dict]:
    return [{"prompt": f"Say a color ({i}).", "answer": COLORS[i % len(COLORS)]} for i in range(n)]


@pytest.fixture(autouse=True)
def _datasets():
    register_dataset("t_pref", pref_rows())
    register_dataset("t_kto", kto_rows())
    register_dataset("t_text", text_rows())
    register_dataset("t_prompt", prompt_rows())


def series(run, key):
    return [e.get(key) for e in run.history if e.get(key) is not None]


def test_pt_loss_falls(tiny_cfg):
    run = kit.train(
        tiny_cfg(stage="pt", dataset="t_text", max_steps=8, lr_scheduler="constant", learning_rate=5e-3, cutoff_len=64)
    )
    loss = series(run, "loss")
    assert run.status == "finished" and len(loss) == 8
    assert sum(loss[-2:]) / 2 < loss[0] - 0.2
    # every token of a pre-training block is a target
    ds = run.trainer.train_dataset
    assert all(r["labels"] == r["input_ids"] for r in ds)


def test_pt_packing_keeps_documents_apart(tiny_cfg):
    run = kit.train(tiny_cfg(stage="pt", dataset="t_text", max_steps=2, cutoff_len=256, packing=True))
    rows = run.trainer.train_dataset
    assert any(len(r["seq_lens"]) > 1 for r in rows)


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge", "orpo", "simpo"])
def test_dpo_family_margin_rises(tiny_cfg, loss_type):
    run = kit.train(
        tiny_cfg(
            stage="dpo",
            loss_type=loss_type,
            dataset="t_pref",
            max_steps=5,
            lr_scheduler="constant",
            learning_rate=3e-3 if loss_type in ("orpo", "simpo") else 1e-3,
            save_steps=0,
        )
    )
    m = series(run, "rewards/margins")
    assert run.status == "finished" and len(m) == 5
    assert m[-1] > m[0] and m[-1] > 0, m
    assert series(run, "rewards/accuracies")[-1] >= 0.5


def test_dpo_tokenizes_like_the_chat_template(tiny_cfg, default_tokenizer):
    """Golden check of TRL's preference encoding: prompt ids are our generation prompt and
    prompt + chosen is the template's rendering of the whole chat."""
    from kit.data.encode import encode_prompt

    run = kit.train(tiny_cfg(stage="dpo", dataset="t_pref", max_steps=1, save_steps=0, shuffle=False))
    row = run.trainer.train_dataset[0]
    src = pref_rows()[0]
    prompt = [{"role": "user", "content": src["prompt"]}]
    assert row["prompt_ids"] == encode_prompt(default_tokenizer, prompt)
    full = default_tokenizer.apply_chat_template(
        prompt + [{"role": "assistant", "content": src["chosen"]}], tokenize=True, return_dict=False
    )
    assert row["prompt_ids"] + row["chosen_ids"] == full[: len(row["prompt_ids"]) + len(row["chosen_ids"])]
    assert default_tokenizer.decode(row["chosen_ids"]).startswith(src["chosen"])


def test_dpo_ftx_adds_an_sft_term(tiny_cfg):
    run = kit.train(tiny_cfg(stage="dpo", dataset="t_pref", max_steps=1, save_steps=0, ftx=1.0))
    assert run.trainer.args.loss_type == ["sigmoid", "sft"] and run.trainer.args.loss_weights == [1.0, 1.0]
    plain = kit.train(
        tiny_cfg(stage="dpo", dataset="t_pref", max_steps=1, save_steps=0, output_dir=str(run.run_dir) + "-plain")
    )
    # at step 1 the DPO loss is log 2 for both; the SFT term (a big NLL on a random model) adds on top
    assert series(run, "loss")[0] > series(plain, "loss")[0] + 1.0


def _logp(model, tok, msgs):
    """Sum of log-probs of the last (assistant) message given the rest."""
    from kit.data.encode import encode_prompt

    p = encode_prompt(tok, msgs[:-1])
    full = tok.apply_chat_template(msgs, tokenize=True, return_dict=False)
    ids = torch.tensor([full])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(p) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(1, ids[0, len(p) :, None]).sum().item()


def test_kto_learns_desirable_vs_undesirable(tiny_cfg):
    run = kit.train(
        tiny_cfg(
            stage="kto",
            dataset="t_kto",
            max_steps=8,
            batch_size=4,
            lr_scheduler="constant",
            learning_rate=3e-3,
            save_steps=0,
        )
    )
    assert run.status == "finished"
    model, tok = run.model.eval(), run.tokenizer
    correct = 0
    rows = kto_rows()
    for r in rows:
        pol = _logp(model, tok, r["messages"])
        with model.disable_adapter():
            ref = _logp(model, tok, r["messages"])
        correct += (pol - ref > 0) == r["label"]  # KTO's implied reward sign = the label
    assert correct / len(rows) >= 0.75, correct


def test_kto_needs_both_labels(tiny_cfg):
    register_dataset("t_kto_good", [r for r in kto_rows() if r["label"]])
    with pytest.raises(DataError, match="both desirable"):
        kit.train(tiny_cfg(stage="kto", dataset="t_kto_good"))


@pytest.fixture
def rm_run(tiny_cfg):
    return kit.train(
        tiny_cfg(stage="rm", dataset="t_pref", max_steps=8, lr_scheduler="constant", learning_rate=3e-3, save_steps=4)
    )


def test_rm_accuracy_and_score(rm_run):
    assert rm_run.status == "finished"
    acc = series(rm_run, "accuracy")
    assert acc[-1] > 0.5
    assert (rm_run.run_dir / "adapter" / "adapter_config.json").exists()
    rows = pref_rows()
    good = kit.score(rm_run.run_dir, [r["prompt"] for r in rows], [r["chosen"] for r in rows])
    bad = kit.score(rm_run.run_dir, [r["prompt"] for r in rows], [r["rejected"] for r in rows])
    assert sum(g > b for g, b in zip(good, bad)) / len(rows) > 0.75
    one = kit.score(str(rm_run.run_dir), rows[0]["prompt"], rows[0]["chosen"])
    assert isinstance(one, float) and abs(one - good[0]) < 1e-4
    with pytest.raises(ValueError, match="not a reward model"):
        import shutil

        from kit.stages.rm import load_reward_model

        other = rm_run.run_dir.parent / "not-rm"
        shutil.copytree(rm_run.run_dir, other)
        (other / "config.yaml").write_text((other / "config.yaml").read_text().replace("name: rm", "name: sft"))
        load_reward_model(other)


def test_ppo_with_reward_model_runs_and_resumes(rm_run, tiny_cfg, tmp_path):
    cfg = tiny_cfg(
        stage="ppo",
        dataset="t_prompt",
        reward_model=str(rm_run.run_dir),
        stage__max_new_tokens=6,
        num_generations=2,
        max_steps=4,
        save_steps=2,
        output_dir=str(tmp_path / "ppo"),
    )
    run = kit.train(cfg)
    assert run.status == "finished" and run.trainer.state.global_step == 4
    for key in ("reward", "kl", "pg_loss", "vf_loss", "clipfrac", "response_length"):
        vals = series(run, key)
        assert len(vals) == 4 and all(v == v for v in vals), key
    # the rollouts were scored by the reward model of the rm run
    assert all(-10 < r < 10 for r in series(run, "reward"))
    # first PPO epoch on fresh rollouts is on-policy: nothing clipped at step 1
    assert series(run, "clipfrac")[0] < 0.5
    ck = run.run_dir / "checkpoints" / "checkpoint-2"
    assert (ck / "value_head.safetensors").exists() and (ck / "FORGE_COMPLETE").exists()
    assert (run.run_dir / "adapter" / "adapter_config.json").exists()
    # resume continues from the last checkpoint, value head included
    again = kit.train(cfg.replace(train__max_steps=6))
    assert again.trainer.state.global_step == 6
    starts = [e for e in again.events if e.kind == "start"]
    assert starts[-1].get("resume_from", "").endswith("checkpoint-4")


def test_ppo_with_reward_functions_only(tiny_cfg):
    """PPO without a reward model: built-in / registered reward functions score the rollouts."""

    def short(prompts, completions, **_):
        return [1.0 if len(c) < 30 else 0.0 for c in completions]

    run = kit.train(
        tiny_cfg(
            stage="ppo",
            dataset="t_prompt",
            reward_funcs=[short],
            stage__max_new_tokens=4,
            num_generations=4,
            batch_size=4,
            max_steps=3,
            save_steps=0,
        )
    )
    assert run.status == "finished"
    # the tiny random model never stops within 4 tokens... unless decoded text is short; either way 0/1 means
    assert all(0.0 <= r <= 1.0 for r in series(run, "reward")) and len(series(run, "reward")) == 3


def test_ppo_needs_a_reward(tiny_cfg):
    with pytest.raises(ValueError, match="reward_model"):
        kit.train(tiny_cfg(stage="ppo", dataset="t_prompt"))


def test_grpo_runs_with_builtin_and_callable_rewards(tiny_cfg):
    seen = []

    def spy(prompts, completions, answer, **_):
        seen.append((len(completions), list(answer)))
        return [float(len(c[-1]["content"]) % 3) for c in completions]

    run = kit.train(
        tiny_cfg(
            stage="grpo",
            dataset="t_prompt",
            reward_funcs=["length", spy],
            num_generations=2,
            stage__max_new_tokens=6,
            max_steps=2,
            batch_size=4,
            save_steps=0,
        )
    )
    assert run.status == "finished"
    # a Python callable is recorded in config.yaml by its import path
    assert "spy" in (run.run_dir / "config.yaml").read_text()
    assert seen and seen[0][0] == 4 and all(a in COLORS for a in seen[0][1])  # dataset columns reach the reward
    assert len(series(run, "reward")) == 2 and series(run, "rewards/length/mean")
    assert len(series(run, "rewards/spy/mean")) == 2


def test_grpo_batch_must_hold_whole_groups(tiny_cfg):
    with pytest.raises(ValueError, match="multiple of stage.num_generations"):
        kit.train(tiny_cfg(stage="grpo", dataset="t_prompt", reward_funcs=["length"], num_generations=3, batch_size=2))


def test_wrong_kind_of_data_names_the_needed_kind(tiny_cfg):
    with pytest.raises(DataError, match=r"needs preference data \(preference \(prompt, chosen, rejected\)\)"):
        kit.train(tiny_cfg(stage="dpo", dataset="t_text"))
    with pytest.raises(DataError, match="needs kto data"):
        kit.train(tiny_cfg(stage="kto", dataset="t_pref"))


def test_cli_trains_a_non_sft_stage(tiny_cfg, tmp_path):
    from kit import cli
    from kit.engine import open_run

    out = tmp_path / "cli-dpo"
    data = tmp_path / "pref.jsonl"
    import json

    data.write_text("\n".join(json.dumps(r) for r in pref_rows(8)))
    base = tiny_cfg()
    rc = cli.main(
        [
            "train",
            "stage.name=dpo",
            "stage.loss_type=ipo",
            "stage.beta=0.2",
            f"model.name={base.model.name}",
            f"data.dataset={data}",
            "train.max_steps=2",
            "train.batch_size=2",
            "data.cutoff_len=96",
            f"train.output_dir={out}",
            "train.save_steps=0",
            "train.num_threads=2",
        ]
    )
    assert rc == 0
    run = open_run(out)
    assert run.status == "finished" and run.config.stage.name == "dpo" and run.config.stage.loss_type == "ipo"
    assert run.config.stage.beta == 0.2
    assert [e.get("rewards/margins") is not None for e in run.history] == [True, True]


def test_builtin_reward_functions():
    from kit.stages.rewards import resolve_reward, resolve_rewards

    comps = [
        [{"role": "assistant", "content": " Blue. "}],
        [{"role": "assistant", "content": "red"}],
        "<answer>42</answer>",
    ]
    assert resolve_reward("exact_match")(None, comps[:2], answer=["blue", "blue"]) == [1.0, 0.0]
    assert resolve_reward("contains")(None, ["it is blue!", "no"], answer=["blue", "blue"]) == [1.0, 0.0]
    assert resolve_reward("format")(None, comps) == [0.0, 0.0, 1.0]
    assert resolve_reward(r"format:\d+")(None, ["123", "12a"]) == [1.0, 0.0]
    assert resolve_reward("length:10")(None, ["x" * 10, "x" * 15, ""]) == [1.0, 0.5, 0.0]
    assert resolve_reward("length")(None, ["x" * 50, "x" * 500]) == [0.5, 1.0]
    fn = resolve_reward("kit.stages.rewards:exact_match")
    assert fn(None, ["7"], answer=["7"]) == [1.0]
    assert len(resolve_rewards(["length", lambda prompts, completions, **k: [0.0]])) == 2
    with pytest.raises(ValueError, match="unknown reward 'nope'"):
        resolve_reward("nope")
    with pytest.raises(ValueError, match="cannot import"):
        resolve_reward("kit.stages.rewards:nothing_here")
    with pytest.raises(ValueError, match="needs an 'answer' column"):
        resolve_reward("exact_match")(None, ["x"])


@pytest.mark.parametrize(
    "stage,dataset,extra",
    [
        ("pt", "demo_text", {}),
        ("dpo", "demo_pref", {}),
        ("kto", "demo_kto", {"batch_size": 4}),
        ("rm", "demo_pref", {}),
        (
            "grpo",
            "demo_prompt",
            {"reward_funcs": ["exact_match", "format:\\d+"], "num_generations": 2, "stage__max_new_tokens": 4},
        ),
    ],
)
def test_each_stage_takes_its_shipped_demo_set(tiny_cfg, stage, dataset, extra):
    run = kit.train(tiny_cfg(stage=stage, dataset=dataset, max_steps=1, max_samples=8, save_steps=0, **extra))
    assert run.status == "finished" and len(run.history) == 1
    data = [e for e in run.events if e.kind == "data"]
    assert data and data[-1].get("train_rows") > 0
