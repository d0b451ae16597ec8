from build_notebooks import code, md

TITLE = "Tool calling: tune a model to call functions, then run it as an agent"
LEARN = [
    "how a tool-calling conversation is stored (OpenAI-style `tools`, `tool_calls`, `tool` results) and how a chat "
    "template turns it into tokens, with only the model's own calls and answers trained",
    "how to fine-tune a small model on such conversations (`demo_tools`) so that it answers with a "
    "`<tool_call>{...}</tool_call>` instead of guessing",
    "how an agent loop works: the model calls, your code runs the function, the result goes back, the model answers",
]
RUNTIME = {"ci": "68 s (measured in a fresh-clone CI run on this 2-core CPU, nothing else running)", "cpu": "4 min 15 s (measured with these defaults in nbmake on one core of this 2-core CPU, a benchmark running on the other; load 1.75)", "gpu": "about 1 min"}

CELLS = [
    md("""
        ## Knobs

        Tool definitions are long (each is a JSON schema in the prompt), so examples are a few hundred tokens: keep
        `CUTOFF_LEN` large enough to hold them, or the call itself is cut off.
    """),
    code("""
        # Knobs: defaults are the full CPU settings; FORGE_NOTEBOOK_CI=1 (CI) makes every one tiny.
        import os
        CI = os.environ.get("FORGE_NOTEBOOK_CI") == "1"
        MODEL = os.environ.get("FORGE_NOTEBOOK_MODEL", "smollm2-135m-instruct")  # embedded: nothing is downloaded
        #   on a GPU try "Qwen/Qwen2.5-0.5B-Instruct": its own chat template renders tools (set TEMPLATE = None)
        TEMPLATE = "chatml_tools"   # SmolLM2's template drops tools; this ChatML variant (Hermes / Qwen2.5 style)
        #                             lists them in the system turn and writes calls as <tool_call>{json}</tool_call>
        STEPS = int(os.environ.get("FORGE_NOTEBOOK_STEPS", 9 if CI else 30))   # optimizer updates (6 rows: 3 per epoch)
        CUTOFF_LEN = 512            # longest example in tokens: demo_tools' rows are 250-450
        LEARNING_RATE = 1e-3
        LORA_RANK = 16
        MAX_NEW_TOKENS = 48 if CI else 96   # a call is 20-40 tokens
    """),
    md("""
        ## Model

        The embedded SmolLM2-135M-Instruct with the `chatml_tools` template (`model.template`), which uses the same
        `<|im_start|>` / `<|im_end|>` tokens as its own, so nothing new has to be learned about turns; only the
        tool format is new.
    """),
    code("""
        import json
        import kit
        from kit.infer.tools import parse_tool_calls, supports_tools

        base = kit.ChatModel.load(MODEL, model__template=TEMPLATE)
        print("template renders tools:", supports_tools(base.tokenizer))
    """),
    md("""
        ## Data: a tool-calling conversation

        `demo_tools` holds 6 chats in the OpenAI messages format: the user asks, the assistant answers with
        `tool_calls` (a function name and JSON arguments) instead of text, a `tool` message brings the result, and the
        assistant answers from it. Each row carries its `tools`: the JSON schemas of the functions it may call.
    """),
    code("""
        from kit.data import load_rows

        rows, kind = load_rows("demo_tools")
        row = rows[0]
        for m in row["messages"]:
            print(f"{m['role']:9s}", m.get("tool_calls") or m["content"])
        print("tools:", [t["function"]["name"] for t in row["tools"]])
    """),
    md("""
        The same row as tokens, trained part in `[[...]]`: the tools' schemas (in the system turn), the user's
        question and the tool's result are **context**; the model learns to write the call and the final answer.
    """),
    code("""
        from IPython.display import HTML, display
        from kit.preview import preview

        cfg = kit.RunConfig.from_kwargs(model=MODEL, template=TEMPLATE, dataset="demo_tools", cutoff_len=CUTOFF_LEN,
                                        max_steps=STEPS, batch_size=2, learning_rate=LEARNING_RATE, lora_rank=LORA_RANK,
                                        lr_scheduler="constant", save_steps=0, logging_steps=1)
        item = preview(cfg, 1, tokenizer=base.tokenizer)[0]
        text = item["rendered"]
        print(text[:300], "\\n...\\n", text[text.index("<|im_start|>user"):])
        print(f"{item['n_tokens']} tokens, {item['n_trained']} trained")
        display(HTML(preview(cfg, 1, tokenizer=base.tokenizer, style="html")[0]["rendered"]))
    """),
    md("""
        ### Before training: the untuned model with tools

        A request with `tools` renders the schemas into the prompt; `parse_tool_calls` reads any
        `<tool_call>{...}</tool_call>` in the answer back into OpenAI's `tool_calls` shape (what `forge serve`
        returns to clients). The untuned model mostly answers in prose or makes up a result.
    """),
    code("""
        QUESTIONS = [(rows[0]["messages"][0]["content"], rows[0]["tools"]),                       # seen in training
                     ("What's the weather like in Rome today?", rows[0]["tools"])]                # not seen
        def ask(cm, question, tools):
            req = cm.request([{"role": "user", "content": question}], tools=tools, max_new_tokens=MAX_NEW_TOKENS)
            text = cm.complete([req])[0].text
            return text, parse_tool_calls(text)[1]

        before = {q: ask(base, q, t) for q, t in QUESTIONS}
        for q, (text, calls) in before.items():
            print(f"{q}\\n  -> {text!r}\\n  calls: {[c['function'] for c in calls]}\\n")
    """),
    md("""
        ## Train: LoRA on the tool chats

        LoRA (rank 16) on the attention and MLP projections. With 6 conversations, a few epochs make the model adopt
        the call format. What you should see: the loss falls fast (the format is very regular).
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
        losses = [l for _, l in run.losses()]
        print("losses:", [round(l, 3) for l in losses])
    """),
    md("""
        ## Try it: the tuned model as an agent

        The agent loop: ask with the tools; if the answer holds calls, run each with your own Python function, append
        the call and its result as messages, and ask again; stop when the model answers in text. Our tools are fakes
        that return fixed data, as in the training set.
    """),
    code("""
        tuned = kit.ChatModel.load(run)
        after = {q: ask(tuned, q, t) for q, t in QUESTIONS}
        for q, (text, calls) in after.items():
            print(f"{q}\\n  before: {before[q][0]!r}\\n  after:  {text!r}\\n  calls: {[c['function'] for c in calls]}\\n")
    """),
    code("""
        TOOLS = {
            "get_weather": lambda city, unit="celsius": {"city": city, "temp_c": 21, "condition": "sunny"},
            "convert_currency": lambda amount, from_currency, to_currency: {"result": round(amount * 0.92, 2)},
        }

        def agent(cm, question, tools, max_rounds=2):
            messages = [{"role": "user", "content": question}]
            for _ in range(max_rounds):
                req = cm.request(messages, tools=tools, max_new_tokens=MAX_NEW_TOKENS)
                content, calls = parse_tool_calls(cm.complete([req])[0].text)
                if not calls:
                    messages.append({"role": "assistant", "content": content or ""})
                    break
                messages.append({"role": "assistant", "content": content or "",
                                 "tool_calls": [{"type": "function", "function": {
                                     "name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}}
                                                for c in calls]})
                for c in calls:
                    fn = TOOLS.get(c["function"]["name"])
                    try:
                        result = fn(**json.loads(c["function"]["arguments"])) if fn else {"error": "unknown tool"}
                    except TypeError as e:       # the model passed arguments the function does not take
                        result = {"error": str(e)}
                    messages.append({"role": "tool", "content": json.dumps(result)})
            return messages

        for m in agent(tuned, QUESTIONS[1][0], QUESTIONS[1][1]):
            print(f"{m['role']:9s}", m.get("tool_calls") or m["content"])
    """),
    code("""
        # Effect check: the loss falls, and the tuned model calls the right tool for a question it trained on
        tail = losses[-max(1, len(losses) // 3):]
        assert sum(tail) / len(tail) < losses[0], losses
        text, calls = after[QUESTIONS[0][0]]
        assert calls and calls[0]["function"]["name"] == "get_weather", text
        assert json.loads(calls[0]["function"]["arguments"]).get("city") == "Paris", calls
        print("tuned model calls", calls[0]["function"])
    """),
    md("""
        ## Save

        The adapter is in `<run dir>/adapter/` and the run's `config.yaml` records `model.template: chatml_tools`, so
        `forge serve <run dir>` renders tools the same way and returns OpenAI `tool_calls` to clients (notebook
        [11](11_serving.ipynb) shows the server).

        **Try next:** add a dozen rows of your own tools to a JSONL file in the same format (see notebook
        [13](13_your_data.ipynb) for the checks) and train on `demo_tools` plus your file; or try a model whose own
        template renders tools (Qwen2.5) with `TEMPLATE = None`.
    """),
    code("""
        print(run.config.model.template, "|", sorted(p.name for p in run.run_dir.iterdir()))
    """),
]
