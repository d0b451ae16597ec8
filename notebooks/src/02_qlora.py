from build_notebooks import code, md

TITLE = "QLoRA: LoRA on a 4-bit or 8-bit base model"
LEARN = [
    "what QLoRA quantizes (the frozen base) and what stays in full precision (the LoRA matrices)",
    "how much memory 16, 8 and 4 bits take for the same model, from the memory estimate",
    "that a quantized base still learns: the loss falls and the answers change",
]
RUNTIME = {"ci": "53 s (measured in a fresh-clone CI run on this 2-core CPU, nothing else running)", "cpu": "2 min 9 s (measured with these defaults in nbmake on one core of this 2-core CPU, a benchmark running on the other; load 3.71)", "gpu": 'about a minute on a T4 (estimate)'}

CELLS = [
    md("""
        ## Knobs
    """),
    code("""
        # Knobs: defaults are the full CPU settings; FORGE_NOTEBOOK_CI=1 (CI) makes every one tiny.
        import os
        CI = os.environ.get("FORGE_NOTEBOOK_CI") == "1"
        MODEL = os.environ.get("FORGE_NOTEBOOK_MODEL", "smollm2-135m-instruct")  # embedded: nothing is downloaded
        #   QLoRA pays off on big models: on a GPU try "Qwen/Qwen2.5-7B-Instruct" (about 6 GB in 4 bits)
        BITS = 4                  # 4 (NF4, the QLoRA paper) or 8 (LLM.int8); bitsandbytes does both
        STEPS = int(os.environ.get("FORGE_NOTEBOOK_STEPS", 6 if CI else 30))    # optimizer updates
        ROWS = int(os.environ.get("FORGE_NOTEBOOK_ROWS", 4 if CI else 40))      # rows of demo_sft to read
        LORA_RANK = 8             # the adapter's rank; it trains in full precision on top of the quantized base
        LEARNING_RATE = 1e-3      # QLoRA uses the same (large) LoRA learning rates
        CUTOFF_LEN = 128          # tokens per example
        MAX_NEW_TOKENS = 16 if CI else 48      # length of the answers before / after
        PROMPTS = ["What is the capital of France?", "Give three tips for staying healthy."]
    """),
    md("""
        ## Model

        The same embedded model as before, in full precision for the "before" answers:
    """),
    code("""
        import kit

        before = {p: kit.chat(MODEL, p, max_new_tokens=MAX_NEW_TOKENS) for p in PROMPTS}
        for p, a in before.items():
            print(f"{p}\\n  -> {a}\\n")
    """),
    md("""
        ## Quantization: the base in 4 or 8 bits

        **QLoRA** = a **q**uantized, frozen base + **LoRA** adapters:

        * `quant.bits=4` stores the base's linear layers in 4 bits with the *NF4* data type (16 levels spaced for
          normally distributed weights); *double quantization* also shrinks the per-block scales. `bits=8` uses
          LLM.int8 (8-bit weights, outliers kept in 16 bits);
        * the base stays frozen (4-bit weights cannot take small gradient updates); the LoRA matrices next to each
          layer train in full precision, and each 4-bit block is dequantized on the fly in the forward pass.

        That is what lets a 7B model be fine-tuned on one consumer GPU. Full fine-tuning of a quantized base is
        refused when the config is built. The memory estimate for this model at each precision:
    """),
    code("""
        from kit.widgets.estimate import estimate, human_bytes

        cfg = kit.RunConfig.from_kwargs(model=MODEL, dataset="demo_sft", quant__bits=BITS, quant__quant_type="nf4",
                                        quant__double_quant=True, lora_rank=LORA_RANK, max_steps=STEPS,
                                        learning_rate=LEARNING_RATE, lr_scheduler="constant", batch_size=2,
                                        cutoff_len=CUTOFF_LEN, max_samples=ROWS, logging_steps=1, save_steps=0)
        for bits in (None, 8, 4):
            e = estimate(cfg.replace(quant__bits=bits))
            print(f"{bits or 'fp32/16':>7} bits: weights {human_bytes(e['weights_bytes']):>10}, "
                  f"training total about {human_bytes(e['total_bytes'])}")
        try:
            cfg.replace(adapter__type="full")
        except kit.ConfigError as err:
            print("\\nrefused:", err)
        print()
        print(cfg)
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

        4-bit matmuls on a CPU dequantize every block on the fly, so a QLoRA step is slower here than a LoRA step;
        on a GPU the same kernels are fast. **Stop** works while it trains; the next cell waits for the end.
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
        import bitsandbytes as bnb
        layer = bnb.nn.Linear4bit if BITS == 4 else bnb.nn.Linear8bitLt
        base_model = run.model.get_base_model()
        n_quant = sum(isinstance(m, layer) for m in base_model.modules())
        print(f"{n_quant} linear layers in {BITS} bits; base weights in memory "
              f"{base_model.get_memory_footprint() / 2**20:.0f} MiB (embeddings and norms stay unquantized)")
    """),
    code("""
        # Effect check: the base really is quantized, and the loss still falls on it
        assert n_quant > 0, "no quantized layer in the base model"
        third = max(1, len(losses) // 3)
        assert sum(losses[-third:]) / third < sum(losses[:third]) / third, losses
    """),
    md("""
        ## Try it: the same prompts, before and after

        The tuned answers come from the quantized base + the adapter:
    """),
    code("""
        after = {p: kit.chat(run, p, max_new_tokens=MAX_NEW_TOKENS) for p in PROMPTS}
        for p in PROMPTS:
            print(f"{p}\\n  before: {before[p]}\\n  after:  {after[p]}\\n")
    """),
    md("""
        ## Save

        The run keeps only the adapter (`adapter/`); the base is re-quantized when it is loaded. Merging a QLoRA
        adapter is done on a full-precision copy of the base (a 4-bit weight cannot take the LoRA delta
        exactly): notebook [12](12_export.ipynb).

        **Try next:** set `BITS = 8` and compare the memory estimate and the losses with the 4-bit run.
    """),
    code("""
        print(sorted(p.name for p in (run.run_dir / "adapter").iterdir()))
    """),
]
