"""Short end-to-end runs of the non-SFT stages on the embedded default model (SmolLM2-135M)."""

from __future__ import annotations

import pytest

import kit
from kit.data import list_datasets, register_dataset

pytestmark = pytest.mark.e2e

COLORS = ["red", "blue", "green", "yellow", "black", "white", "purple", "orange"]


def pref_dataset() -> str:
    """The shipped demo preference set when present, else a small inline one of the same shape."""
    if "demo_pref" in list_datasets():
        return "demo_pref"
    register_dataset(
        "e2e_pref",
        [
            {
                "prompt": f"What color do you like, number {i}?",
                "chosen": f"I like {COLORS[i % 8]} very much, thank you for asking.",
                "rejected": "No. Go away.",
            }
            for i in range(16)
        ],
    )
    return "e2e_pref"


def e2e_cfg(tmp_path, **kw):
    base = dict(
        model="smollm2-135m-instruct",
        output_dir=str(tmp_path / "run"),
        batch_size=2,
        cutoff_len=128,
        max_samples=16,
        save_steps=0,
        num_threads=2,
        lr_scheduler="constant",
    )
    base.update(kw)
    return kit.RunConfig.from_kwargs(**base)


def series(run, key):
    return [e.get(key) for e in run.history if e.get(key) is not None]


@pytest.mark.parametrize("loss_type,lr", [("sigmoid", 5e-4), ("simpo", 5e-4)])
def test_preference_margin_rises_on_default_model(tmp_path, loss_type, lr):
    run = kit.train(
        e2e_cfg(tmp_path, stage="dpo", loss_type=loss_type, dataset=pref_dataset(), max_steps=4, learning_rate=lr)
    )
    m = series(run, "rewards/margins")
    assert run.status == "finished" and len(m) == 4
    print(loss_type, "margins", m)
    assert m[-1] > m[0] and m[-1] > 0, m


def test_reward_model_ranks_chosen_above_rejected(tmp_path):
    ds = pref_dataset()
    run = kit.train(e2e_cfg(tmp_path, stage="rm", dataset=ds, max_steps=6, learning_rate=5e-4))
    from kit.data import load_rows

    rows = load_rows(ds, max_samples=16)[0]
    prompts = [r["prompt"] for r in rows]
    good = kit.score(run.run_dir, prompts, [r["chosen"][-1]["content"] for r in rows])
    bad = kit.score(run.run_dir, prompts, [r["rejected"][-1]["content"] for r in rows])
    acc = sum(g > b for g, b in zip(good, bad)) / len(rows)
    print(ds, "rm pairwise accuracy", acc, "logged", series(run, "accuracy"))
    assert acc > 0.6


def test_grpo_mean_reward_rises_on_a_verifiable_task(tmp_path):
    """Toy verifiable task: answers of about 15 characters (the 'length:15' built-in). The instruct
    model starts out verbose; eight seeded GRPO steps make it brief."""
    register_dataset("e2e_prompt", [{"prompt": f"Say a color ({i}).", "answer": COLORS[i % 8]} for i in range(16)])
    run = kit.train(
        e2e_cfg(
            tmp_path,
            stage="grpo",
            dataset="e2e_prompt",
            reward_funcs=["length:15"],
            num_generations=4,
            stage__max_new_tokens=24,
            batch_size=8,
            max_steps=8,
            learning_rate=1e-3,
            beta=0.0,
            cutoff_len=64,
        )
    )
    r = series(run, "reward")
    print("grpo rewards", r)
    assert run.status == "finished" and len(r) == 8
    assert sum(r[-3:]) / 3 > sum(r[:3]) / 3 + 0.15, r


def test_kto_implied_reward_separates_demo_labels(tmp_path):
    """After KTO on demo_kto, the implied reward log pi/pi_ref has the sign of the label on most rows."""
    import torch

    from kit.data import load_rows
    from kit.data.encode import encode_prompt

    ds = "demo_kto" if "demo_kto" in list_datasets() else None
    if ds is None:
        register_dataset(
            "e2e_kto",
            [
                {
                    "messages": [
                        {"role": "user", "content": f"Favourite color {i}?"},
                        {
                            "role": "assistant",
                            "content": f"I like {COLORS[i % 8]}, thanks!" if i % 2 == 0 else "No. Go away.",
                        },
                    ],
                    "label": i % 2 == 0,
                }
                for i in range(16)
            ],
        )
        ds = "e2e_kto"
    run = kit.train(e2e_cfg(tmp_path, stage="kto", dataset=ds, max_steps=6, batch_size=4, learning_rate=5e-4))
    model, tok = run.model.eval(), run.tokenizer
    rows = load_rows(ds, max_samples=16)[0]

    def logp(msgs):
        p = encode_prompt(tok, msgs[:-1])
        ids = torch.tensor([tok.apply_chat_template(msgs, tokenize=True, return_dict=False)])
        with torch.no_grad():
            lg = model(input_ids=ids).logits[0, len(p) - 1 : -1].float()
        return torch.log_softmax(lg, -1).gather(1, ids[0, len(p) :, None]).sum().item()

    correct = 0
    for r in rows:
        pol = logp(r["messages"])
        with model.disable_adapter():
            ref = logp(r["messages"])
        correct += (pol > ref) == r["label"]
    print(ds, "kto sign accuracy", correct / len(rows))
    assert correct / len(rows) > 0.6


def test_pretraining_loss_falls_on_default_model(tmp_path):
    """pt on demo_text: two documents seen three times; later passes have lower loss."""
    run = kit.train(
        e2e_cfg(tmp_path, stage="pt", dataset="demo_text", max_samples=2, max_steps=6, batch_size=2, learning_rate=1e-3)
    )
    ls = [l for _, l in run.losses()]
    assert run.status == "finished" and len(ls) == 6
    assert sum(ls[-2:]) / 2 < sum(ls[:2]) / 2, ls


def test_orpo_runs_and_margin_positive_on_default_model(tmp_path):
    # every step sees the same four pairs, so the margins are comparable across steps (batches of
    # different pairs made this a coin toss on the data order)
    run = kit.train(
        e2e_cfg(
            tmp_path,
            stage="dpo",
            loss_type="orpo",
            dataset=pref_dataset(),
            max_steps=4,
            max_samples=4,
            batch_size=4,
            learning_rate=5e-4,
        )
    )
    m = series(run, "rewards/margins")
    assert run.status == "finished" and len(m) == 4
    assert m[-1] > m[0], m


def test_ppo_with_reward_model_on_default_model(tmp_path):
    """rm then ppo on the real model: rollouts scored by the trained reward model, all PPO terms finite."""
    ds = pref_dataset()
    rm = kit.train(e2e_cfg(tmp_path / "rm", stage="rm", dataset=ds, max_steps=3, learning_rate=5e-4))
    register_dataset("e2e_ppo_prompt", [{"prompt": f"What color do you like, number {i}?"} for i in range(8)])
    run = kit.train(
        e2e_cfg(
            tmp_path / "ppo",
            stage="ppo",
            dataset="e2e_ppo_prompt",
            reward_model=str(rm.run_dir),
            stage__max_new_tokens=12,
            num_generations=2,
            max_steps=2,
            learning_rate=1e-4,
        )
    )
    assert run.status == "finished"
    for key in ("reward", "kl", "pg_loss", "vf_loss"):
        vals = series(run, key)
        assert len(vals) == 2 and all(v == v and abs(v) < 1e4 for v in vals), (key, vals)
