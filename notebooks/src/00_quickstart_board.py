from build_notebooks import code, md

TITLE = "Quickstart on the Board: fine-tune the default model and chat with it"
LEARN = [
    "what `kit.Board()` is: one tab per config group, Start / Stop / Resume and a live loss plot",
    "how a LoRA fine-tune of the embedded SmolLM2-135M-Instruct changes its answers",
    "that every setting on the Board is one `kit.RunConfig`, the same the CLI and YAML use",
]
RUNTIME = {"ci": "39 s (measured in a fresh-clone CI run on this 2-core CPU, nothing else running)", "cpu": "76 s (measured with these defaults in nbmake on this 2-core CPU, nothing else running)", "gpu": 'under a minute (estimate)'}

CELLS = [
    md("""
        ## Knobs

        Every number that decides how long this notebook takes is here. The defaults are the full CPU
        settings; automated runs set `FORGE_NOTEBOOK_CI=1` and get tiny ones.
    """),
    code("""
        # Knobs: defaults are the full CPU settings; FORGE_NOTEBOOK_CI=1 (CI) makes every one tiny.
        import os
        CI = os.environ.get("FORGE_NOTEBOOK_CI") == "1"
        MODEL = os.environ.get("FORGE_NOTEBOOK_MODEL", "smollm2-135m-instruct")  # embedded: nothing is downloaded
        #   on a GPU try "Qwen/Qwen2.5-0.5B-Instruct" (a hub id, downloaded once)
        STEPS = int(os.environ.get("FORGE_NOTEBOOK_STEPS", 6 if CI else 30))    # optimizer updates
        ROWS = int(os.environ.get("FORGE_NOTEBOOK_ROWS", 4 if CI else 40))      # rows of demo_sft to read
        #   CI: 4 rows, 6 steps of 2 = three passes over the same rows, so the fall is clear in a few steps
        LEARNING_RATE = 1e-3 if CI else 2e-4   # CI takes bigger steps so a few of them show the effect
        MAX_NEW_TOKENS = 16 if CI else 48      # length of the answers before / after
        PROMPTS = ["Give three tips for staying healthy.", "Who are you?"]
    """),
    md("""
        ## Model

        `kit.Board()` opens with the embedded default model, the `demo_sft` dataset and LoRA. Click through
        the tabs; hover a field for its documentation. First, how the untuned model answers our prompts (the
        same prompts are asked again after training):
    """),
    code("""
        import kit

        board = kit.Board()
        board
    """),
    code("""
        before = {p: kit.chat(MODEL, p, max_new_tokens=MAX_NEW_TOKENS) for p in PROMPTS}
        for p, a in before.items():
            print(f"{p}\\n  -> {a}\\n")
    """),
    md("""
        ## Adapter: LoRA, set from a config

        `board.load(cfg)` puts a whole config into the tabs (a `RunConfig`, a dict or a YAML path). Single
        fields can be changed through the tab widgets, exactly as a click would: here the Adapter tab's
        *lora rank* field. LoRA trains two small matrices next to each linear layer and leaves the model's
        weights as they are, so only a few percent of the parameters learn.
    """),
    code("""
        cfg = kit.RunConfig.from_kwargs(model=MODEL, dataset="demo_sft", max_samples=ROWS, cutoff_len=128,
                                        max_steps=STEPS, batch_size=2, learning_rate=LEARNING_RATE,
                                        lr_scheduler="constant", save_steps=0)
        board.load(cfg)
        board.adapter.form["adapter.lora_rank"].widget.value = 8     # the Adapter tab's "lora rank" field
        board.train.form["train.logging_steps"].widget.value = 1

        cfg = board.config()        # what Start will train
        assert cfg.adapter.lora_rank == 8 and cfg.train.max_steps == STEPS
        print(cfg.adapter.type, "rank", cfg.adapter.lora_rank, "|", cfg.data.dataset, "|", cfg.train.max_steps, "steps")
        print(board.show_yaml())    # the YAML tab: the same run as a file (or `board.show_magic()` for a cell)
    """),
    md("""
        ## Data: what the model is trained on

        The first training example as the model sees it: the chat template around the instruction and the
        answer. Only the answer is trained (green below, `[[...]]` in the text); the prompt is context.
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

        The Start button does `board.start()`. The progress bar, tokens/s and the loss plot under the tabs
        update while it trains. Training runs in the background, so **Stop** works while it trains (it stops
        after the current step and saves a checkpoint; **Resume** continues from it). The next cell waits for
        the end, so *Run All* is safe: during a Run All, interrupt the kernel (■) to get the buttons back.

        What you should see: the loss falls from about 2 towards 1 as the model picks up the answers' style.
    """),
    code("""
        run = board.start()      # returns at once: the board's Stop button works while it trains
    """),
    code("""
        run.wait()               # the cells below need the trained run
        print(run.status, "at step", run.global_step, "->", run.run_dir)
        assert run.status == "finished", run.status
        losses = [loss for _, loss in run.losses()]
        print("losses:", [round(x, 3) for x in losses])
    """),
    code("""
        # Effect check: the loss falls (the last third of the steps averages below the first third)
        third = max(1, len(losses) // 3)
        assert sum(losses[-third:]) / third < sum(losses[:third]) / third, losses
        assert board.train.plot.trace_points(0) == len(losses)   # every step is on the live plot
    """),
    md("""
        ## Try it: the same prompts, before and after

        The Chat tab uses the run as soon as it exists (tick *compare with base* to see the base model's
        answer next to it). From code, `kit.chat(run, ...)` answers with the tuned model:
    """),
    code("""
        after = {p: kit.chat(run, p, max_new_tokens=MAX_NEW_TOKENS) for p in PROMPTS}
        for p in PROMPTS:
            print(f"{p}\\n  before: {before[p]}\\n  after:  {after[p]}\\n")
        board.chat
    """),
    md("""
        ## Save

        The run directory already holds everything: `adapter/` (the LoRA weights, safetensors), `config.yaml`,
        `events.jsonl`. The same run as a `%%forge_train` cell, to paste into any notebook:
    """),
    code("""
        print(sorted(p.name for p in run.run_dir.iterdir()))
        print("%%forge_train\\n" + cfg.to_yaml(minimal=True))
    """),
    md("""
        **Try next:** set *lora rank* to 32 on the Adapter tab and press Start again, or switch the Stage tab to
        `dpo` with the `demo_pref` dataset (notebook [06](06_dpo_family.ipynb)). The next notebook,
        [01](01_sft_lora.ipynb), compares the LoRA variants.
    """),
]
