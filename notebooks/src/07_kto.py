from build_notebooks import code, md

TITLE = "KTO: learning from thumbs up / thumbs down"
LEARN = [
    "how KTO learns from single answers labelled good or bad, with no pairs needed",
    "the implied reward `log π(answer) − log π_ref(answer)` and how it separates the labels",
    "the weights for desirable and undesirable examples when the labels are unbalanced",
]
RUNTIME = {"ci": "52 s (measured in a fresh-clone CI run on this 2-core CPU, nothing else running)", "cpu": "4 min 48 s (measured with these defaults in nbmake on one core of this 2-core CPU, a benchmark running on the other; load 3.43)", "gpu": 'about a minute (estimate)'}

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
        BETA = 0.1                # how far from the reference the policy may move
        DESIRABLE_WEIGHT = 1.0    # raise it when good examples are rarer than bad ones (and vice versa)
        STEPS = int(os.environ.get("FORGE_NOTEBOOK_STEPS", 6 if CI else 30))    # optimizer updates
        ROWS = int(os.environ.get("FORGE_NOTEBOOK_ROWS", 16 if CI else 80))     # labelled answers of demo_kto
        LEARNING_RATE = 5e-4      # LoRA learning rate (constant)
        CUTOFF_LEN = 128          # tokens per prompt + answer
        MAX_NEW_TOKENS = 16 if CI else 48      # length of the answers before / after
        PROMPTS = ["What is the capital of Spain?", "What is 7 × 6?"]
    """),
    md("""
        ## Model

        As in DPO, a policy and a frozen reference (the same model with the LoRA adapter off). The untuned
        answers:
    """),
    code("""
        import kit

        before = {p: kit.chat(MODEL, p, max_new_tokens=MAX_NEW_TOKENS) for p in PROMPTS}
        for p, a in before.items():
            print(f"{p}\\n  -> {a}\\n")
    """),
    md("""
        ## Adapter: LoRA, and the KTO loss

        KTO (Kahneman-Tversky Optimisation) scores each answer by its implied reward
        `r = β·(log π(answer) − log π_ref(answer))` and compares it with a running estimate of the KL between
        policy and reference: desirable answers are pushed above it, undesirable ones below. Unlike DPO it needs
        no pairs, just a label per answer (a thumbs up or down, the data most products already collect).
    """),
    code("""
        cfg = kit.RunConfig.from_kwargs(model=MODEL, stage="kto", dataset="demo_kto", beta=BETA,
                                        kto_desirable_weight=DESIRABLE_WEIGHT, max_samples=ROWS, max_steps=STEPS,
                                        learning_rate=LEARNING_RATE, lr_scheduler="constant", cutoff_len=CUTOFF_LEN,
                                        batch_size=4, logging_steps=1, save_steps=0)
        print(cfg)
    """),
    md("""
        ## Data

        `demo_kto` rows are a conversation and a `label` (true = desirable). The first one as tokens; the
        trained part (the answer) is green, `[[...]]` in the text:
    """),
    code("""
        from IPython.display import HTML, display
        from kit.data import load_rows
        from kit.preview import preview

        rows = load_rows("demo_kto", max_samples=ROWS)[0]
        print("labels:", sum(r["label"] for r in rows), "desirable,", sum(not r["label"] for r in rows), "undesirable")
        first = preview(cfg, 1)[0]
        print(first["rendered"])
        display(HTML(preview(cfg, 1, style="html")[0]["rendered"]))
    """),
    md("""
        ## Train

        `rewards/chosen` is the mean implied reward of the desirable answers in a batch, `rewards/rejected` of
        the undesirable ones; their difference, `rewards/margins`, should grow. **Stop** works while it trains;
        the next cell waits.
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
        for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
            print(f"{key:17s}", [round(e.get(key), 3) for e in run.history if e.get(key) is not None])
    """),
    md("""
        ## Try it: the implied reward of every labelled answer, and the same prompts

        After training, the tuned model should find the desirable answers *more* likely than the reference does
        (positive implied reward) and the undesirable ones *less* likely:
    """),
    code("""
        import torch
        from kit.data.encode import encode_prompt

        model, tok = run.model.eval(), run.tokenizer

        def answer_logp(messages):
            prompt = encode_prompt(tok, messages[:-1])
            ids = torch.tensor([tok.apply_chat_template(messages, tokenize=True, return_dict=False)])
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].float()
            return torch.log_softmax(logits, -1).gather(1, ids[0, len(prompt):, None]).sum().item()

        implied = []
        for r in rows:
            policy = answer_logp(r["messages"])
            with model.disable_adapter():
                reference = answer_logp(r["messages"])
            implied.append((policy - reference, r["label"]))
        good = [v for v, label in implied if label]
        bad = [v for v, label in implied if not label]
        sign_ok = sum((v > 0) == label for v, label in implied) / len(implied)
        print(f"mean implied reward: desirable {sum(good) / len(good):+.3f}, undesirable {sum(bad) / len(bad):+.3f}; "
              f"sign matches the label on {sign_ok:.0%} of {len(implied)} answers")

        after = {p: kit.chat(run, p, max_new_tokens=MAX_NEW_TOKENS) for p in PROMPTS}
        for p in PROMPTS:
            print(f"{p}\\n  before: {before[p]}\\n  after:  {after[p]}\\n")
    """),
    code("""
        # Effect check: desirable answers gained likelihood relative to the undesirable ones
        assert sum(good) / len(good) > sum(bad) / len(bad), (good, bad)
    """),
    md("""
        ## Save

        `adapter/` holds the LoRA weights, as for DPO.

        **Try next:** drop half of the desirable rows and set `DESIRABLE_WEIGHT` to 2.0 to rebalance, or compare
        with DPO on pairs (notebook [06](06_dpo_family.ipynb)).
    """),
    code("""
        print(sorted(p.name for p in (run.run_dir / "adapter").iterdir()))
    """),
]
