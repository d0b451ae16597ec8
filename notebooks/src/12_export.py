from build_notebooks import code, md

TITLE = "Export: merged weights, an Ollama Modelfile, GGUF for llama.cpp, a Hub-ready folder"
LEARN = [
    "what `kit.export` writes: the LoRA merged into full safetensors weights, a model card, an Ollama `Modelfile`, "
    "and GGUF files that llama.cpp, Ollama and LM Studio run",
    "how the GGUF types trade size for fidelity (f16, q8_0, q4_0 ...), and how to check an export answers like the "
    "model you trained",
    "how to keep the adapter on its own (for PEFT, vLLM's LoRA loader or the Hub) and what a Hub upload would send",
]
RUNTIME = {"ci": "50 s (measured in a fresh-clone CI run on this 2-core CPU, nothing else running)", "cpu": "109 s (measured with these defaults in nbmake on one core of this 2-core CPU, a benchmark running on the other; load 3.52)", "gpu": "about 1 min"}

CELLS = [
    md("""
        ## Knobs

        Exporting a 135M model takes seconds; a 7B model takes minutes and tens of GB of disk, which is why each
        export step has a switch. The GGUF step is on by default here because the embedded model is small;
        uploading to the Hub is off (it needs a login and is not undone by re-running).
    """),
    code("""
        # Knobs: defaults are the full CPU settings; FORGE_NOTEBOOK_CI=1 (CI) makes every one tiny.
        import os
        CI = os.environ.get("FORGE_NOTEBOOK_CI") == "1"
        MODEL = os.environ.get("FORGE_NOTEBOOK_MODEL", "smollm2-135m-instruct")  # embedded: nothing is downloaded
        #   on a GPU try "Qwen/Qwen2.5-0.5B-Instruct" (a hub id, downloaded once)
        STEPS = int(os.environ.get("FORGE_NOTEBOOK_STEPS", 3 if CI else 20))   # fine-tuning steps before we export
        ROWS = int(os.environ.get("FORGE_NOTEBOOK_ROWS", 8 if CI else 40))     # rows of demo_sft
        GGUF_TYPE = "q8_0"      # f16 (exact, 2 bytes/weight), q8_0 (about half of f16, near-identical answers),
        #                         q4_0 / q4_1 / q5_0 / q5_1 (smaller, noisier); k-quants (q4_k_m) need llama-quantize
        RUN_GGUF = os.environ.get("FORGE_NOTEBOOK_RUN_GGUF", "1") == "1"   # switch: write the GGUF (seconds for 135M)
        RUN_OLLAMA = os.environ.get("FORGE_NOTEBOOK_RUN_OLLAMA") == "1"    # switch: `ollama create` (needs ollama)
        RUN_PUSH = os.environ.get("FORGE_NOTEBOOK_RUN_PUSH") == "1"        # switch: upload the adapter to the Hub
        PUSH_TO = "you/smollm2-forge-demo"   # the Hub repo id to upload to (needs `hf auth login`)
        MAX_NEW_TOKENS = 16 if CI else 48
        PROMPTS = ["What is the capital of France?", "Who are you?"]
    """),
    md("""
        ## Model

        We export a short LoRA fine-tune of the embedded SmolLM2-135M-Instruct (any finished run folder works:
        `kit.export("path/to/run")`, or `forge export RUN_DIR` in a shell).
    """),
    code("""
        import kit
        from kit.widgets import TrainPanel
        print(kit.export.__doc__.split("\\n\\n")[0])
    """),
    md("""
        ## Data

        `demo_sft`'s instruction / answer pairs; nothing about the data changes what an export contains (the
        tokenizer and its chat template travel with every export, so the exported model formats chats as in training).
    """),
    code("""
        cfg = kit.RunConfig.from_kwargs(model=MODEL, dataset="demo_sft", max_samples=ROWS, max_steps=STEPS,
                                        cutoff_len=128, batch_size=2, learning_rate=1e-3, lora_rank=8,
                                        lr_scheduler="constant", save_steps=0)
        print(cfg)
    """),
    md("""
        ## Train
    """),
    code("""
        panel = TrainPanel(cfg)
        display(panel)
        run = panel.start()      # returns at once: Stop works while it trains
    """),
    code("""
        run.wait()
        print(run.status, "at step", run.global_step, "->", run.run_dir)
        assert run.status == "finished", run.traceback
    """),
    md("""
        ## Try it: the tuned run, before any export

        These answers (greedy) are the reference every export is compared with.
    """),
    code("""
        tuned = {p: kit.chat(run, p, max_new_tokens=MAX_NEW_TOKENS) for p in PROMPTS}
        tuned_ids = kit.ChatModel.load(run).generate_ids(PROMPTS[0], max_new_tokens=MAX_NEW_TOKENS)
        for p, a in tuned.items():
            print(f"{p} -> {a}")
    """),
    md("""
        ## Save: merge and export

        `kit.export(run, gguf=...)` writes, into `<run dir>/export`:

        | file | what it is for |
        |---|---|
        | `model.safetensors` + `config.json` + tokenizer files | the **merged** model: the LoRA matrices folded into the base weights (W + BA), so it loads with plain `transformers`, vLLM or a further fine-tune, without peft. The merge runs on an fp32 copy of the base (so a QLoRA run exports full-precision weights); `dtype="bfloat16"` halves the files. |
        | `README.md` | a model card: base model, method, data, hyper-parameters, the run's final metrics |
        | `export-q8_0.gguf` | one self-contained file (weights, config, tokenizer, chat template) for **llama.cpp**, **Ollama**, LM Studio |
        | `Modelfile` | the recipe for **Ollama**: `FROM` the GGUF, the chat `TEMPLATE` translated from the tokenizer's template, the stop tokens, the system prompt |
    """),
    code("""
        res = kit.export(run, gguf=GGUF_TYPE if RUN_GGUF else None)
        print("exported to", res["out_dir"], "| merged:", res["merged"])
        for name, size in res["files"]:
            print(f"  {name:28s} {size / 2**20:8.1f} MiB")
        if not RUN_GGUF:
            print("GGUF skipped: set RUN_GGUF = True (or FORGE_NOTEBOOK_RUN_GGUF=1) to write it")
    """),
    md("""
        The merged model is a plain model folder: `kit.chat` (or `AutoModelForCausalLM.from_pretrained`) loads it with
        no adapter. Greedy answers should be the tuned run's, token for token: the merge changes how the weights are
        stored, not what they compute (up to float rounding).
    """),
    code("""
        merged = kit.ChatModel.load(res["out_dir"])
        merged_ids = merged.generate_ids(PROMPTS[0], max_new_tokens=MAX_NEW_TOKENS)
        print("tuned :", tuned[PROMPTS[0]])
        print("merged:", merged.generate(PROMPTS[0], max_new_tokens=MAX_NEW_TOKENS))
        print(open(res["card"]).read()[:600], "...")
    """),
    code("""
        # Effect check: the export is complete and the merged model computes what the tuned run does
        from pathlib import Path
        names = {n for n, _ in res["files"]}
        assert res["merged"] and {"config.json", "Modelfile", "README.md"} <= names, names
        assert any(n.endswith(".safetensors") for n in names) and not any(n.endswith((".bin", ".pt")) for n in names)
        assert merged_ids == tuned_ids, (merged_ids, tuned_ids)
        if RUN_GGUF:
            assert Path(res["gguf"]).stat().st_size > 50 * 2**20 and res["gguf"].endswith(f"-{GGUF_TYPE}.gguf")
        print("merged == tuned, token for token")
    """),
    md("""
        ### The GGUF file

        `transformers` can read a GGUF back (it dequantizes the weights and rebuilds the tokenizer and chat template
        from the file alone): a quick check that the file is self-contained. q8_0 keeps 8 bits per weight in blocks
        of 32 with one scale each, so answers rarely differ from the merged model's.
    """),
    code("""
        if RUN_GGUF:
            gguf_answer = kit.chat(res["gguf"], PROMPTS[0], max_new_tokens=MAX_NEW_TOKENS)
            print("merged:", merged.generate(PROMPTS[0], max_new_tokens=MAX_NEW_TOKENS))
            print("GGUF  :", gguf_answer)
        else:
            print("skipped: no GGUF written (RUN_GGUF is off)")
    """),
    md("""
        In **llama.cpp** itself (through `llama-cpp-python`, the `llamacpp` extra): this is what Ollama and LM Studio
        run, and on a CPU it decodes several times faster than transformers. `generate.backend="llamacpp"` makes every
        Forge Kit front end (chat, `forge serve`, the Board) use it. The cell skips itself when llama.cpp is missing.
    """),
    code("""
        import importlib.util, time
        if not RUN_GGUF:
            print("skipped: no GGUF written (RUN_GGUF is off)")
        elif importlib.util.find_spec("llama_cpp") is None:
            print("skipped: llama-cpp-python is not installed (pip install 'forge-kit[llamacpp]'; it compiles llama.cpp)")
        else:
            fast = kit.ChatModel.load(res["gguf"], generate__backend="llamacpp")
            t0 = time.time()
            answer = fast.generate(PROMPTS[0], max_new_tokens=MAX_NEW_TOKENS)
            print(f"llama.cpp ({time.time() - t0:.1f} s):", answer)
            print("merged model          :", merged.generate(PROMPTS[0], max_new_tokens=MAX_NEW_TOKENS))
    """),
    md("""
        ## Save: Ollama

        The `Modelfile` points at the GGUF (or at the merged folder when there is none) and carries the chat
        template in Ollama's Go syntax, the stop tokens and the default system prompt:
    """),
    code("""
        import shutil, subprocess
        print(open(res["modelfile"]).read())
        if not RUN_OLLAMA:
            print("skipped: set RUN_OLLAMA = True to import it into Ollama")
        elif shutil.which("ollama") is None:
            print("skipped: ollama is not installed (https://ollama.com)")
        else:
            subprocess.run(["ollama", "create", "forge-demo", "-f", res["modelfile"]], check=True)
            print(subprocess.run(["ollama", "run", "forge-demo", PROMPTS[0]], capture_output=True, text=True).stdout)
    """),
    md("""
        ## Save: the adapter on its own, and the Hub

        `merge=False` keeps the LoRA adapter separate: a few MB instead of the whole model, laid out as PEFT and vLLM
        expect (`adapter_config.json` + `adapter_model.safetensors` at the folder's root, with `base_model_name_or_path`
        saying where the base came from), plus its model card. `push_to_hub="you/name"` uploads the folder with
        `huggingface_hub`'s own login (`hf auth login` or `HF_TOKEN`; never a token in the notebook);
        `dry_run=True` lists what would be sent and sends nothing.
    """),
    code("""
        adapter = kit.export(run, run.run_dir / "export-adapter", merge=False, gguf=None,
                             push_to_hub=PUSH_TO, dry_run=not RUN_PUSH)
        print("adapter folder:", adapter["hub_folder"], "| pushed:", adapter["pushed"])
    """),
    code("""
        import json
        acfg = json.loads((Path(adapter["hub_folder"]) / "adapter_config.json").read_text())
        print("base_model_name_or_path:", acfg["base_model_name_or_path"], "| r =", acfg["r"])
        assert (Path(adapter["hub_folder"]) / "adapter_model.safetensors").exists()
        assert adapter["pushed"] == RUN_PUSH
    """),
    md("""
        **Try next:** export every GGUF type (`gguf="f16,q8_0,q4_0"`) and compare their sizes and answers; or
        `forge serve <run dir>/export/export-q8_0.gguf generate.backend=llamacpp` for a fast CPU server
        (notebook [11](11_serving.ipynb)).
    """),
]
