from build_notebooks import code, md

TITLE = "Evaluation: BLEU/ROUGE on answers, multiple-choice benchmarks, base and tuned side by side"
LEARN = [
    "the four ways `kit.evaluate` scores a model: predict (BLEU-4 / ROUGE of greedy answers), multiple choice "
    "(log-likelihood of each choice), MMLU-style benchmarks (k-shot, per subject) and perplexity",
    "how `compare_base=True` scores a fine-tuned run and the model it started from on the same rows, and writes "
    "both side by side into the run directory",
    "how to read the numbers: chance level, why a few rows are noisy, and what a fine-tune should and should not move",
]
RUNTIME = {"ci": "33 s (measured in a fresh-clone CI run on this 2-core CPU, nothing else running)", "cpu": "5 min 12 s (measured with these defaults in nbmake on this 2-core CPU, nothing else running)", "gpu": "about a minute (estimate)"}

CELLS = [
    md("""
        ## Knobs

        Evaluation cost grows with the rows scored (and, for predict mode, with the answer length). CI scores a
        handful of rows: enough to exercise every mode, far too few for numbers you would report.
    """),
    code("""
        # Knobs: defaults are the full CPU settings; FORGE_NOTEBOOK_CI=1 (CI) makes every one tiny.
        import os
        CI = os.environ.get("FORGE_NOTEBOOK_CI") == "1"
        MODEL = os.environ.get("FORGE_NOTEBOOK_MODEL", "smollm2-135m-instruct")  # embedded: nothing is downloaded
        #   on a GPU try "Qwen/Qwen2.5-0.5B-Instruct" (a hub id, downloaded once)
        STEPS = int(os.environ.get("FORGE_NOTEBOOK_STEPS", 4 if CI else 30))   # fine-tuning steps before we evaluate
        ROWS = int(os.environ.get("FORGE_NOTEBOOK_ROWS", 8 if CI else 40))     # training rows of demo_sft
        EVAL_ROWS = 4 if CI else 20          # rows scored per evaluation (predict and multiple choice)
        BENCH_QUESTIONS = 2 if CI else 8     # benchmark questions per subject (the shipped sample has 8)
        N_SHOT = 1 if CI else 5              # benchmark: solved examples from the dev split put before each question
        MAX_NEW_TOKENS = 16 if CI else 64    # predict mode: longest answer generated
        LEARNING_RATE = 1e-3 if CI else 5e-4
    """),
    md("""
        ## Model

        We evaluate the embedded SmolLM2-135M-Instruct before and after a short LoRA fine-tune on `demo_sft`. Any
        source works: a model name or path, a `Run`, a run folder, a config, a `.gguf` file (`kit.evaluate(source,
        dataset)`), and `forge eval SOURCE -d DATASET` is the same from a shell.
    """),
    code("""
        import json
        import kit

        print(kit.evaluate.__doc__.split("\\n\\n")[0])
    """),
    md("""
        ## Data

        * **predict** rows: any chat dataset (`demo_sft` here): the model answers each prompt greedily, and its
          answer is compared with the reference by **BLEU-4** (n-gram precision, smoothed) and **ROUGE-1/2/L**
          (unigram / bigram / longest-common-subsequence overlap, F1), all in percent;
        * **multiple choice** rows: `{"question", "choices", "answer"}` (`demo_mc`, 22 easy questions, 4 choices):
          no generation; each choice is scored by its log-probability as the answer, the likeliest wins;
          `accuracy_norm` divides by the choice's length so long choices are not penalised;
        * **benchmark** folders in the published MMLU / C-Eval / CMMLU layout (`data/mmlu_sample`: a `dev/` and a
          `test/` split, one CSV per subject): k-shot prompts from `dev`, scored by the answer letter's
          probability, per subject and on average. Point `dataset=` at the full MMLU folder to run it all.
    """),
    code("""
        from kit.benchmarks import load_benchmark
        from kit.data import load_rows

        bench = load_benchmark("mmlu_sample")
        print(f"mmlu_sample ({bench.layout} layout): test questions per subject",
              {s: len(qs) for s, qs in bench.questions.items()}, "| dev (k-shot) examples",
              {s: len(qs) for s, qs in bench.dev.items()})
        q = next(iter(bench.questions.values()))[0]
        print("a benchmark question:", q.question, q.choices, "answer", "ABCD"[q.answer])
        print("a multiple-choice row:", kit.data.read_file(kit.data.list_datasets()["demo_mc"].source)[0])
        print("a predict row:", dict(load_rows("demo_sft", max_samples=1)[0][0]))
    """),
    md("""
        ## Train

        A short LoRA fine-tune, so that there is a *tuned* model to compare with its *base*. What you should see:
        the loss falls (the model picks up the style of `demo_sft`'s answers).
    """),
    code("""
        from kit.widgets import TrainPanel

        cfg = kit.RunConfig.from_kwargs(model=MODEL, dataset="demo_sft", max_samples=ROWS, max_steps=STEPS,
                                        cutoff_len=128, batch_size=2, learning_rate=LEARNING_RATE, lora_rank=8,
                                        lr_scheduler="constant", save_steps=0, logging_steps=1)
        panel = TrainPanel(cfg)
        display(panel)
        run = panel.start()      # returns at once: Stop works while it trains
    """),
    code("""
        run.wait()
        print(run.status, "at step", run.global_step, "->", run.run_dir)
        assert run.status == "finished", run.traceback
        print("losses:", [round(l, 3) for _, l in run.losses()])
    """),
    md("""
        ## Try it: predict mode, tuned next to base

        `compare_base=True` evaluates the run and the model it started from (the same model without the adapter) on
        the same rows, and returns `{"tuned", "base", "delta"}` (delta = tuned - base). Everything is also written
        to `<run dir>/eval/<dataset>/`: `scores.json`, `predictions.jsonl` (one line per row: prompt, reference,
        prediction, its scores), the base's files under `base/`, and both side by side in `comparison.json`.

        What you should see: the tuned model's answers are closer to `demo_sft`'s references (we evaluate on rows it
        trained on, which measures *fitting*, not generalisation: use a held-out `eval_dataset` or `val_size` for
        that).
    """),
    code("""
        def table(res, keys):
            print(f"{'':10s}" + "".join(f"{k:>12s}" for k in keys))
            for side in ("base", "tuned", "delta"):
                print(f"{side:10s}" + "".join(f"{res[side][k]:12.2f}" for k in keys))

        pred = kit.evaluate(run, "demo_sft", max_samples=EVAL_ROWS, max_new_tokens=MAX_NEW_TOKENS, compare_base=True)
        table(pred, ["bleu-4", "rouge-1", "rouge-2", "rouge-l"])
        first = json.loads(open(pred["tuned"]["predictions"]).readline())
        print("\\nrow 0 prompt:    ", first["prompt"][-1]["content"] if isinstance(first["prompt"], list) else first["prompt"])
        print("row 0 reference: ", first["reference"][:200])
        print("row 0 prediction:", first["prediction"][:200])
        print("\\nwritten:", sorted(p.name for p in (run.run_dir / "eval" / "demo_sft").iterdir()))
    """),
    md("""
        ## Try it: multiple choice and a benchmark

        Log-likelihood scoring needs no generation, so it is cheap and deterministic. Read the accuracy against
        **chance** (25% with four choices): with a handful of questions one question moves the accuracy by many
        points, so only large differences mean anything. A fine-tune on a narrow dataset should leave general
        knowledge roughly where it was: a big drop is a sign of forgetting (too high a learning rate, too many steps).
    """),
    code("""
        mc = kit.evaluate(run, "demo_mc", max_samples=EVAL_ROWS, compare_base=True)
        table(mc, ["accuracy", "accuracy_norm"])
        print(f"chance: {mc['tuned']['chance']:.0f}% on {mc['tuned']['n']} questions")

        mmlu = kit.evaluate(run, "mmlu_sample", n_shot=N_SHOT, max_samples=BENCH_QUESTIONS, compare_base=True)
        print()
        table(mmlu, ["accuracy"])
        for subject, d in mmlu["delta"]["subjects"].items():
            print(f"  {subject:28s} base {mmlu['base']['subjects'][subject]['accuracy']:5.1f}%  "
                  f"tuned {mmlu['tuned']['subjects'][subject]['accuracy']:5.1f}%  delta {d:+.1f}")
    """),
    md("""
        Perplexity (`mode="ppl"`) is the fourth mode: how surprised the model is by a text (lower is better), here on
        `demo_text`'s paragraphs, which neither model was tuned on.
    """),
    code("""
        ppl = kit.evaluate(run, "demo_text", mode="ppl", max_samples=EVAL_ROWS, compare_base=True)
        table(ppl, ["perplexity"])
    """),
    code("""
        # Effect check: both sides are scored on the same rows, the delta is tuned - base, and the files are written
        from pathlib import Path
        for res in (pred, mc, mmlu, ppl):
            assert res["tuned"]["n"] == res["base"]["n"] > 0, res
            for k, d in res["delta"].items():
                if k != "subjects":
                    assert abs(d - (res["tuned"][k] - res["base"][k])) < 1e-3, (k, res)
            saved = json.loads(Path(res["comparison"]).read_text())
            assert saved["tuned"]["n"] == res["tuned"]["n"] and Path(res["output_dir"], "base", "scores.json").exists()
        for k in ("bleu-4", "rouge-1", "rouge-l"):
            assert 0 <= pred["tuned"][k] <= 100 and 0 <= pred["base"][k] <= 100
        assert 0 <= mc["tuned"]["accuracy"] <= 100 and mmlu["tuned"]["n"] == BENCH_QUESTIONS * len(mmlu["delta"]["subjects"])
        # the adapter changed the model: the scores of tuned and base are not all identical
        assert any(abs(v) > 0 for v in (pred["delta"]["rouge-l"], pred["delta"]["bleu-4"], ppl["delta"]["perplexity"]))
        # fitting the training rows: the tuned model's answers overlap their references at least as much as the base's
        assert pred["tuned"]["rouge-l"] >= pred["base"]["rouge-l"], pred["delta"]
        print("rouge-l on trained rows:", pred["base"]["rouge-l"], "->", pred["tuned"]["rouge-l"])
    """),
    md("""
        ## Save

        Every evaluation of a run lives in its folder, so the numbers travel with the weights:
    """),
    code("""
        for p in sorted((run.run_dir / "eval").rglob("*.json")):
            print(p.relative_to(run.run_dir))
    """),
    md("""
        **Try next:** split off a held-out set (`val_size=0.2` in the config) and evaluate on it to see
        generalisation instead of fitting, or run the full benchmark from a shell:
        `forge eval <run dir> -d mmlu_sample --n-shot 5 --compare-base`. The Board's *Evaluate* tab
        ([00](00_quickstart_board.ipynb)) does the same with a click.
    """),
]
