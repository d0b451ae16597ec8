"""Export a trained run: merge the LoRA into the base, write an Ollama Modelfile, push to the hub.

    kit.export(run)                         # -> <run>/merged (+ Modelfile)
    kit.export("runs/x", "out/", dry_run=True, push_to_hub="me/model")
    forge export runs/x --out out/ [--no-merge] [--no-modelfile] [--push REPO --token T] [--dry-run]

Merging is done on an unquantized fp32 copy of the base (a 4-bit base cannot take the LoRA
delta exactly), so a QLoRA run exports full-precision weights.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

from .config import RunConfig

# The one chat layout we can translate to Ollama's Go templates today (SmolLM2, Qwen, ...).
CHATML_PROBE = "<|im_start|>{role}\n{content}<|im_end|>\n"
CHATML_GO_TEMPLATE = (
    "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n{{ .Response }}<|im_end|>\n"
)
_PROBE = [("system", "SYSTEM_PROBE"), ("user", "USER_PROBE"), ("assistant", "ASSISTANT_PROBE")]


class ExportError(ValueError):
    """The source cannot be exported as asked; the message says why and what to change."""


def _resolve(source: Any) -> tuple[RunConfig, Optional[Path]]:
    """(config, run_dir or None) from a Run, a run directory or a model name/path."""
    from .engine import Run, open_run

    if isinstance(source, Run):
        return source.config, Path(source.run_dir)
    if isinstance(source, (str, os.PathLike)) and (Path(source) / "config.yaml").exists():
        run = open_run(source)
        return run.config, Path(source)
    if isinstance(source, (str, os.PathLike)):
        return RunConfig.coerce(None, model=str(source)), None
    raise ExportError(f"export source must be a Run, a run directory or a model name, got {type(source).__name__}")


def chat_template_to_go(tok) -> str:
    """The Ollama TEMPLATE for this tokenizer's chat template (ChatML only), or ExportError."""
    if not getattr(tok, "chat_template", None):
        raise ExportError("the tokenizer has no chat_template; set model.template before exporting a Modelfile")
    msgs = [{"role": r, "content": c} for r, c in _PROBE]
    rendered = tok.apply_chat_template(msgs, tokenize=False)
    expected = "".join(CHATML_PROBE.format(role=r, content=c) for r, c in _PROBE)
    if rendered != expected:
        name = getattr(tok, "name_or_path", "?")
        raise ExportError(
            f"chat template of '{name}' is not ChatML (<|im_start|>role ... <|im_end|>); only ChatML can be turned "
            f"into an Ollama TEMPLATE today. It renders a probe conversation as {rendered[:200]!r}. "
            "Use modelfile=False (--no-modelfile) and write the TEMPLATE by hand.")
    return CHATML_GO_TEMPLATE


def modelfile_text(tok, model_config, from_path: str, system: Optional[str] = None,
                   adapter_path: Optional[str] = None) -> str:
    from .infer.hf import stop_token_ids

    lines = [f"FROM {from_path}"]
    if adapter_path:
        lines.append(f"ADAPTER {adapter_path}")
    lines.append(f'TEMPLATE """{chat_template_to_go(tok)}"""')
    for tid in stop_token_ids(tok, model_config):
        t = tok.convert_ids_to_tokens(tid)
        lines.append(f"PARAMETER stop {json.dumps(t)}")
    if system:
        if '"""' in system:
            raise ExportError('generate.system contains """, which a Modelfile cannot quote')
        lines.append(f'SYSTEM """{system}"""')
    return "\n".join(lines) + "\n"


def _files(out: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(out)), p.stat().st_size) for p in out.rglob("*") if p.is_file())


def export(source: Any, out_dir: Optional[str | os.PathLike] = None, *, merge: bool = True, modelfile: bool = True,
           gguf: Optional[str] = None, max_shard_size: str = "2GB", push_to_hub: Optional[str] = None,
           token: Optional[str] = None, dry_run: bool = False) -> dict:
    """Export ``source`` (a Run, run dir or model name) to ``out_dir``; returns what was written.

    merge: LoRA runs are merged into an fp32 copy of the base (else the adapter is copied and the
    Modelfile points at base + ADAPTER). gguf: also write f16/q8_0 GGUF (llama family). dry_run: list files and the repo id, touch no network.
    """
    import torch

    from .models import load_model

    if gguf is not None and gguf not in ("f16", "q8_0"):
        raise ExportError(f"gguf must be 'f16' or 'q8_0', got {gguf!r}")
    cfg, run_dir = _resolve(source)
    adapter = run_dir / "adapter" if run_dir is not None else None
    full = run_dir / "model" if run_dir is not None else None
    has_adapter = adapter is not None and (adapter / "adapter_config.json").exists()
    if run_dir is not None and not has_adapter and not (full / "config.json").exists():
        raise ExportError(f"{run_dir} has neither a trained adapter (adapter/) nor full weights (model/): "
                          "has the run finished?")
    if out_dir is None:
        if run_dir is not None:
            out_dir = run_dir / ("merged" if merge or not has_adapter else "export")
        else:
            from .paths import forge_home
            out_dir = forge_home() / "exports" / Path(str(cfg.model.name)).name
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    cfg = cfg.replace(quant__bits=None, model__dtype="float32", model__device="cpu")
    if run_dir is not None and not has_adapter:
        cfg = cfg.replace(model__name=str(full), model__adapter_path=None)

    result: dict[str, Any] = {"out_dir": str(out), "merged": False, "modelfile": None, "gguf": None}
    if has_adapter and merge:
        loaded = load_model(cfg.replace(model__adapter_path=str(adapter)), with_adapter=True)
        model = loaded.model.merge_and_unload()
        result["merged"] = True
    elif has_adapter:
        loaded = load_model(cfg, with_adapter=False)
        model = None
        dst = out / "adapter"
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(adapter, dst)
    else:
        loaded = load_model(cfg, with_adapter=False)
        model = loaded.model
    tok = loaded.tokenizer
    if model is not None:
        with torch.no_grad():
            model.save_pretrained(str(out), safe_serialization=True, max_shard_size=max_shard_size)
    tok.save_pretrained(str(out))  # keeps the chat template used in training
    if gguf is not None:
        if model is None:
            raise ExportError("gguf export needs merged weights: drop merge=False / --no-merge")
        gpath = write_gguf(model, tok, out / f"{Path(str(out)).name}-{gguf}.gguf", gguf)
        result["gguf"] = str(gpath)

    if modelfile:
        if model is not None:
            src = result["gguf"] or str(out.resolve())  # Ollama imports GGUF directly, safetensors dirs too
            text = modelfile_text(tok, model.config, str(Path(src).resolve()), cfg.generate.system)
        else:
            text = modelfile_text(tok, loaded.model.config, str(Path(loaded.path).resolve()), cfg.generate.system,
                                  adapter_path=str((out / "adapter").resolve()))
        (out / "Modelfile").write_text(text)
        result["modelfile"] = str(out / "Modelfile")

    result["files"] = _files(out)
    if push_to_hub:
        result["repo_id"] = push_to_hub
        if dry_run:
            print(f"dry run: would upload {len(result['files'])} files to https://huggingface.co/{push_to_hub}")
            for name, size in result["files"]:
                print(f"  {name:40s} {size:>12,d} B")
            result["pushed"] = False
        else:
            token = token or os.environ.get("HF_TOKEN")
            if not token:
                raise ExportError("push_to_hub needs a token (token=... / --token, or HF_TOKEN)")
            from huggingface_hub import HfApi
            api = HfApi(token=token)
            api.create_repo(push_to_hub, exist_ok=True)
            api.upload_folder(folder_path=str(out), repo_id=push_to_hub)
            result["pushed"] = True
    return result


# ------------------------------------------------------------------ CLI


def add_export_parser(subparsers, fn) -> argparse.ArgumentParser:
    p = subparsers.add_parser("export", help="merge a LoRA run, write an Ollama Modelfile, push to the hub")
    p.add_argument("source", help="run directory or model name")
    p.add_argument("--out", default=None, help="output directory (default: <run>/merged)")
    p.add_argument("--no-merge", action="store_true", help="keep the adapter separate (Modelfile uses ADAPTER)")
    p.add_argument("--no-modelfile", action="store_true", help="do not write an Ollama Modelfile")
    p.add_argument("--gguf", choices=["f16", "q8_0"], default=None, help="also write a GGUF file (llama family; Modelfile then uses it)")
    p.add_argument("--max-shard-size", default="2GB")
    p.add_argument("--push", default=None, metavar="REPO", help="upload the result to this hub repo")
    p.add_argument("--token", default=None, help="hub token for --push (or HF_TOKEN)")
    p.add_argument("--dry-run", action="store_true", help="with --push: list what would be uploaded, no network")
    p.set_defaults(fn=fn)
    return p


def export_cli(args) -> int:
    res = export(args.source, args.out, merge=not args.no_merge, modelfile=not args.no_modelfile, gguf=args.gguf,
                 max_shard_size=args.max_shard_size, push_to_hub=args.push, token=args.token, dry_run=args.dry_run)
    print(f"exported to {res['out_dir']} (merged: {res['merged']})")
    if res["gguf"]:
        print(f"GGUF: {res['gguf']}")
    if res["modelfile"]:
        print(f"Modelfile: {res['modelfile']}  (ollama create NAME -f {res['modelfile']})")
    return 0


# ------------------------------------------------------------------ GGUF (llama family)

_GGUF_LAYER = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def _permute_qk(w, n_head: int):
    # llama.cpp stores q/k rows interleaved for its rope; transformers undoes this on load
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model, tok, path: Path, kind: str = "f16") -> Path:
    """Write a llama-family model + its tokenizer as one GGUF file (f16 or q8_0 matrices, f32 norms)."""
    import gguf
    import numpy as np

    c = model.config
    if getattr(c, "model_type", "") != "llama":
        raise ExportError(f"GGUF export supports llama-family models only, not model_type={c.model_type!r}")
    if kind not in ("f16", "q8_0"):
        raise ExportError(f"gguf must be 'f16' or 'q8_0', got {kind!r}")
    n_head, n_kv = c.num_attention_heads, c.num_key_value_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // n_head
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(Path(str(getattr(c, "name_or_path", "model") or "model")).name)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    theta = getattr(c, "rope_theta", None) or (getattr(c, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    w.add_rope_freq_base(float(theta))
    w.add_vocab_size(len(tok))
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if kind == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0)

    # tokenizer: byte-level BPE ("gpt2" in GGUF terms): tokens by id, their types, merges, special ids
    tj = json.loads(tok.backend_tokenizer.to_str())
    if tj["model"]["type"] != "BPE":
        raise ExportError(f"GGUF export supports BPE tokenizers only, not {tj['model']['type']}")
    vocab = tok.get_vocab()
    tokens = [""] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    special = set(tok.all_special_tokens)
    added = {a["content"] for a in tj.get("added_tokens", [])}
    types = [gguf.TokenType.CONTROL if t in special else gguf.TokenType.USER_DEFINED if t in added
             else gguf.TokenType.NORMAL for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    for setter, tid in ((w.add_bos_token_id, tok.bos_token_id), (w.add_eos_token_id, tok.eos_token_id),
                        (w.add_pad_token_id, tok.pad_token_id), (w.add_unk_token_id, tok.unk_token_id)):
        if tid is not None:
            setter(int(tid))
    if tok.chat_template:
        w.add_chat_template(tok.chat_template)

    def put(name: str, t):
        a = t.detach().float().cpu().numpy()
        if a.ndim == 1:
            w.add_tensor(name, a.astype(np.float32))
        elif kind == "q8_0" and a.shape[-1] % 32 == 0:
            q = gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, a.astype(np.float16))

    sd = model.state_dict()
    put("token_embd.weight", sd["model.embed_tokens.weight"])
    put("output_norm.weight", sd["model.norm.weight"])
    if not getattr(c, "tie_word_embeddings", False):
        put("output.weight", sd["lm_head.weight"])
    for i in range(c.num_hidden_layers):
        for hf, gg in _GGUF_LAYER.items():
            t = sd[f"model.layers.{i}.{hf}.weight"]
            if hf.endswith("q_proj"):
                t = _permute_qk(t, n_head)
            elif hf.endswith("k_proj"):
                t = _permute_qk(t, n_kv)
            put(f"blk.{i}.{gg}.weight", t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
