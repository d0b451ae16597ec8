"""Export a trained run: merged weights or a Hub-ready adapter, GGUF, an Ollama Modelfile, a model card, the Hub.

    kit.export(run)                                  # -> <run>/export: merged safetensors, README.md, Modelfile
    kit.export(run, gguf=["f16", "q4_k_m"])          # + GGUF files llama.cpp runs as the model itself
    kit.export(run, merge=False)                     # the adapter in <out>/adapter/, as PEFT / vLLM / the Hub expect
    kit.export("runs/x", "out/", push_to_hub="me/model", dry_run=True)
    forge export runs/x --out out/ [--no-merge] [--gguf f16,q8_0] [--dtype bfloat16] [--max-shard-size 2GB]
                        [--push REPO [--private] [--dry-run]]

Merging is done on an unquantized fp32 copy of the base (a 4-bit base cannot take the LoRA
delta exactly), so a QLoRA run exports full-precision weights (``dtype`` casts the saved copy).
GGUF writing is kit.gguf's job, the model card and upload kit.hub's; this module holds the flow
and the Ollama Modelfile (:func:`chat_layout` reads any chat template that is fixed text around
each turn into a Go TEMPLATE, with the template's own default system prompt and stop tokens).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .config import RunConfig
from .errors import ForgeError
from .rundir import RunDir, RunDirError


class ExportError(ForgeError, ValueError):
    """The source cannot be exported as asked; the message says why and what to change."""


def _resolve(source: Any) -> tuple[RunConfig, Optional[Path]]:
    """(config, run_dir or None) from a Run, a run directory or a model name/path."""
    from .engine import Run

    if isinstance(source, Run):
        return source.config, Path(source.run_dir)
    if RunDir.is_run_dir(source):
        return RunDir(source).config(), Path(source)
    if isinstance(source, (str, os.PathLike)):
        return RunConfig.coerce(None, model=str(source)), None
    raise ExportError(f"export source must be a Run, a run directory or a model name, got {type(source).__name__}")


# ------------------------------------------------------------------ Ollama Modelfile

# Probe contents: plain words no template adds or changes, so each turn can be found in a render.
_S, _U, _A, _U2 = "SYSTEMPROBE", "USERPROBE", "ASSISTANTPROBE", "USERPROBETWO"


@dataclass(frozen=True)
class ChatLayout:
    """A chat template seen as the text around each turn's content: what an Ollama TEMPLATE can say.

    ``system``/``user``/``assistant``: (text before, text after) the content of such a turn;
    ``system`` is None when the template refuses a system turn. ``default_system``: the system
    prompt the template puts in when a chat has none (SmolLM2's "You are a helpful AI assistant
    named SmolLM..."). ``preamble``: text before the first turn of every chat (a BOS token).
    """

    system: Optional[tuple[str, str]]
    user: tuple[str, str]
    assistant: tuple[str, str]
    default_system: Optional[str] = None
    preamble: str = ""

    def render(self, system: Optional[str], turns: list[tuple[str, str]], generation: bool = False) -> str:
        """What the layout renders for a chat; the check that it says what the template says."""
        text = self.preamble
        if system is None:
            system = self.default_system
        if system is not None and self.system is not None:
            text += self.system[0] + system + self.system[1]
        for role, content in turns:
            before, after = self.user if role == "user" else self.assistant
            text += before + content + after
        return text + (self.assistant[0] if generation else "")

    def go_template(self) -> str:
        """The layout as an Ollama Go TEMPLATE (.System / .Prompt / .Response, one exchange per turn)."""
        parts = [self.user, self.assistant] + ([self.system] if self.system else [])
        if any("{{" in t or "}}" in t for pair in parts for t in pair):
            raise ExportError(
                "the chat template's turn markers contain '{{' or '}}', which an Ollama TEMPLATE cannot quote"
            )
        go = (
            f"{{{{ if .System }}}}{self.system[0]}{{{{ .System }}}}{self.system[1]}{{{{ end }}}}" if self.system else ""
        )
        go += f"{{{{ if .Prompt }}}}{self.user[0]}{{{{ .Prompt }}}}{self.user[1]}{{{{ end }}}}"
        return go + f"{self.assistant[0]}{{{{ .Response }}}}{self.assistant[1]}"


def _cut(text: str, needle: str, what: str) -> tuple[str, str]:
    i = text.find(needle)
    if i < 0 or text.find(needle, i + 1) >= 0:
        raise ValueError(f"{what} does not appear exactly once")
    return text[:i], text[i + len(needle) :]


def _after_prefix(text: str, prefix: str, what: str) -> str:
    if not text.startswith(prefix):
        raise ValueError(f"{what} changes the text of the turns before it")
    return text[len(prefix) :]


def chat_layout(tok) -> ChatLayout:
    """Read a tokenizer's chat template as a :class:`ChatLayout` by rendering probe chats.

    Raises ExportError when the template is not "fixed text around each turn" (it reorders or
    rewrites turns, or its generation prompt differs from how an assistant turn starts): such a
    template has no faithful Ollama TEMPLATE.
    """
    if not getattr(tok, "chat_template", None):
        raise ExportError("the tokenizer has no chat_template; set model.template before exporting a Modelfile")

    def render(msgs, generation=False) -> str:
        try:
            return tok.apply_chat_template(
                [{"role": r, "content": c} for r, c in msgs], tokenize=False, add_generation_prompt=generation
            )
        except Exception as e:  # a template that refuses the probe chat (raise_exception, bad roles)
            raise ValueError(f"it refuses a {'/'.join(r for r, _ in msgs)} chat ({type(e).__name__}: {e})") from e

    u_only = ""
    try:
        u_only = render([("user", _U)])
        g1 = render([("user", _U)], True)
        # text some templates end a chat with only when not generating (Phi-3: eos_token); Ollama never sees it
        trail = next(
            (
                t
                for t in ("", tok.eos_token or "")
                if u_only.endswith(t) and g1.startswith(u_only[: len(u_only) - len(t)])
            ),
            None,
        )
        if trail is None:
            raise ValueError("a chat with a generation prompt does not start like the same chat without it")

        def closed(msgs) -> str:
            text = render(msgs)
            if trail and not text.endswith(trail):
                raise ValueError(f"it ends some chats with {trail!r} and others not")
            return text[: len(text) - len(trail)]

        # a BOS the template writes once before the first turn (not a token that starts every turn)
        three = closed([("user", _U), ("assistant", _A), ("user", _U2)])
        bos = tok.bos_token
        preamble = bos if bos and u_only.startswith(bos) and three.count(bos) == 1 else ""
        if preamble and not _adds_bos(tok):
            raise ValueError(
                f"it writes {bos!r} before the first turn, which an Ollama TEMPLATE would repeat every "
                "turn (and this tokenizer does not add it itself)"
            )
        strip = len(preamble)
        x = closed([("user", _U)])[strip:]
        head_u, after_u = _cut(x, _U, "the user turn")
        generation = _after_prefix(g1[strip:], x, "the generation prompt")
        rest = _after_prefix(closed([("user", _U), ("assistant", _A)])[strip:], x, "an assistant turn")
        before_a, after_a = _cut(rest, _A, "the assistant turn")
        if generation != before_a:
            raise ValueError(f"its generation prompt {generation!r} is not how an assistant turn starts ({before_a!r})")
        y = x + rest
        rest = _after_prefix(three[strip:], y, "a second user turn")
        before_u, after_u2 = _cut(rest, _U2, "the second user turn")
        if after_u2 != after_u:
            raise ValueError("the second user turn ends differently from the first")
        system, default = None, None
        try:
            z = closed([("system", _S), ("user", _U), ("assistant", _A)])[strip:]
        except ValueError:  # templates without a system role refuse one (Gemma, Mistral): no system part
            z = None
        if z is not None and _S in z:
            before_s, rest = _cut(z, _S, "the system turn")
            between, _ = _cut(rest, _U, "the user turn after a system turn")
            if not between.endswith(before_u):
                raise ValueError("the system turn is not followed by a plain user turn")
            system = (before_s, between[: len(between) - len(before_u)])
            if head_u != before_u:  # text before the first user turn: the template's default system prompt
                d = head_u[len(system[0]) : len(head_u) - len(system[1]) - len(before_u)]
                if head_u != system[0] + d + system[1] + before_u:
                    raise ValueError(f"the text before the first user turn ({head_u!r}) is not a system turn")
                default = d
        elif head_u != before_u:
            raise ValueError(f"the text before the first user turn ({head_u!r}) differs from later user turns")
        layout = ChatLayout(system, (before_u, after_u), (before_a, after_a), default, preamble)
        # the layout must say what the template says, on chats it was not read from
        turns = [("user", "hello"), ("assistant", "hi there"), ("user", "and?")]
        for sys_msg in [None, "be brief"] if system else [None]:
            msgs = ([("system", sys_msg)] if sys_msg else []) + turns
            if render(msgs, True) != layout.render(sys_msg, turns, True):
                raise ValueError("a three-turn chat renders differently from the layout read from the probes")
    except ValueError as e:
        name = getattr(tok, "name_or_path", "?")
        raise ExportError(
            f"chat template of '{name}' is not ChatML and does not translate to an Ollama TEMPLATE: {e}. It renders "
            f"a probe chat as {u_only[:200]!r}. Export a GGUF (Ollama then reads the template embedded in it), or "
            "use modelfile=False (--no-modelfile) and write the TEMPLATE by hand."
        ) from None
    return layout


def _adds_bos(tok) -> bool:
    ids = tok.encode("hello", add_special_tokens=True)
    return tok.bos_token_id is not None and bool(ids) and ids[0] == tok.bos_token_id


def chat_template_to_go(tok) -> str:
    """The Ollama TEMPLATE for this tokenizer's chat template, or ExportError saying why there is none."""
    return chat_layout(tok).go_template()


def modelfile_stop_tokens(tok, model_config, layout: Optional[ChatLayout] = None) -> list[str]:
    """eos, the family's end-of-turn tokens, and the special token that ends an assistant turn."""
    from .infer.hf import stop_token_ids

    stops = [tok.convert_ids_to_tokens(i) for i in stop_token_ids(tok, model_config)]
    if layout is not None:
        for t in tok.all_special_tokens + [a.content for a in tok.added_tokens_decoder.values() if a.special]:
            if t and t in layout.assistant[1] and t not in stops:
                stops.append(t)
    return stops


def modelfile_text(
    tok, model_config, from_path: str, system: Optional[str] = None, adapter_path: Optional[str] = None
) -> str:
    """An Ollama Modelfile: FROM (+ ADAPTER), TEMPLATE from the chat template, stop tokens, SYSTEM.

    SYSTEM is ``system`` or else the default system prompt the chat template adds itself, so an
    Ollama chat starts like ours. When the template has no Go equivalent and ``from_path`` is a
    GGUF, the Modelfile leaves TEMPLATE to Ollama, which reads the template embedded in the GGUF.
    """
    lines = [f"FROM {from_path}"]
    if adapter_path:
        lines.append(f"ADAPTER {adapter_path}")
    try:
        layout = chat_layout(tok)
    except ExportError:
        if not str(from_path).endswith(".gguf"):
            raise
        layout = None
        lines.append(
            "# no TEMPLATE: Ollama takes it from the chat template embedded in the GGUF "
            "(tokenizer.chat_template), matched against its built-in templates; check `ollama show --template`"
        )
    if layout is not None:
        if layout.preamble:
            lines.append(
                f"# {layout.preamble!r} before the first turn is added by the runtime (tokenizer.ggml.add_bos_token)"
            )
        lines.append(f'TEMPLATE """{layout.go_template()}"""')
    for t in modelfile_stop_tokens(tok, model_config, layout):
        lines.append(f"PARAMETER stop {json.dumps(t)}")
    system = system if system is not None else (layout.default_system if layout is not None else None)
    if system:
        if layout is not None and layout.system is None:
            raise ExportError("generate.system is set but the chat template has no system turn")
        if '"""' in system:
            raise ExportError('the system prompt contains """, which a Modelfile cannot quote')
        lines.append(f'SYSTEM """{system}"""')
    return "\n".join(lines) + "\n"


def _files(out: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(out)), p.stat().st_size) for p in out.rglob("*") if p.is_file())


_DTYPES = ("float32", "float16", "bfloat16", "auto")


def _export_dtype(dtype: str, base_path: str):
    """The torch dtype the merged safetensors are saved in ("auto": the base checkpoint's own)."""
    import torch

    if dtype not in _DTYPES:
        raise ExportError(f"export dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    if dtype == "auto":
        cfg_file = Path(base_path) / "config.json"
        saved = json.loads(cfg_file.read_text()) if cfg_file.exists() else {}
        dtype = saved.get("dtype") or saved.get("torch_dtype") or "float32"
    return getattr(torch, dtype)


def _gguf_kinds(gguf: Any) -> list[str]:
    from .gguf import ALL_TYPES

    if gguf is None:
        return []
    kinds = [k.strip().lower() for k in (gguf.split(",") if isinstance(gguf, str) else gguf) if k.strip()]
    bad = [k for k in kinds if k not in ALL_TYPES]
    if bad or not kinds:
        raise ExportError(f"gguf must be one or more of {', '.join(ALL_TYPES)} (comma separated), got {gguf!r}")
    return kinds


def calibration_texts(tok, dataset: str, max_samples: int = 128) -> list[str]:
    """Chat-rendered texts of ``dataset`` for GPTQ calibration (what the model will see in use)."""
    from .data import load_rows

    rows, _ = load_rows(dataset, max_samples=max_samples)
    texts = []
    for r in rows:
        if r.get("messages"):
            texts.append(tok.apply_chat_template(r["messages"], tokenize=False))
        elif isinstance(r.get("text"), str):
            texts.append(r["text"])
        elif r.get("prompt"):
            texts.append(tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True))
    if not texts:
        raise ExportError(f"dataset {dataset!r} gave no calibration texts (rows need messages, text or prompt)")
    return texts


def export_gptq(
    model_dir: Path,
    dst: Path,
    tok,
    *,
    bits: int = 4,
    dataset: str = "demo_sft",
    max_samples: int = 128,
    group_size: int = 128,
) -> Path:
    """GPTQ-quantize a saved (merged) model with gptqmodel on calibration texts from ``dataset``.

    Needs the ``gptqmodel`` package and a CUDA GPU (its quantization kernels are CUDA-only), so it
    runs where both are present (tests marked ``gpu``). The result is a transformers-loadable
    GPTQ checkpoint (``quantization_config.quant_method = "gptq"``) with the tokenizer beside it.
    """
    import importlib.util

    import torch

    if bits not in (2, 3, 4, 8):
        raise ExportError(f"GPTQ bits must be 2, 3, 4 or 8, got {bits!r}")
    if importlib.util.find_spec("gptqmodel") is None:
        raise ExportError("GPTQ export needs the gptqmodel package: pip install 'forge-kit[gptq]'")
    if not torch.cuda.is_available():
        raise ExportError("GPTQ export needs a CUDA GPU (gptqmodel quantizes on the GPU)")
    from gptqmodel import GPTQModel, QuantizeConfig

    texts = calibration_texts(tok, dataset, max_samples)
    model = GPTQModel.load(str(model_dir), QuantizeConfig(bits=bits, group_size=group_size))
    model.quantize(texts, batch_size=1)
    model.save(str(dst))
    tok.save_pretrained(str(dst))
    return dst


def export(
    source: Any,
    out_dir: Optional[str | os.PathLike] = None,
    *,
    merge: bool = True,
    modelfile: bool = True,
    gguf: Any = None,
    max_shard_size: str = "2GB",
    dtype: str = "float32",
    device: str = "cpu",
    card: bool = True,
    gptq_bits: Optional[int] = None,
    gptq_dataset: Optional[str] = None,
    gptq_samples: int = 128,
    push_to_hub: Optional[str] = None,
    token: Optional[str] = None,
    private: bool = False,
    dry_run: bool = False,
) -> dict:
    """Export ``source`` (a Run, run dir or model name) to ``out_dir``; returns what was written.

    merge: LoRA runs are merged into an fp32 copy of the base (else the adapter goes to
    ``out/adapter/``, laid out for PEFT, vLLM and the Hub, and the Modelfile points at base +
    ADAPTER). The export knobs of LLaMA-Factory's export tab: ``max_shard_size``, ``dtype`` of the
    saved merged weights (float32, float16, bfloat16, or "auto": the base checkpoint's), ``device``
    the merge runs on, and GPTQ (``gptq_bits`` with calibration rows from ``gptq_dataset``; needs
    gptqmodel and a CUDA GPU). gguf: one or more types of :data:`kit.gguf.ALL_TYPES` ("q8_0",
    ["f16", "q4_k_m"], "f16,q8_0"), written from the fp32 merged weights. card: a README.md
    model card. push_to_hub: upload to this repo (huggingface_hub's login; ``dry_run`` lists the
    files and the repo id and uploads nothing).
    """
    import torch

    from . import hub
    from .models import load_model

    kinds = _gguf_kinds(gguf)
    cfg, run_dir = _resolve(source)
    try:
        weights = RunDir(run_dir).weights() if run_dir is not None else None
    except RunDirError as e:  # no final weights yet: has the run finished?
        raise ExportError(str(e)) from e
    adapter = weights.adapter if weights is not None else None
    has_adapter = adapter is not None
    if kinds and has_adapter and not merge:
        raise ExportError("gguf export needs merged weights: drop merge=False / --no-merge")
    if gptq_bits and has_adapter and not merge:
        raise ExportError("GPTQ export needs merged weights: drop merge=False / --no-merge")
    if out_dir is None:
        if run_dir is not None:
            out_dir = RunDir(run_dir).export_dir
        else:
            from .paths import forge_home

            out_dir = forge_home() / "exports" / Path(str(cfg.model.name)).name
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    base_name = cfg.model.name
    cfg = cfg.replace(quant__bits=None, model__dtype="float32", model__device=device)
    if weights is not None and not has_adapter:
        cfg = cfg.replace(model__name=weights.model, model__adapter_path=None)

    result: dict[str, Any] = {
        "out_dir": str(out),
        "merged": False,
        "modelfile": None,
        "gguf": None,
        "gguf_files": {},
        "card": None,
        "gptq": None,
    }
    if has_adapter and merge:
        loaded = load_model(cfg.replace(model__adapter_path=str(adapter)), with_adapter=True)
        model = loaded.model.merge_and_unload()
        result["merged"] = True
    else:
        loaded = load_model(cfg, with_adapter=False)
        model = loaded.model if not has_adapter else None
    tok = loaded.tokenizer
    base = hub.base_model_of(base_name, loaded.path)
    if model is not None:
        for kind in kinds:  # from the fp32 merged weights, before any cast for the safetensors copy
            from .gguf import GGUFExportError, write_gguf

            try:
                gpath = write_gguf(model, tok, out / f"{Path(str(out)).name}-{kind}.gguf", kind)
            except GGUFExportError as e:
                raise ExportError(str(e)) from e
            result["gguf_files"][kind] = str(gpath)
        result["gguf"] = next(iter(result["gguf_files"].values()), None)
        with torch.no_grad():
            model.to(_export_dtype(dtype, loaded.path))
            model.save_pretrained(str(out), safe_serialization=True, max_shard_size=max_shard_size)
        tok.save_pretrained(str(out))  # keeps the chat template used in training
        hub_folder = out
        if card:
            text = hub.model_card(
                cfg,
                base,
                kind="merged",
                run_dir=run_dir,
                gguf_files=[Path(g).name for g in result["gguf_files"].values()],
                repo_id=push_to_hub,
            )
            (out / "README.md").write_text(text, encoding="utf-8")
            result["card"] = str(out / "README.md")
        if gptq_bits:
            result["gptq"] = str(
                export_gptq(
                    out,
                    out / f"gptq-{gptq_bits}bit",
                    tok,
                    bits=gptq_bits,
                    dataset=gptq_dataset or cfg.data.dataset,
                    max_samples=gptq_samples,
                )
            )
    else:  # the adapter on its own: adapter_config.json + adapter_model.safetensors at its folder's root
        hub_folder = hub.write_adapter_folder(adapter, out / "adapter", tok, base)
        if card:
            text = hub.model_card(cfg, base, kind="adapter", run_dir=run_dir, repo_id=push_to_hub)
            (hub_folder / "README.md").write_text(text, encoding="utf-8")
            result["card"] = str(hub_folder / "README.md")

    if modelfile:
        if model is not None:
            src = result["gguf"] or str(out.resolve())  # Ollama imports GGUF directly, safetensors dirs too
            text = modelfile_text(tok, model.config, str(Path(src).resolve()), cfg.generate.system)
        else:
            text = modelfile_text(
                tok,
                loaded.model.config,
                str(Path(loaded.path).resolve()),
                cfg.generate.system,
                adapter_path=str(hub_folder.resolve()),
            )
        (out / "Modelfile").write_text(text)
        result["modelfile"] = str(out / "Modelfile")

    result["files"] = _files(out)
    result["hub_folder"] = str(hub_folder)
    if push_to_hub:
        if dry_run:
            print(f"dry run: exported to {out}:")
            for name, size in result["files"]:
                print(f"  {name:40s} {size:>12,d} B")
        try:
            plan = hub.push_folder(hub_folder, push_to_hub, token=token, private=private, dry_run=dry_run)
        except hub.HubError as e:
            raise ExportError(str(e)) from e
        result.update(repo_id=push_to_hub, pushed=plan["pushed"], upload=plan["upload"])
    return result


# the GGUF writer lives in kit.gguf; these names stay importable from here
from .gguf import ALL_TYPES as GGUF_TYPES  # noqa: E402,F401
from .gguf import write_gguf  # noqa: E402,F401
