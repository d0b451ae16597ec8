from build_notebooks import code, md

TITLE = "Full, freeze and GaLore tuning: when to train every weight, and what it costs"
LEARN = [
    "the memory of a run, from the estimate: weights + gradients + optimizer state + activations",
    "full tuning (every weight), freeze tuning (only the last blocks) and GaLore (full, with a low-rank optimizer state)",
    "how to pick: LoRA when memory is short, freeze for a cheap full-precision update, full/GaLore when the task needs it",
]
RUNTIME = {"ci": "29 s (measured in a fresh-clone CI run on this 2-core CPU, nothing else running)", "cpu": "72 s (measured with these defaults in nbmake on one core of this 2-core CPU, a benchmark running on the other; load 3.58)", "gpu": 'about a minute on a T4 (estimate)'}

CELLS = [
    md("""
        ## Knobs
    """),
    code("""
        # Knobs: defaults are the full CPU settings; FORGE_NOTEBOOK_CI=1 (CI) makes every one tiny.
        import os
        CI = os.environ.get("FORGE_NOTEBOOK_CI") == "1"
        MODEL = os.environ.get("FORGE_NOTEBOOK_MODEL", "smollm2-135m-instruct")  # embedded: nothing is downloaded
        #   on a GPU try "Qwen/Qwen2.5-0.5B-Instruct"; full tuning of a 7B model needs about 16 bytes per weight
        METHOD = "freeze"         # full | freeze | galore (what this notebook trains)
        FREEZE_LAYERS = 2         # freeze: how many of the last decoder blocks train
        STEPS = int(os.environ.get("FORGE_NOTEBOOK_STEPS", 6 if CI else 30))    # optimizer updates
        ROWS = int(os.environ.get("FORGE_NOTEBOOK_ROWS", 4 if CI else 40))      # rows of demo_sft to read
        LEARNING_RATE = 1e-4 if CI else 2e-5   # full-weight updates want a far smaller rate than LoRA
        CUTOFF_LEN = 128          # tokens per example
        MAX_NEW_TOKENS = 16 if CI else 48      # length of the answers before / after
        PROMPTS = ["What is the capital of France?", "Give three tips for staying healthy."]
    """),
    md("""
        ## Model
    """),
    code("""
        import kit

        before = {p: kit.chat(MODEL, p, max_new_tokens=MAX_NEW_TOKENS) for p in PROMPTS}
        for p, a in before.items():
            print(f"{p}\\n  -> {a}\\n")
    """),
    md("""
        ## Adapter: full, freeze, GaLore (and LoRA to compare), with the memory estimate

        A training step holds four things in memory: the **weights**, a **gradient** for every trained weight,
        the **optimizer state** (AdamW keeps two numbers per trained weight) and the **activations** of the
        forward pass (they grow with batch × length). The estimate computes each from the model's shapes,
        without loading its weights:

        * `adapter.type="full"`: everything trains; gradients + AdamW cost 3× the weights again;
        * `adapter.type="freeze"`: only the last `freeze_trainable_layers` blocks train: full-precision updates at
          a fraction of the cost;
        * `train.optim="galore_adamw"` (with `full`): GaLore projects each gradient matrix onto a low-rank
          subspace, so AdamW's state is rank × width instead of width × width; the weights still all change;
        * LoRA: a few percent of the weights train; the cheapest, the usual choice.
    """),
    code("""
        from kit.widgets.estimate import estimate, human_bytes

        base = kit.RunConfig.from_kwargs(model=MODEL, dataset="demo_sft", max_samples=ROWS, cutoff_len=CUTOFF_LEN,
                                         max_steps=STEPS, batch_size=2, learning_rate=LEARNING_RATE,
                                         lr_scheduler="constant", logging_steps=1, save_steps=0)
        METHODS = {"full": base.replace(adapter__type="full"),
                   "freeze": base.replace(adapter__type="freeze", adapter__freeze_trainable_layers=FREEZE_LAYERS),
                   "galore": base.replace(adapter__type="full", train__optim="galore_adamw"),
                   "lora": base}
        print(f"{'method':8s} {'trained':>12s} {'weights':>10s} {'grads':>10s} {'optimizer':>10s} {'activations':>12s} {'total':>10s}")
        est = {}
        for name, c in METHODS.items():
            e = est[name] = estimate(c)
            print(f"{name:8s} {e['trainable']:>12,} {human_bytes(e['weights_bytes']):>10s} {human_bytes(e['grads_bytes']):>10s} "
                  f"{human_bytes(e['optimizer_bytes']):>10s} {human_bytes(e['activations_bytes']):>12s} {human_bytes(e['total_bytes']):>10s}")
        cfg = METHODS[METHOD]
        print()
        print(cfg)
    """),
    code("""
        # Effect check (the estimate): full trains every weight, freeze and LoRA a part; GaLore's optimizer
        # state is smaller than full AdamW's for the same trained weights
        assert est["full"]["trainable"] == est["full"]["total"] == est["galore"]["trainable"]
        assert est["lora"]["trainable"] < est["freeze"]["trainable"] < est["full"]["trainable"]
        assert est["galore"]["optimizer_bytes"] < est["full"]["optimizer_bytes"]
        assert est["lora"]["total_bytes"] < est["full"]["total_bytes"]
    """),
    md("""
        ## Data

        The first `demo_sft` example as tokens; the trained part (the answer) is green, `[[...]]` in the text.
    """),
    code("""
        from IPython.display import HTML, display
        from kit.preview import preview

        first = preview(cfg, 1)[0]
        print(first["rendered"])
        print(f"{first['n_tokens']} tokens, {first['n_trained']} of them trained")
        display(HTML(preview(cfg, 1, style="html")[0]["rendered"]))
    """),
    md("""
        ## Train

        The chosen `METHOD` trains; **Stop** works while it trains, the next cell waits for the end. The `model`
        event reports what actually trained, and the memory the engine estimated for the loaded model.
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
        losses = [loss for _, loss in run.losses()]
        info = next(e for e in run.events if e.kind == "model")
        print(f"{METHOD}: trained {info.get('trainable_params'):,} of {info.get('total_params'):,} parameters")
        print("losses:", [round(x, 3) for x in losses])
    """),
    code("""
        # Effect check: the run trained what the estimate said, and the loss falls
        assert info.get("trainable_params") == est[METHOD]["trainable"], (info.get("trainable_params"), est[METHOD])
        third = max(1, len(losses) // 3)
        assert sum(losses[-third:]) / third < sum(losses[:third]) / third, losses
    """),
    md("""
        ## Try it: the same prompts, before and after
    """),
    code("""
        after = {p: kit.chat(run, p, max_new_tokens=MAX_NEW_TOKENS) for p in PROMPTS}
        for p in PROMPTS:
            print(f"{p}\\n  before: {before[p]}\\n  after:  {after[p]}\\n")
    """),
    md("""
        ## Save

        Full and freeze runs save the whole model in `model/` (safetensors, loadable with plain `transformers`);
        there is nothing to merge.

        **Try next:** set `METHOD = "galore"` and compare its optimizer memory and losses with `"full"`, or raise
        `FREEZE_LAYERS` until freeze costs as much as LoRA would save.
    """),
    code("""
        weights = run.run_dir / "model"
        print(sorted(p.name for p in weights.iterdir()))
    """),
]
