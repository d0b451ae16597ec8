from build_notebooks import code, md

TITLE = "Your own data: every format, the errors that name the row, and the tokens that train"
LEARN = [
    "the seven row formats Forge Kit reads (alpaca, messages, sharegpt, preference, kto, text, prompt) and the "
    "four file types (JSONL, JSON, CSV, Parquet), plus in-memory rows, a `datasets.Dataset` and a registry file",
    "what a validation error looks like: it names the file, the row and the field, so you fix the right line",
    "which tokens a model is trained on (the answer, marked `[[...]]`) and how `train_on_prompt` and "
    "`mask_history` change that",
]
RUNTIME = {"ci": "10 s (measured in a fresh-clone CI run on this 2-core CPU, nothing else running)", "cpu": "12 s (measured with these defaults in nbmake on this 2-core CPU, nothing else running)", "gpu": "the same (nothing here needs a GPU)"}

CELLS = [
    md("""
        ## Knobs

        This notebook trains nothing: it writes small files in a scratch folder, reads them the way training
        would, and shows what the model would see. The only slow step is loading the tokenizer.
    """),
    code("""
        # Knobs: defaults are the full CPU settings; FORGE_NOTEBOOK_CI=1 (CI) makes every one tiny.
        import os
        CI = os.environ.get("FORGE_NOTEBOOK_CI") == "1"
        MODEL = os.environ.get("FORGE_NOTEBOOK_MODEL", "smollm2-135m-instruct")  # only its tokenizer is loaded
        #   any model works: the chat template (how turns become tokens) is the tokenizer's own
        CUTOFF_LEN = 256       # longest example in tokens; longer ones are cut (the answer keeps its end marker)
        SHOW = 1 if CI else 2  # how many examples of each kind to print as tokens
    """),
    md("""
        ## Model

        Data is model-specific only through the **tokenizer and its chat template**: the same rows become
        different tokens for Llama, Qwen or SmolLM2. Loading the tokenizer takes a second; no weights are read.
    """),
    code("""
        import kit
        from kit.models import load_tokenizer

        tok = load_tokenizer(kit.RunConfig.from_kwargs(model=MODEL).model)
        print(type(tok).__name__, "| vocabulary", len(tok), "| chat template:", (tok.chat_template or "")[:80], "...")
    """),
    md("""
        ## Data: the formats

        Forge Kit normalises every row into one of five internal kinds, so the stages never see the file format:

        | format | a row looks like | kind | stages |
        |---|---|---|---|
        | `alpaca` | `instruction`, `input`?, `output`, `system`?, `history`? | sft | sft |
        | `messages` (OpenAI) | `messages: [{role, content}, ...]`, `tools`? | sft | sft |
        | `sharegpt` | `conversations: [{from: human/gpt/system, value}]` | sft | sft |
        | `preference` | `prompt`, `chosen`, `rejected` (text or messages) | preference | dpo, rm |
        | `kto` | `messages` + `label` (true/false) | kto | kto |
        | `text` | `text` | text | pt |
        | `prompt` | `prompt`, `answer`? | prompt | grpo, ppo |

        The format is detected from the columns of the first row (`format=` forces one). Files can be `.jsonl`,
        `.json` (a list, `{"data": [...]}`, or JSON lines), `.csv` (list columns such as `messages` hold JSON text)
        or `.parquet`. Below, one small file per format, in a mix of file types:
    """),
    code("""
        import json, tempfile
        from pathlib import Path
        import pandas as pd

        folder = Path(tempfile.mkdtemp(prefix="my-data-"))

        def jsonl(name, rows):
            path = folder / name
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\\n" for r in rows), encoding="utf-8")
            return path

        files = {
            "alpaca": jsonl("alpaca.jsonl", [
                {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
                {"instruction": "Name a prime number.", "output": "7"}]),
            "messages": folder / "chats.json",
            "sharegpt": folder / "sharegpt.csv",
            "preference": folder / "pairs.parquet",
            "kto": jsonl("kto.jsonl", [
                {"messages": [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"}],
                 "label": True},
                {"messages": [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "5"}],
                 "label": False}]),
            "text": jsonl("notes.jsonl", [{"text": "The Rhine flows from the Alps to the North Sea."}]),
            "prompt": jsonl("prompts.jsonl", [{"prompt": "What is 3 + 4? Answer with the number only.", "answer": "7"}]),
        }
        # a JSON document: a list of OpenAI-style chats, the second with a system message and two turns
        files["messages"].write_text(json.dumps([
            {"messages": [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello! How can I help?"}]},
            {"messages": [{"role": "system", "content": "You are terse."},
                          {"role": "user", "content": "Capital of Italy?"}, {"role": "assistant", "content": "Rome."},
                          {"role": "user", "content": "And of Spain?"}, {"role": "assistant", "content": "Madrid."}]},
        ]), encoding="utf-8")
        # CSV: the conversations column holds JSON text (a CSV cell cannot hold a list)
        pd.DataFrame({"conversations": [json.dumps([{"from": "human", "value": "Tell me a joke."},
                                                     {"from": "gpt", "value": "Why did the cat sit on the computer? "
                                                                              "To keep an eye on the mouse."}])]}
                     ).to_csv(files["sharegpt"], index=False)
        # Parquet: a preference pair with plain-text answers
        pd.DataFrame({"prompt": ["What is the capital of France?"], "chosen": ["Paris."],
                      "rejected": ["I don't know, look it up."]}).to_parquet(files["preference"])

        from kit.data import load_rows

        for fmt, path in files.items():
            rows, kind = load_rows(str(path))
            print(f"{path.name:15s} -> detected kind {kind!r:12s} {len(rows)} row(s); first: {dict(rows[0])}")
    """),
    md("""
        Every row above is now in its internal shape: chats are lists of `{role, content}` messages, preference
        rows have `prompt` / `chosen` / `rejected` as message lists. The same rows can come from memory, from a
        `datasets.Dataset`, or from a registry file that names many datasets at once (relative paths are resolved
        against the registry file's folder). A registered name works anywhere a dataset goes (`dataset="my_chats"`):
    """),
    code("""
        from datasets import Dataset
        from kit.data import list_datasets, load_registry_file, register_dataset

        register_dataset("my_inline", [{"instruction": "Say hi.", "output": "Hi!"}])
        register_dataset("my_hf", Dataset.from_list([{"text": "A paragraph for pre-training."}]))
        (folder / "my_datasets.yaml").write_text(
            "my_chats:\\n  file: chats.json\\n  format: messages\\n  description: two chats\\n"
            "my_pairs:\\n  file: pairs.parquet\\n")
        load_registry_file(folder / "my_datasets.yaml")
        for name in ("my_inline", "my_hf", "my_chats", "my_pairs"):
            rows, kind = load_rows(name)
            print(f"{name:10s} kind {kind:10s} rows {len(rows)}")
        print("registered:", ", ".join(sorted(list_datasets())))
    """),
    md("""
        LLaMA-Factory users: point `data.dataset_dir` at a folder with a `dataset_info.json` and every entry there
        becomes a dataset name (its `formatting`, `columns` and `tags` map your column and role names):
    """),
    code("""
        (folder / "dataset_info.json").write_text(json.dumps({
            "lf_alpaca": {"file_name": "alpaca.jsonl", "formatting": "alpaca",
                          "columns": {"prompt": "instruction", "query": "input", "response": "output"}}}))
        cfg = kit.RunConfig.from_kwargs(model=MODEL, dataset="lf_alpaca", dataset_dir=str(folder))
        from kit.data import validate_dataset
        print(validate_dataset(cfg, "sft"))
    """),
    md("""
        ## Data: the validation errors

        A bad row never trains silently and never crashes deep inside a trainer: reading stops with a
        `kit.data.DataError` whose message names the **file**, the **row** (0-based), the **line** of the file where
        that differs, and the **field**. The same attributes are on the exception (`.source`, `.row`, `.line`,
        `.field`, `.reason`), so a script can point at the cell to fix. A few typical mistakes:
    """),
    code("""
        from kit.data import DataError

        bad = {
            "missing answer": jsonl("bad1.jsonl", [{"instruction": "Hi", "output": "Hello"},
                                                   {"instruction": "Bye", "output": ""}]),
            "wrong role": jsonl("bad2.jsonl", [{"messages": [{"role": "human", "content": "Hi"},
                                                             {"role": "assistant", "content": "Hello"}]}]),
            "turns out of order": jsonl("bad3.jsonl", [{"messages": [{"role": "user", "content": "Hi"},
                                                                     {"role": "user", "content": "Hello?"}]}]),
            "number, not text": jsonl("bad4.jsonl", [{"instruction": "Hi", "input": 0, "output": "Hello"}]),
            "label not a bool": jsonl("bad5.jsonl", [{"messages": [{"role": "user", "content": "Hi"},
                                                                   {"role": "assistant", "content": "Yo"}],
                                                      "label": "maybe"}]),
            "identical pair": jsonl("bad6.jsonl", [{"prompt": "Hi", "chosen": "Hello", "rejected": "Hello"}]),
        }
        (folder / "bad7.jsonl").write_text('{"text": "fine"}\\n{"text": "broken JSON"\\n')
        bad["broken JSON line"] = folder / "bad7.jsonl"

        errors = {}
        for what, path in bad.items():
            try:
                load_rows(str(path))
            except DataError as e:
                errors[what] = e
                print(f"{what:18s} -> {e}")
                print(f"{'':18s}    file={Path(e.source).name} row={e.row} line={e.line} field={e.field}")
            else:
                print(f"{what:18s} -> no error?")
    """),
    code("""
        # Effect check: each bad file is refused with an error that names the file, and the row and field
        assert len(errors) == len(bad), sorted(set(bad) - set(errors))
        for what, e in errors.items():
            assert Path(e.source).name == bad[what].name, (what, e.source)
        assert errors["missing answer"].row == 1 and errors["missing answer"].field == "output"
        assert errors["wrong role"].field == "messages[0].role"
        assert errors["number, not text"].field == "input"
        assert errors["label not a bool"].field == "label"
        assert errors["broken JSON line"].line == 2
        print("every error names its file; the row and field where there is one")
    """),
    md("""
        `kit.data.validate_dataset(cfg, kind)` runs the same checks on a whole config (every dataset, the eval
        split) without loading a model: run it before a long job. The stage also refuses data of the wrong kind,
        e.g. chat rows for DPO:
    """),
    code("""
        try:
            validate_dataset(kit.RunConfig.from_kwargs(model=MODEL, stage="dpo", dataset=str(files["alpaca"])),
                             "preference")
        except DataError as e:
            print("refused:", e)
    """),
    md("""
        ## Data: the tokens the model is trained on

        Training on a chat means: render it with the chat template, then compute the loss **only on the assistant's
        answers**; the system and user turns are context (their labels are -100). `kit.preview.preview(cfg, n)`
        encodes the first `n` examples exactly as the stage does and marks the trained tokens `[[...]]` (green in
        the HTML view). `forge preview CONFIG.yaml -n 2` prints the same in a shell.

        What you should see: in the two-turn chat, **both** answers (`Rome.`, `Madrid.`) are trained, each with the
        end-of-turn marker `<|im_end|>` (so the model learns to stop); the template's default system prompt and the
        user turns are not.
    """),
    code("""
        from IPython.display import HTML, display
        from kit.preview import preview

        cfg = kit.RunConfig.from_kwargs(model=MODEL, dataset="my_chats", cutoff_len=CUTOFF_LEN)
        items = preview(cfg, 2, tokenizer=tok)
        default = items[1]
        for item in items[:SHOW + 1]:
            print(item["rendered"])
            print(f"--- {item['n_tokens']} tokens, {item['n_trained']} trained\\n")
        display(HTML(preview(cfg, 2, tokenizer=tok, style="html")[1]["rendered"]))
    """),
    md("""
        Two knobs change which tokens train (both in the `data` group):

        * `train_on_prompt=True`: the prompts train too (the model also learns to write questions; rarely what
          you want for chat, sometimes useful for tiny datasets);
        * `mask_history=True`: only the **last** answer of each conversation trains; earlier answers are context
          (useful when earlier turns came from another model you do not want to imitate).
    """),
    code("""
        on_prompt = preview(cfg.replace(data__train_on_prompt=True), 2, tokenizer=tok)[1]
        last_only = preview(cfg.replace(data__mask_history=True), 2, tokenizer=tok)[1]
        print("mask_history=True:\\n" + last_only["rendered"])
        for name, item in (("default", default), ("train_on_prompt", on_prompt), ("mask_history", last_only)):
            print(f"{name:16s} {item['n_trained']:3d} of {item['n_tokens']} tokens trained")
    """),
    code("""
        # Effect check: the masks do what they say on the same two-turn chat
        assert "[[Rome.<|im_end|>" in default["rendered"] and "[[Madrid.<|im_end|>" in default["rendered"]
        assert "[[Rome." not in last_only["rendered"] and "[[Madrid.<|im_end|>" in last_only["rendered"]
        assert last_only["n_trained"] < default["n_trained"] < on_prompt["n_trained"] <= on_prompt["n_tokens"]
        user = "Capital of Italy?"
        assert user not in "".join(default["rendered"].split("[[")[1:]).split("]]")[0]
        print("answers trained, prompts masked; mask_history keeps only the last answer")
    """),
    md("""
        Every other kind previews the same way: a preference row shows the chosen conversation with its answer
        marked, a text row is trained everywhere (pre-training), a prompt row (GRPO/PPO) has nothing to train:
        the model writes the answer itself during training.
    """),
    code("""
        extra = {"grpo": {"reward_funcs": ["exact_match"]}}   # GRPO needs a reward to be a valid config
        for stage, ds in (("dpo", "preference"), ("pt", "text"), ("grpo", "prompt")):
            item = preview(kit.RunConfig.from_kwargs(model=MODEL, stage=stage, dataset=str(files[ds]),
                                                     cutoff_len=CUTOFF_LEN, **extra.get(stage, {})), 1, tokenizer=tok)[0]
            print(f"--- {stage} on {files[ds].name}: {item['n_trained']} of {item['n_tokens']} tokens trained")
            print(item["rendered"], "\\n")
    """),
    md("""
        **Try next:** point `dataset=` at your own file and run `preview` on it before training; add a bad row on
        purpose and read the error. Then train on it with notebook [01](01_sft_lora.ipynb) (`dataset=` your path),
        or see the tool-calling format in [15](15_tool_calling.ipynb).
    """),
]
