"""kit.infer: generation settings, incremental text and stop strings, and the hf back end's batched
decode loop (greedy answers equal transformers' generate and one-at-a-time generation, seeds,
finish reasons, cancellation), the batching scheduler, and the optional back ends' errors."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from kit.config import ConfigError, GenerateConfig
from kit.infer import ChatModel, GenerationSettings
from kit.infer.decoding import AnswerText, StopStrings, TextStream

PROMPTS = [
    "Hello there",
    "What is the capital of France? Answer in one word please.",
    "2+2",
    "Tell me a long story about dragons, knights and a castle on a hill by the sea.",
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return ChatModel.load(str(tiny_model_dir))


# ------------------------------------------------------------------ settings


def test_settings_come_from_the_config_and_bad_values_name_the_key():
    s = GenerationSettings.from_config(GenerateConfig(max_new_tokens=64, stop="END"), temperature=0.5, seed=3)
    assert (s.max_new_tokens, s.temperature, s.stop, s.seed, s.greedy) == (64, 0.5, ("END",), 3, False)
    assert GenerationSettings.from_config(None).greedy
    with pytest.raises(ConfigError, match="unknown generation setting.*'temprature'.*allowed: max_new_tokens"):
        GenerationSettings.from_config(None, temprature=0.5)
    for bad, key in [
        ({"top_p": 1.5}, "generate.top_p"),
        ({"max_new_tokens": 0}, "generate.max_new_tokens"),
        ({"stop": [""]}, "generate.stop"),
        ({"seed": "x"}, "generate.seed"),
        ({"repetition_penalty": 0.0}, "generate.repetition_penalty"),
    ]:
        with pytest.raises(ConfigError) as e:
            GenerationSettings(**bad)
        assert e.value.key == key, (bad, e.value)


# ------------------------------------------------------------------ text


def test_text_stream_pieces_join_to_the_full_decode(default_tokenizer):
    tok = default_tokenizer
    text = "Héllo wörld! 你好，世界 🚀🚀 done.\n  indented    spaces"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    ts = TextStream(tok)
    pieces = [ts.push([i]) for i in ids] + [ts.flush()]
    assert "".join(pieces) == tok.decode(ids, skip_special_tokens=True)
    assert not any("\ufffd" in p for p in pieces)  # a multi-byte character is never shown half-made


def test_stop_strings_are_cut_across_pieces_and_never_shown_in_part():
    s = StopStrings(["END", "\n\n"])
    shown = [s.push(p) for p in ["abc E", "N", "?xyz E", "ND tail"]]
    assert "".join(shown) == "abc EN?xyz " and s.stopped and s.text == "abc EN?xyz "
    assert shown[0] == "abc " and shown[1] == ""  # "EN" might still become "END": held back
    s = StopStrings(["END"])
    assert s.push("abcE") == "abc" and s.flush() == "E" and not s.stopped  # the answer ended: release the tail
    s = StopStrings(["a\n\nb", "\n\n"])
    assert s.push("x\n") == "x" and s.push("\ny") == "" and s.text == "x"  # the earliest stop string wins


def test_answer_text_with_tokens(default_tokenizer):
    tok = default_tokenizer
    ids = tok("one two three four", add_special_tokens=False)["input_ids"]
    a = AnswerText(tok, stops=[" three"])
    out = [a.push([i]) for i in ids]
    assert "".join(t for t, _ in out) == "one two" and out[-1][1] and a.text == "one two"


# ------------------------------------------------------------------ the hf back end


def _reference(cm: ChatModel, prompt: str, **kw) -> list[int]:
    """transformers' own greedy generate on the same prompt (no batching, no padding)."""
    from kit.data.encode import encode_prompt

    ids = encode_prompt(cm.tokenizer, [{"role": "user", "content": prompt}])
    with torch.inference_mode():
        out = cm.model.generate(
            torch.tensor([ids]), do_sample=False, eos_token_id=cm.stop_ids, pad_token_id=cm.engine.pad_id, **kw
        )
    return out[0, len(ids) :].tolist()


def test_greedy_answers_equal_transformers_generate(tiny):
    for p in PROMPTS[:3]:
        assert tiny.generate_ids(p, max_new_tokens=12) == _reference(tiny, p, max_new_tokens=12)
    # the repetition penalty counts the prompt's tokens as transformers does
    p = PROMPTS[3]
    assert tiny.generate_ids(p, max_new_tokens=12, repetition_penalty=1.5) == _reference(
        tiny, p, max_new_tokens=12, repetition_penalty=1.5
    )


def test_batched_generation_equals_one_at_a_time(tiny):
    alone = [tiny.generate_ids(p, max_new_tokens=16) for p in PROMPTS]
    reqs = [tiny.request(p, max_new_tokens=16) for p in PROMPTS]
    assert [c.token_ids for c in tiny.engine.generate(reqs)] == alone  # one left-padded batch
    engine = tiny.engine
    engine.max_batch_size = 2  # rows leave and new ones join the running batch
    try:
        got = engine.generate([tiny.request(p, max_new_tokens=n) for p, n in zip(PROMPTS, (16, 3, 16, 7))])
    finally:
        engine.max_batch_size = 16
    assert [c.token_ids for c in got] == [alone[0], alone[1][:3], alone[2], alone[3][:7]]
    assert [c.finish_reason for c in got][1] == "length"
    assert tiny.generate_many(PROMPTS, max_new_tokens=16) == [tiny.generate(p, max_new_tokens=16) for p in PROMPTS]


def test_stream_pieces_join_to_the_answer_and_usage_counts(tiny):
    req = tiny.request(PROMPTS[1], max_new_tokens=10)
    deltas = list(tiny.engine.stream(req))
    full = tiny.engine.generate([tiny.request(PROMPTS[1], max_new_tokens=10)])[0]
    assert "".join(d.text for d in deltas) == full.text
    assert [t for d in deltas for t in d.token_ids] == full.token_ids
    assert deltas[-1].finish_reason == full.finish_reason and deltas[-1].completion_tokens == len(full.token_ids)
    assert full.prompt_tokens == len(req.prompt_ids) and all(d.finish_reason is None for d in deltas[:-1])


def test_stop_strings_end_the_answer(tiny, default_tokenizer):
    full = tiny.engine.generate([tiny.request(PROMPTS[3], max_new_tokens=24)])[0]
    text = full.text
    # a stop string the answer surely contains: the text of one of its middle tokens
    mid = len(full.token_ids) // 2
    stop = default_tokenizer.decode(full.token_ids[mid : mid + 1])
    assert stop and stop in text
    got = tiny.engine.generate([tiny.request(PROMPTS[3], max_new_tokens=24, stop=[stop])])[0]
    assert got.text == text[: text.find(stop)] and got.finish_reason == "stop"
    assert len(got.token_ids) <= mid + 1 < len(full.token_ids)
    assert "".join(tiny.stream(PROMPTS[3], max_new_tokens=24, stop=[stop])) == got.text


def test_seeded_sampling_repeats_whatever_else_is_in_the_batch(tiny):
    kw = dict(max_new_tokens=12, temperature=0.9, top_p=0.95, top_k=50, seed=1234)
    alone = tiny.generate_ids(PROMPTS[0], **kw)
    assert tiny.generate_ids(PROMPTS[0], **kw) == alone
    batch = tiny.engine.generate(
        [
            tiny.request(PROMPTS[2], max_new_tokens=12, temperature=1.0),
            tiny.request(PROMPTS[0], **kw),
            tiny.request(PROMPTS[3], max_new_tokens=5),
        ]
    )
    assert batch[1].token_ids == alone
    other = {tuple(tiny.generate_ids(PROMPTS[0], **dict(kw, seed=s))) for s in range(5)}
    assert len(other) > 1  # the seed matters: it is sampling


def test_closing_a_stream_stops_generation(tiny):
    it = tiny.stream(PROMPTS[3], max_new_tokens=500)
    next(it)
    it.close()  # no error, nothing left running


def test_prompt_longer_than_the_context_is_refused(tiny):
    from kit.infer.engine import ContextLengthError

    with pytest.raises(ContextLengthError, match="context is 1024 tokens"):
        tiny.generate("word " * 1100)


# ------------------------------------------------------------------ the batching scheduler


def test_scheduler_batches_concurrent_requests_and_cancels(tiny):
    from kit.infer.scheduler import BatchScheduler

    sched = BatchScheduler(tiny.engine)
    try:
        want = [tiny.generate_ids(p, max_new_tokens=10) for p in PROMPTS]
        tickets = [sched.submit(tiny.request(p, max_new_tokens=10)) for p in PROMPTS]
        long = sched.submit(tiny.request(PROMPTS[0], max_new_tokens=1000))
        results = {}

        def read(i, t):
            results[i] = [tok for d in t for tok in d.token_ids]

        threads = [threading.Thread(target=read, args=(i, t)) for i, t in enumerate(tickets)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        assert [results[i] for i in range(len(PROMPTS))] == want  # each reader got its own tokens only
        first = next(iter(long))
        assert first.finish_reason is None
        long.cancel()
        t0 = time.time()
        while sched.active() and time.time() - t0 < 30:
            time.sleep(0.05)
        assert sched.active() == 0  # the cancelled row left the batch long before its 1000 tokens
    finally:
        sched.close()


# ------------------------------------------------------------------ optional back ends


def test_vllm_on_a_machine_without_it_says_what_it_needs(tiny_model_dir):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the vllm tests below run instead")
    with pytest.raises(ConfigError, match=r"vllm back end needs a CUDA GPU and `pip install forge-kit\[vllm\]`") as e:
        ChatModel.load(str(tiny_model_dir), generate__backend="vllm")
    assert e.value.key == "generate.backend"


def test_unknown_backend_is_refused_by_the_config(tiny_model_dir):
    with pytest.raises(ConfigError, match="allowed values: 'hf', 'vllm', 'llamacpp'"):
        ChatModel.load(str(tiny_model_dir), generate__backend="onnx")


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@pytest.mark.vllm
@gpu
def test_vllm_serves_a_lora_run_without_merging_and_matches_hf(tiny_cfg):
    pytest.importorskip("vllm")
    import kit

    run = kit.train(tiny_cfg(max_steps=2, max_samples=8, lora_rank=8))
    hf = ChatModel.load(str(run.run_dir))
    v = ChatModel.load(str(run.run_dir), generate__backend="vllm")
    assert v.backend == "vllm" and v.engine.lora is not None  # the adapter is a LoRARequest, not merged
    for p in PROMPTS[:2]:
        assert v.generate(p, max_new_tokens=8) == hf.generate(p, max_new_tokens=8)
    assert "".join(v.stream(PROMPTS[0], max_new_tokens=8)) == v.generate(PROMPTS[0], max_new_tokens=8)
    assert v.generate_many(PROMPTS, max_new_tokens=8) == [v.generate(p, max_new_tokens=8) for p in PROMPTS]


# ------------------------------------------------------------------ the llamacpp back end


def _raw_llama_greedy(path, prompt_ids, n, stop_ids):
    """llama-cpp-python's own generate loop on the same file: what our loop must reproduce."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=2048, n_threads=torch.get_num_threads(), verbose=False)
    out = []
    for tok in llm.generate(prompt_ids, top_k=0, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
        out.append(tok)
        if tok in stop_ids or len(out) >= n:
            break
    llm.close()
    return out


def test_llamacpp_backend_on_an_f16_gguf_of_the_run(tiny_model_dir):
    pytest.importorskip("llama_cpp")
    ll = ChatModel.load(str(tiny_model_dir), generate__backend="llamacpp")
    assert ll.backend == "llamacpp" and ll.engine.path.name == "model-f16.gguf"
    again = ChatModel.load(str(tiny_model_dir), generate__backend="llamacpp")
    assert again.engine.path == ll.engine.path  # written once, then reused
    req = ll.request(PROMPTS[1], max_new_tokens=10)
    ids = ll.engine.generate([req])[0].token_ids
    assert ids == _raw_llama_greedy(ll.engine.path, req.prompt_ids, 10, ll.engine.stop_ids)
    assert (
        "".join(ll.stream(PROMPTS[1], max_new_tokens=10))
        == ll.engine.generate([ll.request(PROMPTS[1], max_new_tokens=10)])[0].text
    )
    kw = dict(max_new_tokens=10, temperature=1.0, seed=5)
    assert ll.generate_ids(PROMPTS[0], **kw) == ll.generate_ids(PROMPTS[0], **kw)


@pytest.mark.e2e
def test_llamacpp_backend_on_the_default_model(default_model_dir):
    pytest.importorskip("llama_cpp")
    ll = ChatModel.load("smollm2-135m-instruct", generate__backend="llamacpp")
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    req = ll.request(chat, max_new_tokens=24)
    first = ll.engine.generate([req])[0]
    assert first.token_ids == _raw_llama_greedy(ll.engine.path, req.prompt_ids, 24, ll.engine.stop_ids)
    assert "Paris" in first.text
    # the next turn starts with this turn's tokens: their cache is reused, the answer is the same as from scratch
    turn2 = chat + [{"role": "assistant", "content": first.text}, {"role": "user", "content": "And of Italy?"}]
    warm = ll.engine.generate([ll.request(turn2, max_new_tokens=16)])[0].token_ids
    ll.engine.reset()
    assert ll.engine.generate([ll.request(turn2, max_new_tokens=16)])[0].token_ids == warm
