from build_notebooks import code, md

TITLE = "A reward model: score answers the way people would rank them"
LEARN = [
    "what a reward model is: the language model with a one-number head, trained on preference pairs",
    "the pairwise loss and the two numbers to watch: accuracy (chosen scored higher) and the margin",
    "how to score any answer with `kit.score` (PPO in notebook 09 uses this model as its reward)",
]
RUNTIME = {"ci": "33 s (measured in a fresh-clone CI run on this 2-core CPU, nothing else running)", "cpu": "65 s (measured with these defaults in nbmake on this 2-core CPU, nothing else running)", "gpu": 'about a minute (estimate)'}

CELLS = [
    md("""
        ## Knobs
    """),
    code("""
        # Knobs: defaults are the full CPU settings; FORGE_NOTEBOOK_CI=1 (CI) makes every one tiny.
        import os
        CI = os.environ.get("FORGE_NOTEBOOK_CI") == "1"
        MODEL = os.environ.get("FORGE_NOTEBOOK_MODEL", "smollm2-135m-instruct")  # embedded: nothing is downloaded
        #   on a GPU try "Qwen/Qwen2.5-0.5B-Instruct"
        STEPS = int(os.environ.get("FORGE_NOTEBOOK_STEPS", 6 if CI else 40))    # optimizer updates
        ROWS = int(os.environ.get("FORGE_NOTEBOOK_ROWS", 8 if CI else 80))      # preference pairs of demo_pref
        LEARNING_RATE = 5e-4      # LoRA + the new score head
        CUTOFF_LEN = 128          # tokens per prompt + answer
        # the same pairs are scored before (an untrained head) and after training
        PAIRS = [("What is the capital of Japan?", "The capital of Japan is Tokyo.", "The capital of Japan is Kyoto."),
                 ("How many continents are there?", "There are seven continents.", "Look it up yourself, it's not hard.")]
    """),
    md("""
        ## Model

        `stage="rm"` loads the model as a *sequence classifier*: the language model with its vocabulary head
        replaced by one linear layer that reads the last token and outputs one number, the reward. That head
        starts random; LoRA trains the body, the head trains in full.
    """),
    code("""
        import kit

        cfg = kit.RunConfig.from_kwargs(model=MODEL, stage="rm", dataset="demo_pref", max_samples=ROWS,
                                        cutoff_len=CUTOFF_LEN, max_steps=STEPS, batch_size=2,
                                        learning_rate=LEARNING_RATE, lr_scheduler="constant", logging_steps=1,
                                        save_steps=0)
        print(cfg)
    """),
    md("""
        ## Data

        A preference pair: one prompt, a *chosen* and a *rejected* answer. The model scores both; the loss
        `-log sigmoid(r_chosen - r_rejected)` pushes the chosen one's reward above the rejected one's.
        The preview shows the chosen side (the score is read at its last token):
    """),
    code("""
        from IPython.display import HTML, display
        from kit.preview import preview

        first = preview(cfg, 1)[0]
        print(first["rendered"])
        display(HTML(preview(cfg, 1, style="html")[0]["rendered"]))
    """),
    md("""
        ## Train

        Watch `accuracy` (the share of pairs in a batch whose chosen answer scores higher) and `margin` (the mean
        reward difference) rise. **Stop** works while it trains; the next cell waits.
    """),
    code("""
        from kit.widgets import TrainPanel

        panel = TrainPanel(cfg)  # progress, tokens/s, the live loss plot, Stop / Resume
        display(panel)
        run = panel.start()      # returns at once: Stop works while it trains
    """),
    code("""
        run.wait()               # the cells below need the trained run
        print(run.status, "at step", run.global_step, "->", run.run_dir)
        assert run.status == "finished", run.status
        margins = [e.get("margin") for e in run.history if e.get("margin") is not None]
        accuracy = [e.get("accuracy") for e in run.history if e.get("accuracy") is not None]
        print("margin:  ", [round(m, 3) for m in margins])
        print("accuracy:", [round(a, 2) for a in accuracy])
    """),
    md("""
        ## Try it: score answers

        `kit.score(run, prompt, answer)` returns the reward of one answer (lists give lists). On the training
        pairs, the chosen answer should now score higher than the rejected one on most rows:
    """),
    code("""
        from kit.data import load_rows

        for prompt, good, bad in PAIRS:
            g, b = kit.score(run, prompt, good), kit.score(run, prompt, bad)
            print(f"{prompt}\\n  chosen   {g:+.3f}  {good}\\n  rejected {b:+.3f}  {bad}\\n")
        rows = load_rows("demo_pref", max_samples=ROWS)[0]
        prompts = [r["prompt"] for r in rows]
        good = kit.score(run, prompts, [r["chosen"][-1]["content"] for r in rows])
        bad = kit.score(run, prompts, [r["rejected"][-1]["content"] for r in rows])
        pairwise = sum(g > b for g, b in zip(good, bad)) / len(rows)
        print(f"chosen scored above rejected on {pairwise:.0%} of the {len(rows)} training pairs (chance: 50%)")
    """),
    code("""
        # Effect check: the margin rose during training, and the model ranks the training pairs better than chance
        third = max(1, len(margins) // 3)
        assert sum(margins[-third:]) / third > sum(margins[:third]) / third, margins
        assert pairwise > 0.5, pairwise
    """),
    md("""
        ## Save

        The run directory holds the adapter and the score head; `kit.score(run_dir, ...)` loads them again,
        and PPO (notebook [09](09_ppo.ipynb)) takes the directory as `stage.reward_model`.

        **Try next:** score answers of your own, or train on more pairs (`ROWS = 80`) and watch the accuracy.
    """),
    code("""
        print(sorted(p.name for p in run.run_dir.iterdir()))
    """),
]
