from build_notebooks import code, md

TITLE = "Continued pre-training on raw text"
LEARN = [
    "how pre-training (stage `pt`) differs from SFT: every token of raw text is trained, no chat template",
    "how to measure what the model learned: the loss (surprise) on a passage, before and after",
    "how text is cut into `cutoff_len` pieces and packed",
]
RUNTIME = {"ci": "32 s (measured in a fresh-clone CI run on this 2-core CPU, nothing else running)", "cpu": "86 s (measured with these defaults in nbmake on this 2-core CPU, nothing else running)", "gpu": 'about a minute (estimate)'}

CELLS = [
    md("""
        ## Knobs
    """),
    code("""
        # Knobs: defaults are the full CPU settings; FORGE_NOTEBOOK_CI=1 (CI) makes every one tiny.
        import os
        CI = os.environ.get("FORGE_NOTEBOOK_CI") == "1"
        MODEL = os.environ.get("FORGE_NOTEBOOK_MODEL", "smollm2-135m-instruct")  # embedded: nothing is downloaded
        #   a base (not instruct) model is the usual start for pre-training, e.g. "Qwen/Qwen2.5-0.5B" on a GPU
        STEPS = int(os.environ.get("FORGE_NOTEBOOK_STEPS", 6 if CI else 40))    # optimizer updates
        ROWS = int(os.environ.get("FORGE_NOTEBOOK_ROWS", 2 if CI else 60))      # documents of demo_text to read
        #   CI: 2 documents seen three times, so the fall of the loss is clear in 6 steps
        LEARNING_RATE = 1e-3 if CI else 3e-4   # LoRA learning rate
        CUTOFF_LEN = 128 if CI else 256        # tokens per training row
        PACKING = True            # pack documents back to back into rows of CUTOFF_LEN (no padding, no waste)
        MAX_NEW_TOKENS = 16 if CI else 40      # length of the continuations before / after
        PROMPTS = ["The Sun is a star at the centre of", "Photosynthesis is the process by which"]
    """),
    md("""
        ## Model

        Pre-training continues the model's first job: predicting the next token of plain text. Here we teach it
        the demo encyclopedia passages of `demo_text`. The untuned model's continuations of the first words:
    """),
    code("""
        import kit
        from kit.models import load_tokenizer

        tok = load_tokenizer(kit.RunConfig.from_kwargs(model=MODEL).model)
    """),
    md("""
        ## Adapter: LoRA on every linear layer

        Continued pre-training usually trains the full model on a large corpus; on a small corpus LoRA is
        enough and safe (the base weights stay as they are). `stage="pt"` switches the data to raw text.
    """),
    code("""
        cfg = kit.RunConfig.from_kwargs(model=MODEL, stage="pt", dataset="demo_text", max_samples=ROWS,
                                        cutoff_len=CUTOFF_LEN, packing=PACKING, max_steps=STEPS, batch_size=2,
                                        learning_rate=LEARNING_RATE, lr_scheduler="constant", lora_rank=16,
                                        logging_steps=1, save_steps=0)
        print(cfg)
    """),
    md("""
        ## Data

        A row of raw text: no chat template, no prompt, and every token is trained (all of it is green).
    """),
    code("""
        from IPython.display import HTML, display
        from kit.preview import preview

        first = preview(cfg, 1)[0]
        print(first["rendered"][:800])
        print(f"{first['n_tokens']} tokens, {first['n_trained']} of them trained")
        assert first["n_trained"] >= first["n_tokens"] - 1   # (the very first token has nothing to predict it)
        display(HTML(preview(cfg, 1, style="html")[0]["rendered"]))
    """),
    md("""
        ## Train

        **Stop** works while it trains; the next cell waits for the end. What you should see: the loss falls as
        the passages become familiar.
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
        print("losses:", [round(x, 3) for x in losses])
    """),
    md("""
        ## Try it: the same text, before (adapter off) and after

        The surprise of the model at a training passage (its mean loss per token, lower = more familiar) and
        its continuation of the same first words, with the adapter switched off (the base) and on (tuned):
    """),
    code("""
        import torch
        from kit.data import load_rows

        model = run.model.eval()
        passage = load_rows("demo_text", max_samples=1)[0][0]["text"]
        ids = torch.tensor([tok(passage, add_special_tokens=False)["input_ids"][:CUTOFF_LEN]])

        def surprise():
            with torch.no_grad():
                return model(input_ids=ids, labels=ids).loss.item()

        def continue_text(prompt):
            x = tok(prompt, return_tensors="pt", add_special_tokens=False)
            with torch.no_grad():
                out = model.generate(**x, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, pad_token_id=tok.eos_token_id)
            return tok.decode(out[0, x["input_ids"].shape[1]:], skip_special_tokens=True)

        with model.disable_adapter():
            base_loss, before = surprise(), {p: continue_text(p) for p in PROMPTS}
        tuned_loss, after = surprise(), {p: continue_text(p) for p in PROMPTS}
        print(f"loss on the first passage: base {base_loss:.3f} -> tuned {tuned_loss:.3f}\\n")
        for p in PROMPTS:
            print(f"{p} ...\\n  before: {before[p]}\\n  after:  {after[p]}\\n")
    """),
    code("""
        # Effect check: the loss fell during training, and the tuned model finds a training passage less surprising
        third = max(1, len(losses) // 3)
        assert sum(losses[-third:]) / third < sum(losses[:third]) / third, losses
        assert tuned_loss < base_loss, (base_loss, tuned_loss)
    """),
    md("""
        ## Save

        `adapter/` holds the LoRA weights. A pre-trained adapter is usually followed by SFT (notebook
        [01](01_sft_lora.ipynb)) so the model answers in chat form again.

        **Try next:** point `dataset` at your own `.txt`/`.jsonl` corpus (`{"text": ...}` rows, notebook
        [13](13_your_data.ipynb)), or set `PACKING = False` and compare the tokens/s.
    """),
    code("""
        print(sorted(p.name for p in (run.run_dir / "adapter").iterdir()))
    """),
]
