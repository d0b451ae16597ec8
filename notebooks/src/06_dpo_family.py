from build_notebooks import code, md

TITLE = "DPO and its loss family (IPO, hinge, ORPO, SimPO)"
LEARN = [
    "how DPO learns from preference pairs without a reward model: it raises the chosen answer's likelihood "
    "relative to a frozen reference, and lowers the rejected one's",
    "what the loss types change (sigmoid = DPO, ipo, hinge, orpo, simpo) and what `beta` does",
    "the number to watch, the reward margin, and how to read it",
]
RUNTIME = {"ci": "38 s (measured in a fresh-clone CI run on this 2-core CPU, nothing else running)", "cpu": "95 s (measured with these defaults in nbmake on this 2-core CPU, nothing else running)", "gpu": 'about a minute (estimate)'}

CELLS = [
    md("""
        ## Knobs
    """),
    code("""
        # Knobs: defaults are the full CPU settings; FORGE_NOTEBOOK_CI=1 (CI) makes every one tiny.
        import os
        CI = os.environ.get("FORGE_NOTEBOOK_CI") == "1"
        MODEL = os.environ.get("FORGE_NOTEBOOK_MODEL", "smollm2-135m-instruct")  # embedded: nothing is downloaded
        #   on a GPU try "Qwen/Qwen2.5-1.5B-Instruct"
        LOSS = "sigmoid"          # sigmoid (DPO) | ipo | hinge | orpo | simpo (table below)
        BETA = 0.1                # strength of the preference term (DPO: how far from the reference it may move)
        STEPS = int(os.environ.get("FORGE_NOTEBOOK_STEPS", 4 if CI else 30))    # optimizer updates
        ROWS = int(os.environ.get("FORGE_NOTEBOOK_ROWS", 8 if CI else 80))      # preference pairs of demo_pref
        LEARNING_RATE = 5e-4      # LoRA learning rate (constant)
        CUTOFF_LEN = 128          # tokens per prompt + answer
        MAX_NEW_TOKENS = 16 if CI else 48      # length of the answers before / after
        RUN_COMPARE = os.environ.get("FORGE_NOTEBOOK_RUN_COMPARE") == "1"   # switch: train every loss type
        PROMPTS = ["What is the capital of Japan?", "How many continents are there?"]
    """),
    md("""
        ## Model

        The policy (the model we train) starts as the embedded instruct model; DPO also needs a *reference*
        model, the frozen starting point. With LoRA the reference is free: the same model with the adapter off.
    """),
    code("""
        import kit

        before = {p: kit.chat(MODEL, p, max_new_tokens=MAX_NEW_TOKENS) for p in PROMPTS}
        for p, a in before.items():
            print(f"{p}\\n  -> {a}\\n")
    """),
    md("""
        ## Adapter: LoRA, and the loss family

        With `r = beta · (log π(answer) − log π_ref(answer))` (how much more likely the policy makes an answer
        than the reference), and `Δ = r_chosen − r_rejected`:

        | `loss_type` | loss | notes |
        |---|---|---|
        | `sigmoid` (DPO) | `−log σ(Δ)` | the original; keeps pushing Δ up |
        | `ipo` | `(Δ/β − 1/(2β))²` | squared: aims at a fixed margin, less over-fitting on small sets |
        | `hinge` | `max(0, 1 − Δ)` | stops once the margin is reached (SLiC) |
        | `orpo` | SFT loss − β·log σ(log-odds ratio) | no reference model: one model in memory |
        | `simpo` | `−log σ(β·(mean log π_c − mean log π_r) − γ)` | length-normalised, no reference; `simpo_gamma` is γ |
    """),
    code("""
        cfg = kit.RunConfig.from_kwargs(model=MODEL, stage="dpo", dataset="demo_pref", loss_type=LOSS, beta=BETA,
                                        max_samples=ROWS, max_steps=STEPS, learning_rate=LEARNING_RATE,
                                        lr_scheduler="constant", cutoff_len=CUTOFF_LEN, batch_size=2,
                                        logging_steps=1, save_steps=0)
        print(cfg)
    """),
    md("""
        ## Data

        `demo_pref` rows are `prompt` / `chosen` / `rejected`. The chosen side as tokens, the trained part (the
        answer) green, `[[...]]` in the text:
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

        `rewards/margins` is Δ: how much more the policy prefers the chosen answer than the reference does. It
        starts at 0 (policy = reference) and should rise. **Stop** works while it trains; the next cell waits.
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
        margins = [(e.step, e.get("rewards/margins")) for e in run.history if e.get("rewards/margins") is not None]
        print("margins:", [(s, round(m, 3)) for s, m in margins])

        import plotly.graph_objects as go
        fig = go.Figure(go.Scatter(x=[s for s, _ in margins], y=[m for _, m in margins], mode="lines+markers"))
        fig.update_layout(title=f"{LOSS}: reward margin (chosen − rejected)", xaxis_title="step",
                          yaxis_title="margin", height=300)
        fig.show()
    """),
    code("""
        # Effect check: the margin rises (the last step's is above the first's, and positive)
        m = [v for _, v in margins]
        assert m[-1] > m[0] and m[-1] > 0, m
    """),
    md("""
        ## Compare the loss family (switch)

        `RUN_COMPARE = True` trains each loss type on the same pairs, one after the other, and plots their
        margins. The scales differ (ORPO's and SimPO's rewards are not relative to a reference), so compare
        the shapes: hinge flattens once the margin is reached, IPO settles towards a fixed margin.
    """),
    code("""
        if RUN_COMPARE:
            fig = go.Figure()
            for loss in ("sigmoid", "ipo", "hinge", "orpo", "simpo"):
                r = kit.Run(cfg.replace(stage__loss_type=loss)).start()   # blocking: a switch you turned on, no panel
                ms = [(e.step, e.get("rewards/margins")) for e in r.history if e.get("rewards/margins") is not None]
                fig.add_scatter(x=[s for s, _ in ms], y=[v for _, v in ms], name=loss, mode="lines")
            fig.update_layout(xaxis_title="step", yaxis_title="margin", height=350)
            fig.show()
        else:
            print("skipped: set RUN_COMPARE = True to train all five loss types (about 5x the training time above)")
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

        `adapter/` holds the LoRA weights; chat with them (`kit.chat(run_dir, ...)`) or merge them (notebook
        [12](12_export.ipynb)).

        **Try next:** set `LOSS = "orpo"` (no reference model: less memory) or raise `BETA` to 0.5 and watch the
        margin grow more slowly.
    """),
    code("""
        print(sorted(p.name for p in (run.run_dir / "adapter").iterdir()))
    """),
]
