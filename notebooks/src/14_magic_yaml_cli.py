from build_notebooks import code, md

TITLE = "One config, three front ends: the %forge_train magic, a YAML file and the forge CLI"
LEARN = [
    "how one YAML config trains the same run from a notebook magic (`%forge_train`, `%%forge_train`) and from a "
    "shell (`forge train`)",
    "how `key=value` overrides work the same everywhere (dotted `train.max_steps=5` or flat `max_steps=5`)",
    "what a config mistake looks like (one line naming the key, with a \"did you mean\"), and where runs are written",
]
RUNTIME = {"ci": "31 s (measured in a fresh-clone CI run on this 2-core CPU, nothing else running)", "cpu": "3 min 59 s (measured with these defaults in nbmake on one core of this 2-core CPU, a benchmark running on the other; load 4.44)", "gpu": "about 1 min"}

CELLS = [
    md("""
        ## Knobs

        The three runs below train the *same* config; only the front end differs. Keep the steps small: the point
        is that the three runs agree, not how far they get.
    """),
    code("""
        # Knobs: defaults are the full CPU settings; FORGE_NOTEBOOK_CI=1 (CI) makes every one tiny.
        import os
        CI = os.environ.get("FORGE_NOTEBOOK_CI") == "1"
        MODEL = os.environ.get("FORGE_NOTEBOOK_MODEL", "smollm2-135m-instruct")  # embedded: nothing is downloaded
        #   on a GPU try "Qwen/Qwen2.5-0.5B-Instruct" (a hub id, downloaded once)
        STEPS = int(os.environ.get("FORGE_NOTEBOOK_STEPS", 2 if CI else 10))   # optimizer updates per run
        ROWS = int(os.environ.get("FORGE_NOTEBOOK_ROWS", 8 if CI else 40))     # rows of demo_sft to read
        CUTOFF_LEN = 64 if CI else 256   # longest example in tokens
    """),
    md("""
        ## Model and data: the config as a YAML file

        A config is seven groups (`model`, `quant`, `adapter`, `data`, `stage`, `train`, `generate`); a file names
        only what differs from the defaults. `kit.RunConfig.from_yaml` reads it and checks every key and value
        when it is read, so a typo fails here, not an hour into training. `cfg.to_yaml(minimal=True)` writes
        the other way round.
    """),
    code("""
        import tempfile
        from pathlib import Path
        import kit

        work = Path(tempfile.mkdtemp(prefix="forge-frontends-"))
        yaml_text = f'''\\
        model:
          name: {MODEL}
        adapter:
          type: lora
          lora_rank: 8
        data:
          dataset: demo_sft
          max_samples: {ROWS}
          cutoff_len: {CUTOFF_LEN}
        train:
          max_steps: {STEPS}
          batch_size: 2
          learning_rate: 0.0005
          lr_scheduler: constant
          save_steps: 0
          logging_steps: 1
        '''
        config_path = work / "sft.yaml"
        config_path.write_text(yaml_text)
        cfg = kit.RunConfig.from_yaml(config_path)
        print(cfg.to_yaml(minimal=True))
    """),
    md("""
        Overrides are `key=value` strings, the same in the magic, the CLI and `cfg.override([...])`: dotted keys
        (`train.max_steps=3`) or flat ones when the name is unique (`max_steps=3`). A wrong key or value is refused
        with the key and the allowed values:
    """),
    code("""
        print(cfg.override(["max_steps=3", "adapter.lora_rank=4"]).train.max_steps)
        for bad in (["train.max_step=3"], ["adapter.type=lorra"], ["learning_rate=-1"]):
            try:
                cfg.override(bad)
            except kit.ConfigError as e:
                print(f"{bad[0]:22s} -> {e}")
    """),
    md("""
        ## Train: the `%forge_train` line magic

        `%load_ext kit` registers the magics. `%forge_train FILE [key=value ...]` shows the live training panel and
        returns the `Run` at once (it trains in the background, so **Stop** works); the next cell waits for it.
        Every run writes its own folder (`run.run_dir`): here we name it with `train.output_dir=` so the three runs
        sit side by side.
    """),
    code("""
        %load_ext kit
    """),
    code("""
        run_magic = %forge_train $config_path train.output_dir={work}/magic
    """),
    code("""
        run_magic.wait()
        print(run_magic.status, "at step", run_magic.global_step, "->", run_magic.run_dir)
        assert run_magic.status == "finished", run_magic.traceback
    """),
    md("""
        ## Train: the `%%forge_train` cell magic

        The cell body *is* the YAML (handy to share a whole run as one cell); overrides go on the first line, where
        `{name}` is a Python variable of the notebook (here the knobs' sizes, so CI can shrink them).
        `cfg.to_yaml(minimal=True)` printed above is exactly such a body.
    """),
    code("""
        %%forge_train train.output_dir={work}/cell model.name={MODEL} data.max_samples={ROWS} data.cutoff_len={CUTOFF_LEN} train.max_steps={STEPS}
        adapter: {type: lora, lora_rank: 8}
        data: {dataset: demo_sft}
        train: {batch_size: 2, learning_rate: 0.0005, lr_scheduler: constant, save_steps: 0, logging_steps: 1}
    """),
    code("""
        from kit.magics import ForgeMagics
        run_cell = get_ipython().magics_manager.registry[ForgeMagics.__name__].last_panel.run
        run_cell.wait()
        print(run_cell.status, "at step", run_cell.global_step, "->", run_cell.run_dir)
        assert run_cell.status == "finished", run_cell.traceback
    """),
    md("""
        A mistake in a magic is reported in one line (the key, the line of the YAML, a suggestion) and the magic
        returns `None`: no traceback to scroll through.
    """),
    code("""
        (work / "typo.yaml").write_text("model:\\n  name: smollm2-135m-instruct\\ntrain:\\n  max_step: 3\\n")
        result = %forge_train {work}/typo.yaml
        assert result is None
    """),
    md("""
        ## Train: the `forge` CLI

        The same file from a shell: `forge train sft.yaml train.output_dir=...`. From a notebook, run it as an
        **argument list** (`subprocess.run([...])`, never a shell string built from variables: a path with a space
        or a `;` in it stays one argument). `python -m kit.cli` is the same program as `forge`, and works even
        where the `forge` script is not on `PATH`.
    """),
    code("""
        import shutil, subprocess, sys

        print("forge on PATH:", shutil.which("forge"))
        argv = [sys.executable, "-m", "kit.cli", "train", str(config_path), f"train.output_dir={work}/cli"]
        print("$", " ".join(argv))
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
        print(proc.stdout[-2000:])
        print("exit code", proc.returncode)
        assert proc.returncode == 0, proc.stderr[-3000:]
    """),
    md("""
        The CLI's other commands read the same config or run folder: `forge preview sft.yaml -n 1` (the tokens that
        train), `forge chat RUN_DIR -m "..."`, `forge eval RUN_DIR -d demo_mc`, `forge export RUN_DIR --gguf q8_0`,
        `forge serve RUN_DIR`, `forge resume RUN_DIR`. And the other way round: a folder the CLI wrote is a run
        like any other here (`kit.open_run`, `kit.chat`):
    """),
    code("""
        run_cli = kit.open_run(work / "cli")
        print(run_cli.status, "|", kit.chat(work / "cli", "Who are you?", max_new_tokens=16))
    """),
    md("""
        ## Try it: three front ends, one run

        What you should see: every run folder holds the same `config.yaml` (apart from its own `output_dir`), and
        because the seed fixes the data order and the initialisation of the LoRA matrices, the three runs have the
        **same losses** step by step. `kit.open_run(folder)` reads any run folder back, including the CLI's.
    """),
    code("""
        runs = {"%forge_train": run_magic, "%%forge_train": run_cell, "forge train": run_cli}
        configs = {name: r.dir.config().replace(train__output_dir=None).to_dict() for name, r in runs.items()}
        losses = {name: [round(l, 4) for _, l in kit.open_run(r.run_dir).losses()] for name, r in runs.items()}
        for name in runs:
            print(f"{name:14s} losses {losses[name]}")
    """),
    code("""
        # Effect check: the same config gives the same run, whatever the front end
        first = next(iter(runs))
        for name in runs:
            assert configs[name] == configs[first], (name, configs[name], configs[first])
            assert len(losses[name]) == cfg.train.max_steps, losses
            assert all(abs(a - b) <= 2e-3 * max(1.0, abs(b)) for a, b in zip(losses[name], losses[first])), losses
        print("same config, same losses:", losses[first])
    """),
    md("""
        ## Save

        Each run folder is complete on its own: `config.yaml` (to train it again anywhere: `forge train
        config.yaml`), `events.jsonl` (every step), `state.json` and the `adapter/` weights.
    """),
    code("""
        for name, r in runs.items():
            print(f"{name:14s} {r.run_dir}: {sorted(p.name for p in Path(r.run_dir).iterdir())}")
    """),
    md("""
        **Try next:** run `forge train` on the same file in a terminal with `train.max_steps=20 lora_rank=16`, then
        `forge chat <run dir>`; or open the Board ([00](00_quickstart_board.ipynb)) and press *Show YAML* to get
        a file like the one above from the tabs.
    """),
]
