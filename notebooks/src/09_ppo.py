from build_notebooks import code, md

TITLE = "PPO: reinforcement learning from a learned reward model"
LEARN = [
    "the RLHF recipe in two runs: a reward model learns which answers people prefer (from preference pairs), then "
    "PPO trains the chat model to write answers that reward model scores higher",
    "what PPO adds to GRPO: a value head that predicts the reward, per-token advantages (GAE), a clipped policy "
    "update, and a KL penalty that keeps the model close to where it started",
    "how to read PPO's curves (reward, KL, policy and value losses) and why a few CPU steps show mechanics, not gains",
]
RUNTIME = {"ci": "49 s (measured in a fresh-clone CI run on this 2-core CPU, nothing else running)", "cpu": "4 min 49 s (measured with these defaults in nbmake on one core of this 2-core CPU, a benchmark running on the other; load 3.74)", "gpu": "about 2 min"}

CELLS = [
    md("""
        ## Knobs

        Two trainings: the reward model (cheap: a classifier over preference pairs) and PPO (each step generates
        answers, scores them with the reward model, then optimises for `PPO_EPOCHS` passes over them).
    """),
    code("""
        # Knobs: defaults are the full CPU settings; FORGE_NOTEBOOK_CI=1 (CI) makes every one tiny.
        import os
        CI = os.environ.get("FORGE_NOTEBOOK_CI") == "1"
        MODEL = os.environ.get("FORGE_NOTEBOOK_MODEL", "smollm2-135m-instruct")  # embedded: nothing is downloaded
        #   on a GPU try "Qwen/Qwen2.5-0.5B-Instruct" (a hub id, downloaded once)
        RM_STEPS = int(os.environ.get("FORGE_NOTEBOOK_STEPS", 6 if CI else 20))  # reward-model updates
        PPO_STEPS = 2 if CI else 10      # PPO updates (each one generates, scores and optimises)
        ROWS = int(os.environ.get("FORGE_NOTEBOOK_ROWS", 16 if CI else 80))      # preference pairs / prompts read
        NUM_GENERATIONS = 2              # answers sampled per prompt in each PPO step
        ROLLOUT_TOKENS = 12 if CI else 32   # longest sampled answer
        PPO_EPOCHS = 2                   # optimisation passes over each batch of rollouts
        PPO_CLIP = 0.2                   # the policy ratio pi_new / pi_old is clipped to [1 - 0.2, 1 + 0.2]
        BETA = 0.1                       # KL penalty per token, towards the starting model
        VF_COEF = 0.1                    # weight of the value head's loss
        REUSE_RM = not CI                # reuse the newest reward model notebook 05 left in FORGE_HOME, if any
        MAX_NEW_TOKENS = 16 if CI else 48
        PROMPTS = ["What is the capital of France?", "Can you help me with my homework?"]
    """),
    md("""
        ## Model

        Both runs start from the embedded SmolLM2-135M-Instruct. The reward model is the same network with a
        one-number head instead of the vocabulary (a sequence classifier); the policy is the chat model with a LoRA
        adapter and a small value head on its last hidden state.
    """),
    code("""
        import kit

        before = {p: kit.chat(MODEL, p, max_new_tokens=MAX_NEW_TOKENS) for p in PROMPTS}
        for p, a in before.items():
            print(f"{p}\\n  -> {a}\\n")
    """),
    md("""
        ## Adapter

        Both runs train a LoRA adapter. For PPO that matters twice: the **reference** model for the KL penalty is the
        same model with the adapter switched off (no second copy in memory), and the value head is the only other
        new weight.
    """),
    md("""
        ## Data

        `demo_pref` has 80 prompt / chosen / rejected triples: the chosen answer is correct and polite, the rejected
        one wrong, rude, off-topic or an unjustified refusal. The reward model trains on the pairs; PPO needs only the
        prompts (the model writes its own answers), so we register the same prompts as a prompt dataset.
    """),
    code("""
        from kit.data import load_rows, register_dataset

        pairs, kind = load_rows("demo_pref", max_samples=ROWS)
        print(kind, len(pairs), "pairs; first prompt:", pairs[0]["prompt"][-1]["content"])
        print("  chosen:  ", pairs[0]["chosen"][-1]["content"])
        print("  rejected:", pairs[0]["rejected"][-1]["content"])
        register_dataset("pref_prompts", [{"prompt": r["prompt"][-1]["content"]} for r in pairs])
    """),
    md("""
        ## Train: the reward model

        The reward model learns `r(prompt, chosen) > r(prompt, rejected)` with the pairwise (Bradley-Terry) loss
        `-log sigmoid(r_chosen - r_rejected)`. Notebook [05](05_reward_model.ipynb) is about this step; here, the
        newest reward model run found in `FORGE_HOME` is reused when `REUSE_RM` is on, else one is trained.
        What you should see: the logged `accuracy` (pairs ranked the right way) climbs above 0.5.
    """),
    code("""
        import json
        from pathlib import Path
        from kit.paths import forge_home
        from kit.widgets import TrainPanel

        def newest_reward_model():
            found = []
            for state in (forge_home() / "runs").glob("*/state.json"):
                try:
                    finished = json.loads(state.read_text()).get("status") == "finished"
                    cfg = kit.rundir.RunDir(state.parent).config()
                except Exception:
                    continue
                if finished and cfg.stage.name == "rm" and cfg.model.name == MODEL:
                    found.append(state.parent)
            return max(found, key=lambda p: p.stat().st_mtime) if found else None

        rm_cfg = kit.RunConfig.from_kwargs(model=MODEL, stage="rm", dataset="demo_pref", max_samples=ROWS,
                                           max_steps=RM_STEPS, cutoff_len=128, batch_size=2, learning_rate=5e-4,
                                           lr_scheduler="constant", save_steps=0, logging_steps=1)
        reused = newest_reward_model() if REUSE_RM else None
        if reused is not None:
            print("reusing the reward model in", reused)
        else:
            panel = TrainPanel(rm_cfg)
            display(panel)
            rm_run = panel.start()      # returns at once: Stop works while it trains
    """),
    code("""
        if reused is None:
            rm_run.wait()
            assert rm_run.status == "finished", rm_run.traceback
            print("accuracy per step:", [round(e.get("accuracy"), 2) for e in rm_run.history if e.get("accuracy") is not None])
        rm_dir = str(reused or rm_run.run_dir)
        prompts = [r["prompt"][-1]["content"] for r in pairs]
        good = kit.score(rm_dir, prompts, [r["chosen"][-1]["content"] for r in pairs])
        bad = kit.score(rm_dir, prompts, [r["rejected"][-1]["content"] for r in pairs])
        rm_accuracy = sum(g > b for g, b in zip(good, bad)) / len(pairs)
        print(f"reward model ranks chosen above rejected on {rm_accuracy:.0%} of {len(pairs)} pairs")
        print("e.g.", round(good[0], 2), "(chosen) vs", round(bad[0], 2), "(rejected)")
    """),
    md("""
        ### PPO's knobs

        Per step:

        1. sample `NUM_GENERATIONS` answers per prompt (`ROLLOUT_TOKENS` at most);
        2. score each with the reward model (the whole answer gets one number, at its last token);
        3. per-token reward = that score at the end, minus `BETA x (log pi - log pi_ref)` at every token;
        4. the value head estimates future reward at each token; **GAE** turns rewards and values into advantages;
        5. `PPO_EPOCHS` passes of the clipped objective (ratio clipped to 1 ± `PPO_CLIP`), plus `VF_COEF` x value loss.
    """),
    code("""
        ppo_cfg = kit.RunConfig.from_kwargs(model=MODEL, stage="ppo", dataset="pref_prompts", max_samples=ROWS,
                                            reward_model=rm_dir, num_generations=NUM_GENERATIONS,
                                            stage__max_new_tokens=ROLLOUT_TOKENS, ppo_epochs=PPO_EPOCHS,
                                            ppo_clip=PPO_CLIP, beta=BETA, vf_coef=VF_COEF, max_steps=PPO_STEPS,
                                            batch_size=2, cutoff_len=128, learning_rate=1e-4, lora_rank=8,
                                            lr_scheduler="constant", save_steps=0, logging_steps=1)
        print(ppo_cfg)
    """),
    md("""
        ## Train: PPO

        What you should see: `reward` (the reward model's mean score of the step's answers) tends to rise over tens
        of steps, while `kl` grows from 0 as the model moves away from where it started (`BETA` holds it back). In a
        couple of CPU steps the numbers are noisy: this run shows the loop working, not a better model.
    """),
    code("""
        panel = TrainPanel(ppo_cfg)
        display(panel)
        run = panel.start()      # returns at once: Stop works while it trains
    """),
    code("""
        run.wait()
        print(run.status, "at step", run.global_step, "->", run.run_dir)
        assert run.status == "finished", run.traceback
        series = {k: [e.get(k) for e in run.history if e.get(k) is not None] for k in ("reward", "kl", "pg_loss", "vf_loss")}
        for k, v in series.items():
            print(f"{k:8s}", [round(x, 4) for x in v])
    """),
    code("""
        # Effect check: the reward model learned the preference, and every PPO step produced finite terms
        assert rm_accuracy > 0.5, rm_accuracy
        for k, v in series.items():
            assert len(v) == PPO_STEPS and all(x == x and abs(x) < 1e4 for x in v), (k, v)
        print("reward model accuracy", rm_accuracy, "| PPO steps", PPO_STEPS, "all finite")
    """),
    md("""
        ## Try it: the same prompts after PPO
    """),
    code("""
        after = {p: kit.chat(run, p, max_new_tokens=MAX_NEW_TOKENS) for p in PROMPTS}
        for p in PROMPTS:
            print(f"{p}\\n  before: {before[p]}\\n  after:  {after[p]}")
            print(f"  reward before {kit.score(rm_dir, p, before[p]):.2f}, after {kit.score(rm_dir, p, after[p]):.2f}\\n")
    """),
    md("""
        ## Save

        `<run dir>/adapter/` holds the policy's LoRA adapter; each checkpoint also keeps `value_head.safetensors`
        so `run.resume()` continues PPO exactly. Export it like any run (notebook [12](12_export.ipynb)).

        **Try next:** run 50 PPO steps on a GPU and plot `reward` against `kl`; raise `BETA` to 0.5 and watch the KL
        stay lower (and the reward rise more slowly). GRPO (notebook [08](08_grpo.ipynb)) reaches similar ends
        without a reward model or a value head when the reward can be checked by code.
    """),
    code("""
        print(sorted(p.name for p in run.run_dir.iterdir()))
    """),
]
