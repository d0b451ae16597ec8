from build_notebooks import code, md

TITLE = "Inference and serving: streaming chat, an OpenAI-compatible server, vLLM on a GPU"
LEARN = [
    "how to chat with a model or a run from Python: whole answers, streamed pieces, batches, and what each "
    "generation setting (temperature, top-p, seed, stop strings) does",
    "how to serve it over the OpenAI API on your own machine (127.0.0.1) and call it with the official `openai` "
    "client, streaming included, then stop the server",
    "which back end to pick: transformers on CPU, vLLM on a GPU, llama.cpp for an exported GGUF",
]
RUNTIME = {"ci": "19 s (measured in a fresh-clone CI run on this 2-core CPU, nothing else running)", "cpu": "32 s (measured with these defaults in nbmake on this 2-core CPU, nothing else running)", "gpu": "under a minute (vLLM start-up adds about 1 min)"}

CELLS = [
    md("""
        ## Knobs

        Nothing trains here; the costs are loading the model once and generating tokens. A 135M model decodes
        roughly 15-25 tokens per second on this CPU.
    """),
    code("""
        # Knobs: defaults are the full CPU settings; FORGE_NOTEBOOK_CI=1 (CI) makes every one tiny.
        import os
        CI = os.environ.get("FORGE_NOTEBOOK_CI") == "1"
        MODEL = os.environ.get("FORGE_NOTEBOOK_MODEL", "smollm2-135m-instruct")  # embedded: nothing is downloaded
        #   a run folder works too (e.g. one from notebook 01): its adapter is served on top of its base
        #   on a GPU try "Qwen/Qwen2.5-0.5B-Instruct" with the vLLM back end below
        MAX_NEW_TOKENS = 12 if CI else 64   # longest answer
        PROMPTS = ["What is the capital of France?", "Name three colours.", "Say hello in Spanish."]
        PORT = 0                            # 0: any free port (the server prints the one it got)
    """),
    md("""
        The server needs the `serve` extra (FastAPI, uvicorn and the `openai` client). This cell installs it when it
        is missing (with the install cell's `pip_install`), and does nothing otherwise:
    """),
    code("""
        import importlib.util
        missing = [m for m in ("fastapi", "uvicorn", "openai") if importlib.util.find_spec(m) is None]
        if missing:
            source = os.environ.get("FORGE_KIT_SOURCE", "").strip()
            editable = ["-e"] if source and os.path.isdir(source) else []
            pip_install(*editable, f"{source or 'forge-kit'}[serve]")
            importlib.invalidate_caches()
        print("serve extra:", f"installed ({', '.join(missing)})" if missing else "ready")
    """),
    md("""
        ## Model

        `kit.ChatModel.load(source)` loads a model name, a path, a run folder or a config once, on the back end the
        config names (`generate.backend`: `hf` = transformers, the default); every call below reuses it.
        `kit.chat(source, ...)` is the one-line form (it caches the loaded model per source).
    """),
    code("""
        import kit

        cm = kit.ChatModel.load(MODEL)
        print("back end:", cm.backend, "| stop tokens:", [cm.tokenizer.decode([i]) for i in cm.stop_ids])
        answer = cm.generate(PROMPTS[0], max_new_tokens=MAX_NEW_TOKENS)
        print(PROMPTS[0], "->", answer)
    """),
    md("""
        ## Try it: streaming, settings, batches

        `stream=True` yields the answer piece by piece as tokens are decoded: what a chat UI shows while the model
        "types". The pieces joined are exactly the whole answer.
    """),
    code("""
        pieces = []
        for piece in kit.chat(MODEL, PROMPTS[0], stream=True, max_new_tokens=MAX_NEW_TOKENS):
            pieces.append(piece)
            print(piece, end="|", flush=True)     # | marks where one piece ends
        print()
        print(len(pieces), "pieces")
    """),
    md("""
        Generation settings, the same on every back end and in the server:

        | setting | what it does |
        |---|---|
        | `max_new_tokens` | the longest answer, in tokens |
        | `temperature` | 0 = greedy (always the likeliest token, reproducible); higher = more varied |
        | `top_p`, `top_k` | sample only from the likeliest tokens (top-p: the smallest set with this much probability) |
        | `repetition_penalty` | > 1 makes tokens already used less likely |
        | `stop` | strings that end the answer (not included) |
        | `seed` | with sampling: the same seed gives the same answer |
        | `system` | the system prompt |
    """),
    code("""
        hot = dict(temperature=1.0, top_p=0.9, max_new_tokens=MAX_NEW_TOKENS)
        a = cm.generate(PROMPTS[1], seed=1, **hot)
        b = cm.generate(PROMPTS[1], seed=1, **hot)
        c = cm.generate(PROMPTS[1], seed=2, **hot)
        print("seed 1:", a, "\\nseed 1:", b, "\\nseed 2:", c)
        print("stopped at ',':", cm.generate(PROMPTS[1], stop=[","], max_new_tokens=MAX_NEW_TOKENS))
        print("as a pirate:", cm.generate(PROMPTS[2], system="You are a pirate.", max_new_tokens=MAX_NEW_TOKENS))
    """),
    md("""
        `generate_many` answers several conversations in one batch (one forward pass per token for all of them,
        prompts left-padded): faster than one at a time, with the same greedy answers.
    """),
    code("""
        import time
        t0 = time.time()
        batched = cm.generate_many(PROMPTS, max_new_tokens=MAX_NEW_TOKENS)
        t_batch = time.time() - t0
        t0 = time.time()
        one_by_one = [cm.generate(p, max_new_tokens=MAX_NEW_TOKENS) for p in PROMPTS]
        t_single = time.time() - t0
        for p, x in zip(PROMPTS, batched):
            print(f"{p:32s} -> {x}")
        print(f"batched {t_batch:.1f} s, one at a time {t_single:.1f} s")
    """),
    code("""
        # Effect check: streaming, seeds and batching keep their promises
        assert "".join(pieces).strip() == answer and len(pieces) > 1
        assert a == b
        assert batched == one_by_one
        print("stream == whole answer; same seed, same answer; batch == one at a time")
    """),
    md("""
        ## Try it: an OpenAI-compatible server

        `forge serve SOURCE` (a shell) or `kit.infer.server.BackgroundServer` (here, in a background thread of this
        kernel) serves the model over the OpenAI API: `GET /v1/models`, `POST /v1/chat/completions` (streaming over
        server-sent events too), `POST /v1/completions`. Any OpenAI client works against it: the official `openai`
        package, LangChain, an IDE plug-in.

        Safe by default: it listens on **127.0.0.1** (this machine only). Binding another address needs an API key
        (`forge serve RUN --host 0.0.0.0 --api-key ...` or `FORGE_API_KEY`), which every request must then send.
        Requests are batched, so several clients at once share the decode steps.
    """),
    code("""
        from kit.infer.server import BackgroundServer, build

        server = BackgroundServer(build(cm, name="forge-demo"), host="127.0.0.1", port=PORT).start()
        print("serving at", server.url)
    """),
    code("""
        from openai import OpenAI

        client = OpenAI(base_url=server.url, api_key="unused-on-localhost", max_retries=0, timeout=300)
        print("models:", [m.id for m in client.models.list()])

        resp = client.chat.completions.create(model="forge-demo", max_tokens=MAX_NEW_TOKENS, temperature=0,
                                              messages=[{"role": "user", "content": PROMPTS[0]}])
        print("answer:", resp.choices[0].message.content)
        print("finish:", resp.choices[0].finish_reason, "| usage:", resp.usage)
    """),
    md("""
        Streaming with the client: the same answer, in chunks; with `stream_options={"include_usage": True}` the last
        chunk carries the token counts.
    """),
    code("""
        stream = client.chat.completions.create(model="forge-demo", max_tokens=MAX_NEW_TOKENS, temperature=0, stream=True,
                                                stream_options={"include_usage": True},
                                                messages=[{"role": "user", "content": PROMPTS[0]}])
        streamed, usage = "", None
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                streamed += chunk.choices[0].delta.content
                print(chunk.choices[0].delta.content, end="|", flush=True)
            if chunk.usage:
                usage = chunk.usage
        print("\\nusage:", usage)
    """),
    md("""
        Errors come back in OpenAI's shape with a 4xx status, so clients raise their usual exceptions, and the server
        keeps answering:
    """),
    code("""
        import openai
        try:
            client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "Hi"}])
        except openai.NotFoundError as e:
            print("404:", e.body)
        try:
            client.chat.completions.create(model="forge-demo", max_tokens=10**7, messages=[{"role": "user", "content": "Hi"}])
        except openai.BadRequestError as e:
            print("400:", e.body["message"] if isinstance(e.body, dict) else e.body)
    """),
    md("""
        `kit.ChatModel.connect(url)` turns a running server (ours, vLLM's, llama.cpp's) back into a chat model, so
        `forge chat --url ...`, the Board's chat tab and `kit.evaluate` can use a model served elsewhere.
    """),
    code("""
        remote = kit.ChatModel.connect(server.url, model="forge-demo")
        via_remote = remote.generate(PROMPTS[0], max_new_tokens=MAX_NEW_TOKENS)
        print("through ChatModel.connect:", via_remote)
    """),
    code("""
        # Effect check: the server gives the local model's greedy answer, whole, streamed and through connect()
        assert [m.id for m in client.models.list()] == ["forge-demo"]
        assert resp.choices[0].message.content.strip() == answer
        assert streamed.strip() == answer and via_remote == answer
        assert usage is not None and usage.completion_tokens > 0 and usage.prompt_tokens > 0
        print("server == local model")
    """),
    md("""
        Stop the server when you are done (it also stops when the kernel does):
    """),
    code("""
        import socket
        server.stop()
        with socket.socket() as s:
            refused = s.connect_ex(("127.0.0.1", server.port)) != 0
        print("server stopped; port", server.port, "closed:", refused)
        assert refused
    """),
    md("""
        ## Try it: vLLM on a GPU

        On a CUDA GPU, `generate.backend=vllm` (the `vllm` extra) runs the same `ChatModel` API, `forge serve` and
        `kit.evaluate` on vLLM: paged attention and continuous batching, many times the throughput of transformers.
        A run's LoRA adapter is served as a LoRA request, no merge needed. This cell skips itself without a GPU.
    """),
    code("""
        import torch
        if not torch.cuda.is_available():
            print("skipped: vLLM needs a CUDA GPU (none here)")
        elif importlib.util.find_spec("vllm") is None:
            print("skipped: vllm is not installed (pip install 'forge-kit[vllm]')")
        else:
            fast = kit.ChatModel.load(MODEL, generate__backend="vllm")
            print("vLLM:", fast.generate(PROMPTS[0], max_new_tokens=MAX_NEW_TOKENS))
            print("vLLM batch:", fast.generate_many(PROMPTS, max_new_tokens=MAX_NEW_TOKENS))
    """),
    md("""
        On a CPU without a GPU, the fastest way to serve is llama.cpp on an exported GGUF file:
        `kit.ChatModel.load("model.gguf", generate__backend="llamacpp")` or `forge serve model.gguf
        generate.backend=llamacpp` (notebook [12](12_export.ipynb) writes the GGUF).

        **Try next:** serve a fine-tuned run from a terminal (`forge serve <run dir> --port 8000`) and point any
        OpenAI-compatible app at `http://127.0.0.1:8000/v1`; or send 8 requests at once from threads and compare
        the total tokens/s with one request.
    """),
]
