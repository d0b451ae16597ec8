from build_notebooks import code, md

TITLE = "Supervised fine-tuning with LoRA and its variants (DoRA, rsLoRA, PiSSA, LoRA+)"
LEARN = [
    "what LoRA trains (two small matrices per linear layer) and how few parameters that is",
    "what DoRA, rsLoRA, PiSSA and LoRA+ change, and which knob turns each on",
    "how to read the loss of an SFT run and check that the answers changed",
]
RUNTIME = {"ci": "64 s (measured in a fresh-clone CI run on this 2-core CPU, nothing else running)", "cpu": "6 min 30 s (measured with these defaults in nbmake on one core of this 2-core CPU, a benchmark running on the other; load 3.54)", "gpu": 'about a minute on a T4 (estimate)'}

CELLS = [
    md("""
        ## Knobs

        `VARIANT` picks the LoRA flavour this notebook trains; `RUN_COMPARE` (off by default: it trains once
        per variant) trains all five on the same data and plots their losses side by side.
    """),
    code("""
        # Knobs: defaults are the full CPU settings; FORGE_NOTEBOOK_CI=1 (CI) makes every one tiny.
        import os
        CI = os.environ.get("FORGE_NOTEBOOK_CI") == "1"
        MODEL = os.environ.get("FORGE_NOTEBOOK_MODEL", "smollm2-135m-instruct")  # embedded: nothing is downloaded
        #   on a GPU try "Qwen/Qwen2.5-1.5B-Instruct" or "meta-llama/Llama-3.2-1B-Instruct"
        STEPS = int(os.environ.get("FORGE_NOTEBOOK_STEPS", 6 if CI else 40))    # optimizer updates
        ROWS = int(os.environ.get("FORGE_NOTEBOOK_ROWS", 4 if CI else 60))      # rows of demo_sft to read
        VARIANT = "dora"          # lora | dora | rslora | pissa | loraplus (explained below)
        LORA_RANK = 8             # r: the inner size of the two LoRA matrices (4-64 is usual)
        LORA_ALPHA = 16           # the update is scaled by alpha / r (rsLoRA: alpha / sqrt(r))
        LEARNING_RATE = 1e-3 if CI else 3e-4   # LoRA takes a larger learning rate than full tuning
        CUTOFF_LEN = 128 if CI else 256        # tokens per example (longer ones are cut)
        MAX_NEW_TOKENS = 16 if CI else 64      # length of the answers before / after
        RUN_COMPARE = os.environ.get("FORGE_NOTEBOOK_RUN_COMPARE") == "1"   # switch: trains all five variants
        PROMPTS = ["How do I make a basic tomato sauce for pasta?", "Give three tips for staying healthy."]
    """),
    md("""
        ## Model

        The embedded SmolLM2-135M-Instruct: small enough to fine-tune on a laptop CPU. Its answers before
        training, to compare with later:
    """),
    code("""
        import kit

        before = {p: kit.chat(MODEL, p, max_new_tokens=MAX_NEW_TOKENS) for p in PROMPTS}
        for p, a in before.items():
            print(f"{p}\\n  -> {a}\\n")
    """),
    md("""
        ## Adapter: LoRA and its variants

        **LoRA** freezes the model and learns, next to each chosen linear layer `W`, a low-rank update
        `B·A` (A is r×in, B is out×r, B starts at zero), so the layer computes `W·x + (alpha/r)·B·A·x`.
        The variants are one knob each:

        | variant | knob | what changes |
        |---|---|---|
        | LoRA | (default) | the update above |
        | DoRA | `use_dora=True` | splits each weight into a magnitude (a trained vector) and a direction (updated by LoRA); often closer to full tuning, slower per step |
        | rsLoRA | `use_rslora=True` | scales by `alpha/sqrt(r)` instead of `alpha/r`, so large ranks still learn |
        | PiSSA | `init="pissa"` | starts A and B from the top singular vectors of `W` (and removes them from `W`): the adapter starts on the weight's main directions and converges faster |
        | LoRA+ | `loraplus_lr_ratio=16` | gives B a learning rate 16 times A's (the two matrices play different roles) |

        The memory estimate counts the trained parameters of each without loading the model's weights:
    """),
    code("""
        from kit.widgets.estimate import estimate, human_bytes

        VARIANTS = {"lora": {}, "dora": {"adapter__use_dora": True}, "rslora": {"adapter__use_rslora": True},
                    "pissa": {"adapter__init": "pissa"}, "loraplus": {"adapter__loraplus_lr_ratio": 16.0}}
        base = kit.RunConfig.from_kwargs(model=MODEL, dataset="demo_sft", max_samples=ROWS, cutoff_len=CUTOFF_LEN,
                                         max_steps=STEPS, batch_size=2, learning_rate=LEARNING_RATE,
                                         lr_scheduler="constant", lora_rank=LORA_RANK, lora_alpha=LORA_ALPHA,
                                         logging_steps=1, save_steps=0)
        configs = {name: base.replace(**knobs) for name, knobs in VARIANTS.items()}
        for name, c in configs.items():
            e = estimate(c)
            print(f"{name:9s} trains {e['trainable']:>9,} of {e['total']:,} parameters "
                  f"({100 * e['trainable'] / e['total']:.2f}%), training memory about {human_bytes(e['total_bytes'])}")
        cfg = configs[VARIANT]
        print()
        print(cfg)
    """),
    md("""
        ## Data

        `demo_sft` is instruction / answer pairs (the alpaca format). The first one as the model sees it: the
        chat template around it, and only the answer is trained (green below, `[[...]]` in the text).
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

        The panel shows progress, tokens/s and the live loss plot; **Stop** works while it trains (the run is
        in the background), **Resume** continues from the checkpoint Stop leaves. The next cell waits.

        What you should see: the loss (the average surprise of the model at each answer token) falls.
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
        print(f"{VARIANT}: trained {info.get('trainable_params'):,} parameters; losses {[round(x, 3) for x in losses]}")
    """),
    code("""
        # Effect check: the loss falls (the last third of the steps averages below the first third)
        third = max(1, len(losses) // 3)
        assert sum(losses[-third:]) / third < sum(losses[:third]) / third, losses
    """),
    md("""
        ## Compare the variants (switch)

        With `RUN_COMPARE = True` every variant trains on the same rows with the same seed, one after the
        other, and their losses are drawn together. Expect PiSSA and LoRA+ to fall fastest at first, DoRA to
        be the slowest per step.
    """),
    code("""
        if RUN_COMPARE:
            import plotly.graph_objects as go

            fig = go.Figure()
            for name, c in configs.items():
                r = kit.Run(c).start()    # one after the other, blocking: a switch you turned on, no panel
                fig.add_scatter(x=[s for s, _ in r.losses()], y=[v for _, v in r.losses()], name=name, mode="lines")
            fig.update_layout(xaxis_title="step", yaxis_title="loss", height=350)
            fig.show()
        else:
            print("skipped: set RUN_COMPARE = True to train all five variants (about 5x the training time above)")
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

        `adapter/` in the run directory is the LoRA adapter (safetensors, a few MB): load it on top of the base
        model with `kit.chat(run_dir, ...)`, or merge it into a standalone model with `kit.export` (notebook
        [12](12_export.ipynb)).
    """),
    code("""
        adapter = run.run_dir / "adapter"
        for f in sorted(adapter.iterdir()):
            print(f"{f.name:32s} {f.stat().st_size / 2**20:7.2f} MiB")
    """),
    md("""
        **Try next:** set `VARIANT = "pissa"` and compare the first steps' loss with plain LoRA, or raise
        `LORA_RANK` to 64 with `VARIANT = "rslora"`.
    """),
]
