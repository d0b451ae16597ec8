"""Golden loss-mask tests against the tokenizer's own chat template (SmolLM2's ChatML).

The template is the source of truth: input ids must equal ``apply_chat_template`` token for
token, and the trained tokens must be exactly each answer plus its end-of-turn marker.
"""

from __future__ import annotations

import pytest
import torch

from kit.data import IGNORE, ForgeCollator, encode_chat, encode_prompt, pack

CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "content": "6, of course."},
]


def spans(labels):
    """[start, end) runs of trained positions."""
    out, start = [], None
    for i, x in enumerate(list(labels) + [IGNORE]):
        if x != IGNORE and start is None:
            start = i
        elif x == IGNORE and start is not None:
            out.append((start, i))
            start = None
    return out


def test_default_mask_trains_every_answer_only(default_tokenizer):
    tok = default_tokenizer
    e = encode_chat(tok, CHAT, 512)
    assert e["input_ids"] == tok.apply_chat_template(CHAT, tokenize=True, return_dict=False)
    trained = [tok.decode(e["input_ids"][s:t]) for s, t in spans(e["labels"])]
    assert trained == ["4.<|im_end|>\n", "6, of course.<|im_end|>\n"]
    # trained labels are the input ids themselves (the model shifts), nothing else is trained
    for s, t in spans(e["labels"]):
        assert e["labels"][s:t] == e["input_ids"][s:t]
    # the untrained text is exactly the template's prompt part, role headers included
    untrained = tok.decode([i for i, lab in zip(e["input_ids"], e["labels"]) if lab == IGNORE])
    assert untrained.endswith("<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n")
    assert "<|im_start|>system\nYou are terse.<|im_end|>" in untrained


def test_train_on_prompt_trains_everything(default_tokenizer):
    e = encode_chat(default_tokenizer, CHAT, 512, train_on_prompt=True)
    assert e["labels"] == e["input_ids"]


def test_mask_history_trains_only_the_last_answer(default_tokenizer):
    tok = default_tokenizer
    e = encode_chat(tok, CHAT, 512, mask_history=True)
    assert [tok.decode(e["input_ids"][s:t]) for s, t in spans(e["labels"])] == ["6, of course.<|im_end|>\n"]
    # and with train_on_prompt the earlier answer is part of the (trained) prompt again
    both = encode_chat(tok, CHAT, 512, mask_history=True, train_on_prompt=True)
    assert both["labels"] == both["input_ids"]


def test_default_system_prompt_of_the_template_is_kept(default_tokenizer):
    """SmolLM2 injects a default system turn when none is given; ids still match the template."""
    tok = default_tokenizer
    msgs = CHAT[1:3]
    e = encode_chat(tok, msgs, 512)
    assert e["input_ids"] == tok.apply_chat_template(msgs, tokenize=True, return_dict=False)
    assert "You are a helpful AI assistant named SmolLM" in tok.decode(e["input_ids"])
    assert [tok.decode(e["input_ids"][s:t]) for s, t in spans(e["labels"])] == ["4.<|im_end|>\n"]


def test_cutoff_truncates_ids_and_labels_together(default_tokenizer):
    e = encode_chat(default_tokenizer, CHAT, 20)
    assert len(e["input_ids"]) == len(e["labels"]) == 20


def test_preference_prompt_is_the_generation_prompt(default_tokenizer):
    """A preference prompt ends with the assistant header, and prompt + answer is the full chat."""
    tok = default_tokenizer
    prompt, chosen = CHAT[:4], CHAT[4:]
    p = encode_prompt(tok, prompt)
    full = tok.apply_chat_template(prompt + chosen, tokenize=True, return_dict=False)
    assert full[: len(p)] == p
    assert tok.decode(p).endswith("<|im_start|>assistant\n")
    assert tok.decode(full[len(p) :]) == "6, of course.<|im_end|>\n"


def test_tool_calls_need_a_template_that_renders_them(default_tokenizer):
    """SmolLM2's template drops tool calls silently, so such rows are refused; with a
    tool-capable template (chatml_tools) the call is trained and the tool result is not."""
    from kit.data.encode import TemplateError
    from kit.data.templates import CHATML_TOOLS

    msgs = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": "18C, sunny"},
        {"role": "assistant", "content": "It is 18C and sunny."},
    ]
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    with pytest.raises(TemplateError, match="cannot render"):
        encode_chat(default_tokenizer, msgs, 512, tools=tools)
    import copy

    tok = copy.deepcopy(default_tokenizer)
    tok.chat_template = CHATML_TOOLS
    e = encode_chat(tok, msgs, 512, tools=tools)
    assert e["input_ids"] == tok.apply_chat_template(msgs, tools=tools, tokenize=True, return_dict=False)
    trained = [tok.decode(e["input_ids"][s:t]) for s, t in spans(e["labels"])]
    assert len(trained) == 2
    assert '"name": "get_weather", "arguments": {"city": "Paris"}' in trained[0]
    assert trained[1] == "It is 18C and sunny.<|im_end|>\n"
    untrained = tok.decode([i for i, lab in zip(e["input_ids"], e["labels"]) if lab == IGNORE])
    assert "18C, sunny" in untrained and "get_weather" in untrained  # tool schema + result are context


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_packed_row_logits_equal_unpacked(tiny_model_dir, default_tokenizer, attn):
    """Each example inside a packed row gets exactly the logits it gets alone."""
    from transformers import AutoModelForCausalLM

    tok = default_tokenizer
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), attn_implementation=attn).eval()
    chats = [CHAT, CHAT[1:3], [{"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "Blue."}]]
    examples = [encode_chat(tok, c, 512) for c in chats]
    rows = pack(examples, 512)
    assert len(rows) == 1 and sorted(rows[0]["seq_lens"]) == sorted(len(e["input_ids"]) for e in examples)
    coll = ForgeCollator(pad_token_id=tok.pad_token_id, mask_dtype=torch.float32)
    batch = coll(rows)
    assert batch["attention_mask"].dim() == 4
    with torch.no_grad():
        packed = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]
        ).logits[0]
        s = 0
        order = [examples.index(next(e for e in examples if len(e["input_ids"]) == n)) for n in rows[0]["seq_lens"]]
        for n, k in zip(rows[0]["seq_lens"], order):
            ids = torch.tensor([rows[0]["input_ids"][s : s + n]])
            assert ids[0].tolist() == examples[k]["input_ids"]
            alone = model(input_ids=ids).logits[0]
            torch.testing.assert_close(packed[s : s + n], alone, atol=1e-4, rtol=1e-4)
            s += n
    # the first token of each packed example is never a target of the one before it
    starts = [sum(rows[0]["seq_lens"][:i]) for i in range(len(rows[0]["seq_lens"]))]
    assert all(batch["labels"][0, st].item() == IGNORE for st in starts)


def test_padding_free_batch_matches_examples_alone_forward_and_backward(tiny_model_dir, default_tokenizer):
    """The default training layout: all examples of a batch back to back in one row, attention per
    example through ``forge_varlen``. Logits and the gradients of a loss equal those of each example
    run alone (the sum of their losses)."""
    from transformers import AutoModelForCausalLM

    from kit.models.attention import use_varlen

    tok = default_tokenizer
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), attn_implementation="sdpa")
    chats = [CHAT, CHAT[1:3], [{"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "Blue."}]]
    examples = [encode_chat(tok, c, 512) for c in chats]
    rows = pack(examples[:2], 512) + [examples[2]]  # a packed row and a single example in one batch
    batch = ForgeCollator(pad_token_id=tok.pad_token_id, padding_free=True)(rows)
    n_total = sum(len(e["input_ids"]) for e in examples)
    assert batch["input_ids"].shape == (1, n_total) and "attention_mask" not in batch
    assert batch["cu_seq_lens_q"].tolist()[-1] == n_total and len(batch["cu_seq_lens_q"]) == 4
    assert int(batch["num_real_tokens"]) == n_total
    order = [
        e for r in rows for e in ([x for x in examples if x["input_ids"] == r["input_ids"]] or _split(r, examples))
    ]
    assert use_varlen(model) and model.config._attn_implementation == "forge_varlen"
    fwd = {k: v for k, v in batch.items() if k not in ("labels", "num_real_tokens", "num_trained_tokens")}
    flat = model(**fwd).logits[0]
    w = model.model.layers[0].self_attn.q_proj.weight
    (g_flat,) = torch.autograd.grad(flat.square().mean() * flat.shape[0], w)
    s, loss_alone = 0, 0.0
    for e in order:
        n = len(e["input_ids"])
        lo = model(input_ids=torch.tensor([e["input_ids"]])).logits[0]
        torch.testing.assert_close(flat[s : s + n].detach(), lo.detach(), atol=1e-4, rtol=1e-4)
        loss_alone = loss_alone + lo.square().mean() * n
        s += n
    (g_alone,) = torch.autograd.grad(loss_alone, w)
    torch.testing.assert_close(g_flat, g_alone, atol=1e-5, rtol=1e-4)
    # labels: the first token of every example is ignored, the rest are the examples' own labels
    starts = batch["cu_seq_lens_q"][:-1].tolist()
    assert all(batch["labels"][0, st].item() == IGNORE for st in starts)
    assert batch["position_ids"][0, starts].tolist() == [0, 0, 0]


def _split(row, examples):
    """The examples a packed row holds, in order."""
    out, s = [], 0
    for n in row["seq_lens"]:
        out.append(next(e for e in examples if e["input_ids"] == row["input_ids"][s : s + n]))
        s += n
    return out


def test_packing_without_the_block_mask_would_leak(tiny_model_dir, default_tokenizer):
    """Control for the test above: a plain causal mask over the same packed row changes the
    second example's logits, so the equality above is a real check."""
    from transformers import AutoModelForCausalLM

    tok = default_tokenizer
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), attn_implementation="eager").eval()
    a, b = encode_chat(tok, CHAT, 512), encode_chat(tok, CHAT[1:3], 512)
    ids = torch.tensor([a["input_ids"] + b["input_ids"]])
    pos = torch.tensor([list(range(len(a["input_ids"]))) + list(range(len(b["input_ids"])))])
    with torch.no_grad():
        leaky = model(input_ids=ids, position_ids=pos).logits[0, len(a["input_ids"]) :]
        alone = model(input_ids=torch.tensor([b["input_ids"]])).logits[0]
    assert (leaky - alone).abs().max() > 1e-3
