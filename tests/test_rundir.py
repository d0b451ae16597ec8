"""RunDir: the one reader of a run directory's layout; the model cache that notices a retrained run."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from kit.config import RunConfig
from kit.errors import ForgeError
from kit.rundir import MODELS, ModelCache, RunDir, RunDirError, Weights, find_adapter_dir, fingerprint


def _run_dir(tmp_path, adapter_type="lora", model="smollm2-135m-instruct", name="run") -> RunDir:
    rd = RunDir(tmp_path / name)
    rd.save_config(
        RunConfig.from_dict(
            {"model": {"name": str(model)}, "adapter": {"type": adapter_type}, "train": {"output_dir": str(rd.path)}}
        )
    )
    return rd


def _fake_adapter(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.safetensors").write_bytes(b"\0" * 8)


def _fake_model(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"\0" * 8)


def test_identity_and_paths(tmp_path):
    assert not RunDir.is_run_dir(tmp_path) and not RunDir.is_run_dir(None) and not RunDir.is_run_dir(3)
    with pytest.raises(RunDirError, match="not a run directory \\(no config.yaml\\)") as e:
        RunDir.open(tmp_path)
    assert isinstance(e.value, ForgeError) and isinstance(e.value, FileNotFoundError)
    rd = _run_dir(tmp_path)
    assert RunDir.is_run_dir(rd.path) and RunDir.is_run_dir(str(rd.path)) and RunDir.open(rd.path) == rd
    assert rd.config().adapter.type == "lora"
    p = rd.path
    assert (rd.config_path, rd.events_path, rd.state_path) == (p / "config.yaml", p / "events.jsonl", p / "state.json")
    assert (rd.adapter_dir, rd.model_dir, rd.export_dir) == (p / "adapter", p / "model", p / "export")
    assert rd.checkpoint_dir(7) == p / "checkpoints" / "checkpoint-7" and rd.eval_dir("mc") == p / "eval" / "mc"
    assert rd.final_dir("adapter") == rd.adapter_dir and os.fspath(rd) == str(p)
    with pytest.raises(ValueError):
        rd.final_dir("merged")


def test_state_and_events(tmp_path):
    rd = _run_dir(tmp_path)
    assert rd.state() == {} and rd.events() == []
    rd.write_state({"status": "finished", "step": 3})
    assert rd.state() == {"status": "finished", "step": 3} and not rd.state_path.with_suffix(".tmp").exists()
    rd.state_path.write_text("{half")  # unreadable: no state rather than a traceback
    assert rd.state() == {}
    rd.events_path.write_text('{"event": "start", "time": 1.0, "step": 0}\n{"event": "st')  # a partial last line
    assert [e.kind for e in rd.events()] == ["start"]


def test_eval_scores(tmp_path):
    rd = _run_dir(tmp_path)
    assert rd.eval_scores() == {}
    rd.eval_dir("demo_mc").mkdir(parents=True)
    (rd.eval_dir("demo_mc") / RunDir.EVAL_SCORES).write_text('{"accuracy": 50.0, "n": 4}')
    rd.eval_dir("broken").mkdir()
    (rd.eval_dir("broken") / RunDir.EVAL_SCORES).write_text("{")
    assert rd.eval_scores() == {"demo_mc": {"accuracy": 50.0, "n": 4}}


def test_checkpoints_sort_by_step_and_count_only_when_complete(tmp_path):
    rd = _run_dir(tmp_path)
    assert rd.checkpoints() == [] and rd.last_checkpoint() is None
    for step in (2, 10, 9):
        rd.checkpoint_dir(step).mkdir(parents=True)
    (rd.checkpoints_dir / "checkpoint-tmp").mkdir()  # not a checkpoint-N: ignored
    assert [RunDir.checkpoint_step(c) for c in rd.checkpoints()] == [2, 9, 10]
    RunDir.mark_complete(rd.checkpoint_dir(2), 2)
    RunDir.mark_complete(rd.checkpoint_dir(9), 9)
    assert (rd.checkpoint_dir(9) / RunDir.COMPLETE_MARKER).read_text() == "9"
    assert rd.complete_checkpoints() == [rd.checkpoint_dir(2), rd.checkpoint_dir(9)]
    assert rd.last_checkpoint() == rd.checkpoint_dir(9)  # checkpoint-10 has no marker: a save cut short
    with pytest.raises(ValueError):
        RunDir.checkpoint_step(rd.path / "adapter")


def test_weights_one_lookup_order(tmp_path):
    lora = _run_dir(tmp_path, "lora", name="lora")
    with pytest.raises(RunDirError, match="has the run finished"):
        lora.weights()
    lora.checkpoint_dir(4).mkdir(parents=True)
    RunDir.mark_complete(lora.checkpoint_dir(4), 4)
    with pytest.raises(RunDirError, match="checkpoint-4 .*forge resume"):
        lora.weights()
    _fake_adapter(lora.adapter_dir)
    w = lora.weights()
    assert w == Weights(model="smollm2-135m-instruct", adapter=lora.adapter_dir) and w.kind == "adapter"
    assert w.folder == lora.adapter_dir
    cfg = lora.model_config(generate__max_new_tokens=5)
    assert cfg.model.name == "smollm2-135m-instruct" and cfg.model.adapter_path == str(lora.adapter_dir)
    assert cfg.generate.max_new_tokens == 5
    # a stale full model from an earlier run in the same folder does not win over the LoRA the config trains
    _fake_model(lora.model_dir)
    assert lora.weights().adapter == lora.adapter_dir

    full = _run_dir(tmp_path, "full", name="full")
    _fake_adapter(full.adapter_dir)  # stale the other way round
    _fake_model(full.model_dir)
    assert full.weights() == Weights(model=str(full.model_dir)) and full.weights().kind == "model"
    cfg = full.model_config()
    assert cfg.model.name == str(full.model_dir) and cfg.model.adapter_path is None and cfg.quant.bits is None
    shutil.rmtree(full.model_dir)  # only the other kind left: it is used
    assert full.weights().adapter == full.adapter_dir


def test_find_adapter_dir(tmp_path):
    rd = _run_dir(tmp_path)
    with pytest.raises(RunDirError, match="no LoRA adapter"):
        find_adapter_dir(rd.path)
    _fake_adapter(rd.checkpoint_dir(2))
    _fake_adapter(rd.checkpoint_dir(4))  # newer, but its save never finished
    RunDir.mark_complete(rd.checkpoint_dir(2), 2)
    assert find_adapter_dir(rd.path) == rd.checkpoint_dir(2)
    _fake_adapter(rd.adapter_dir)
    assert find_adapter_dir(rd.path) == rd.adapter_dir
    assert find_adapter_dir(rd.checkpoint_dir(4)) == rd.checkpoint_dir(4)  # named directly: taken as it is


def test_the_rest_of_kit_reads_run_dirs_through_rundir(tmp_path, tiny_model_dir):
    from kit.models.loading import ModelNotFoundError, resolve_model_path
    from kit.widgets.estimate import local_model_dir

    full = _run_dir(tmp_path, "full", model=tiny_model_dir, name="full")
    shutil.copytree(tiny_model_dir, full.model_dir)
    assert resolve_model_path(str(full.path))[0] == str(full.model_dir)
    assert local_model_dir(str(full.path)) == str(full.model_dir)
    lora = _run_dir(tmp_path, "lora", model=tiny_model_dir, name="lora")
    _fake_adapter(lora.adapter_dir)
    with pytest.raises(ModelNotFoundError, match="LoRA run"):
        resolve_model_path(str(lora.path))
    assert local_model_dir(str(lora.path)) == str(tiny_model_dir)  # the estimate uses the base's shapes


# ------------------------------------------------------------------ the cache


def _touch(f, data: bytes):
    f.write_bytes(data)
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a distinct mtime even on a coarse clock


def test_fingerprint_follows_the_weights(tmp_path):
    assert fingerprint("smollm2-135m-instruct") == () and fingerprint(None) == ()
    rd = _run_dir(tmp_path)
    assert fingerprint(rd.path) == ()  # no weights yet
    _fake_adapter(rd.adapter_dir)
    before = fingerprint(rd.path)
    assert {os.path.basename(f) for f, _, _ in before} == {"adapter_config.json", "adapter_model.safetensors"}
    assert fingerprint(rd.path) == before
    _touch(rd.adapter_dir / "adapter_model.safetensors", b"\1" * 8)
    assert fingerprint(rd.path) != before
    (rd.path / "events.jsonl").write_text("")  # not weights: no change
    assert fingerprint(rd.path) == fingerprint(rd.path)


def test_cache_reloads_a_retrained_run_and_nothing_else(tmp_path):
    cache = ModelCache()
    rd = _run_dir(tmp_path)
    _fake_adapter(rd.adapter_dir)
    loads = []

    def load():
        loads.append(time.time())
        return object()

    a = cache.get("chat", rd.path, load)
    assert cache.get("chat", str(rd.path), load) is a and len(loads) == 1  # str and Path: the same key
    assert cache.get("reward", rd.path, load) is not a and len(loads) == 2  # another kind, another entry
    _touch(rd.adapter_dir / "adapter_model.safetensors", b"\2" * 16)  # retrained into the same folder
    b = cache.get("chat", rd.path, load)
    assert b is not a and len(loads) == 3 and len(cache) == 2  # the stale entry was replaced
    assert cache.get("chat", rd.path, load) is b
    assert cache.get("chat", "smollm2-135m-instruct", load) is cache.get("chat", "smollm2-135m-instruct", load)
    cache.forget("reward")
    assert len(cache) == 2
    cache.forget()
    assert len(cache) == 0


def test_kit_chat_notices_a_retrained_run(tmp_path, tiny_model_dir):
    """kit.chat on a run directory: cached while the weights stay, reloaded once they change."""
    import torch
    from transformers import AutoModelForCausalLM

    from kit.infer.hf import chat

    rd = _run_dir(tmp_path, "full", model=tiny_model_dir)
    shutil.copytree(tiny_model_dir, rd.model_dir)
    MODELS.forget("chat")
    first = chat(str(rd.path), "Hi", max_new_tokens=2)
    key = ("chat", str(rd.path.resolve()))
    cm = MODELS._entries[key][1]
    assert isinstance(first, str) and chat(str(rd.path), "Hi", max_new_tokens=2) == first
    assert MODELS._entries[key][1] is cm
    model = AutoModelForCausalLM.from_pretrained(str(rd.model_dir))
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(-1.0)  # "retrained": different weights, same folder
    model.save_pretrained(str(rd.model_dir), safe_serialization=True)
    chat(str(rd.path), "Hi", max_new_tokens=2)
    again = MODELS._entries[key][1]
    assert again is not cm
    emb = again.model.get_input_embeddings().weight
    torch.testing.assert_close(emb, -cm.model.get_input_embeddings().weight)
    MODELS.forget("chat")


def test_chat_panel_shares_the_one_model_cache(tmp_path, tiny_model_dir):
    """The Board's chat tab loads through kit.rundir.MODELS: the model kit.chat loaded is the one it uses,
    and a run retrained into the same folder is loaded again."""
    import torch
    from transformers import AutoModelForCausalLM

    from kit.infer.hf import chat
    from kit.widgets.chat import ChatPanel

    rd = _run_dir(tmp_path, "full", model=tiny_model_dir)
    shutil.copytree(tiny_model_dir, rd.model_dir)
    MODELS.forget("chat")
    chat(str(rd.path), "Hi", max_new_tokens=2)
    key = ("chat", str(rd.path.resolve()))
    cached = MODELS._entries[key][1]
    panel = ChatPanel(source=str(rd.path), max_new_tokens=2)
    assert panel.model() is cached and len(MODELS) == 1  # nothing loaded twice
    model = AutoModelForCausalLM.from_pretrained(str(rd.model_dir))
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(-1.0)
    model.save_pretrained(str(rd.model_dir), safe_serialization=True)  # retrained in place
    fresh = panel.model()
    assert fresh is not cached and fresh is MODELS._entries[key][1]
    assert panel.model() is fresh
    MODELS.forget("chat")
