from build_notebooks import code, md

TITLE = "GRPO: reinforcement learning with a verifiable reward"
LEARN = [
    "how GRPO learns from rewards instead of reference answers: sample a group of answers per prompt, score each "
    "with a rule, push the model towards the answers that scored above their group's mean",
    "how to write a reward function (a plain Python function of the prompts and completions) and combine it with "
    "the built-in ones (`exact_match`, `contains`, `format:<regex>`, `length:<chars>`)",
    "what each GRPO knob does (group size, rollout length, temperature, beta) and how to read the reward curve",
]
RUNTIME = {"ci": "39 s (measured in a fresh-clone CI run on this 2-core CPU, nothing else running)", "cpu": "4 min 47 s (measured with these defaults in nbmake on one core of this 2-core CPU, a benchmark running on the other; load 3.85)", "gpu": "about 2 min (faster still with stage.use_vllm)"}

CELLS = [
    md("""
        ## Knobs

        GRPO generates while it trains: every step samples `NUM_GENERATIONS` answers for each prompt, so a step costs
        about as much as that many chat answers plus a training pass. Keep answers short on a CPU.
    """),
    code("""
        # Knobs: defaults are the full CPU settings; FORGE_NOTEBOOK_CI=1 (CI) makes every one tiny.
        import os
        CI = os.environ.get("FORGE_NOTEBOOK_CI") == "1"
        MODEL = os.environ.get("FORGE_NOTEBOOK_MODEL", "smollm2-135m-instruct")  # embedded: nothing is downloaded
        #   on a GPU try "Qwen/Qwen2.5-0.5B-Instruct": it solves some of the sums, so exact_match alone can teach it
        STEPS = int(os.environ.get("FORGE_NOTEBOOK_STEPS", 6 if CI else 20))   # optimizer updates
        ROWS = int(os.environ.get("FORGE_NOTEBOOK_ROWS", 16 if CI else 80))    # prompts read from demo_prompt
        NUM_GENERATIONS = 4      # the "group": answers sampled per prompt; advantages are relative to the group
        BATCH_SIZE = 4 if CI else 8   # answers per step = (BATCH_SIZE / NUM_GENERATIONS) prompts x NUM_GENERATIONS
        ROLLOUT_TOKENS = 12 if CI else 24   # longest sampled answer during training
        TEMPERATURE = 1.0        # sampling temperature of the rollouts: the group must differ to learn anything
        BETA = 0.0               # KL penalty to the starting model (0: none, the DeepSeek-R1 / Dr. GRPO choice)
        LEARNING_RATE = 1e-3     # high for RL, fine for a short LoRA run
        TARGET_CHARS = 15        # our brevity reward peaks at answers of this length
        MAX_NEW_TOKENS = 16 if CI else 48   # answers shown before / after
        PROMPTS = ["What is 7 + 5? Answer with the number only.", "What is 9 + 8? Reply with just the number."]
    """),
    md("""
        ## Model

        The embedded SmolLM2-135M-Instruct: a chatty model that rarely answers with "the number only". Its answers
        before RL (greedy):
    """),
    code("""
        import kit

        before = {p: kit.chat(MODEL, p, max_new_tokens=MAX_NEW_TOKENS) for p in PROMPTS}
        for p, a in before.items():
            print(f"{p}\\n  -> {a!r}\\n")
    """),
    md("""
        ## Adapter and the reward

        A **reward function** takes the batch's prompts and completions (plus the dataset's other columns, here
        `answer`, as keyword lists) and returns one float per completion. It is ordinary Python: anything you can
        check with code is a verifiable reward (a unit test passing, a JSON schema, a regex, a calculator).

        We combine two rewards (they are summed):

        * `contains`: 1 when the right answer appears in the completion (built in; `exact_match` is stricter);
        * `brevity`, our own function below: 1 for an answer of `TARGET_CHARS` characters, falling off linearly. This
          is what the tiny model can learn in a few CPU steps: it rarely gets sums right, so `contains` alone would
          give most groups the same reward and nothing to learn from (GRPO learns only from differences *within* a
          group; `frac_reward_zero_std` in the logs is the share of groups with none).

        Adapter: LoRA (the default), so the reference model for the optional KL term is the same model with the
        adapter switched off: no second copy in memory.
    """),
    code("""
        def brevity(prompts, completions, **columns):
            \"\"\"1.0 for an answer of TARGET_CHARS characters, 0 at twice that or more.\"\"\"
            texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
            return [max(0.0, 1.0 - abs(len(t.strip()) - TARGET_CHARS) / TARGET_CHARS) for t in texts]

        print(brevity(None, ["12", "The answer is 12.", "Sure! 7 + 5 is 12 because seven plus five makes twelve."]))
    """),
    md("""
        ## Data: prompts with checkable answers

        GRPO needs no reference answers to imitate, only **prompts**, and (for a verifiable reward) something to
        check the model's answer against: `demo_prompt` has 80 easy sums, copy and count tasks, each with its
        `answer`. The model's own completions are what trains; the prompt is context.
    """),
    code("""
        from kit.data import load_rows

        rows, kind = load_rows("demo_prompt", max_samples=ROWS)
        print(kind, len(rows), "rows; first:", dict(rows[0]))
    """),
    code("""
        cfg = kit.RunConfig.from_kwargs(
            model=MODEL, stage="grpo", dataset="demo_prompt", max_samples=ROWS, cutoff_len=64,
            reward_funcs=["contains", brevity],   # built-in names, Python callables, or "module:function"
            num_generations=NUM_GENERATIONS, stage__max_new_tokens=ROLLOUT_TOKENS, stage__temperature=TEMPERATURE,
            beta=BETA, batch_size=BATCH_SIZE, max_steps=STEPS, learning_rate=LEARNING_RATE,
            lr_scheduler="constant", lora_rank=8, save_steps=0, logging_steps=1)
        print(cfg)
    """),
    md("""
        ## Train

        Each step: sample `NUM_GENERATIONS` answers per prompt, score them, compute each answer's **advantage**
        (its reward minus its group's mean, divided by the group's spread), and raise the probability of the tokens
        of above-average answers (lower it for below-average ones). No value network, no reward model: the group is
        the baseline. That is what makes GRPO cheap.

        What you should see: `reward` (the mean over the step's answers) rises as the answers get shorter and stay
        on topic; the live plot shows the loss, which for GRPO hovers around 0 and is *not* the thing to watch.
    """),
    code("""
        from kit.widgets import TrainPanel

        panel = TrainPanel(cfg)
        display(panel)
        run = panel.start()      # returns at once: Stop works while it trains
    """),
    code("""
        run.wait()
        print(run.status, "at step", run.global_step, "->", run.run_dir)
        assert run.status == "finished", run.traceback
        rewards = [e.get("reward") for e in run.history if e.get("reward") is not None]
        correct = [e.get("rewards/contains/mean") for e in run.history if e.get("reward") is not None]
        short = [e.get("rewards/brevity/mean") for e in run.history if e.get("reward") is not None]
        lengths = [e.get("completions/mean_length") for e in run.history if e.get("reward") is not None]
        print("reward  ", [round(r, 2) for r in rewards])
        print(" contains", [round(r, 2) for r in correct])
        print(" brevity ", [round(r, 2) for r in short])
        print("mean answer length (tokens)", [round(x, 1) for x in lengths if x is not None])
    """),
    code("""
        # Effect check: the reward rises (mean of the last three steps above the first three's)
        k = min(3, len(rewards) // 2)
        assert len(rewards) == STEPS, rewards
        first, last = sum(rewards[:k]) / k, sum(rewards[-k:]) / k
        assert last > first, (first, last, rewards)
        print(f"reward {first:.2f} -> {last:.2f}")
    """),
    md("""
        ## Try it: the same prompts after RL

        Greedy answers before and after. Expect shorter answers; whether they are *right* depends on the model: a
        135M model knows few sums, and RL can only reinforce what the model sometimes does already.
    """),
    code("""
        after = {p: kit.chat(run, p, max_new_tokens=MAX_NEW_TOKENS) for p in PROMPTS}
        for p in PROMPTS:
            print(f"{p}\\n  before: {before[p]!r}\\n  after:  {after[p]!r}\\n")
    """),
    md("""
        ## Save

        The LoRA adapter is in `<run dir>/adapter/`; `config.yaml` records the reward functions (our `brevity` as
        `__main__:brevity`: to train it again from YAML, put it in a module and set `train.allow_code: true`, which
        opts in to importing code named by a config).
    """),
    code("""
        print(sorted(p.name for p in run.run_dir.iterdir()))
        print(run.config.to_yaml(minimal=True))
    """),
    md("""
        **Try next:** replace the rewards with `["exact_match"]` on a bigger model (Qwen2.5-0.5B on a GPU) and watch
        `rewards/exact_match/mean`; or add `"format:<answer>.+?</answer>"` to teach an answer format. PPO with a
        learned reward model is notebook [09](09_ppo.ipynb).
    """),
]
