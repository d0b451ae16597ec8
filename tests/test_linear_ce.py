"""The chunked LM head + cross-entropy (kit.stages.linear_ce) equals the plain loss, and is used
only where the model's logits are plain ``lm_head(hidden)``."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kit.stages.linear_ce import chunk_tokens, decoder_and_head, linear_cross_entropy


@pytest.mark.parametrize("train_head", [False, True])
@pytest.mark.parametrize("chunk", [3, 7, 1000])  # several chunks, a ragged last one, a single chunk
def test_loss_and_gradients_equal_the_plain_path(train_head, chunk):
    torch.manual_seed(0)
    n, h, vocab = 20, 16, 50
    hidden = torch.randn(n, h, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(vocab, h, dtype=torch.float64, requires_grad=train_head)
    target = torch.randint(0, vocab, (n,))

    loss, correct = linear_cross_entropy(hidden, weight, target, chunk)
    (2.5 * loss).backward()  # a constant scale, as the trainer divides by the trained tokens
    ours = (loss.detach(), hidden.grad.clone(), weight.grad.clone() if train_head else None)
    hidden.grad = None
    weight.grad = None

    logits = hidden @ weight.t()
    ref = F.cross_entropy(logits, target, reduction="sum")
    (2.5 * ref).backward()
    torch.testing.assert_close(ours[0], ref.detach())
    torch.testing.assert_close(ours[1], hidden.grad)
    if train_head:
        torch.testing.assert_close(ours[2], weight.grad)
    assert int(correct) == int((logits.argmax(-1) == target).sum())


def test_no_gradient_work_without_grad():
    hidden, weight = torch.randn(5, 4, requires_grad=True), torch.randn(9, 4)
    with torch.no_grad():
        loss, _ = linear_cross_entropy(hidden, weight, torch.zeros(5, dtype=torch.long), 2)
    assert not loss.requires_grad
    ref = F.cross_entropy(hidden.detach() @ weight.t(), torch.zeros(5, dtype=torch.long), reduction="sum")
    torch.testing.assert_close(loss, ref)


def test_chunk_size_bounds_the_logits_buffer():
    assert chunk_tokens(49152) * 49152 <= 32 * 2**20 + 49152
    assert chunk_tokens(10**9) == 128  # never a useless one-token chunk


def _tiny(model_type="llama", **kw):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(
        model_type, vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, **kw,
    )  # fmt: skip
    return AutoModelForCausalLM.from_config(cfg)


def test_decoder_and_head_takes_plain_heads_only():
    from peft import LoraConfig, get_peft_model

    m = _tiny()
    split = decoder_and_head(m)
    assert split is not None and split[1] is m.lm_head and split[0] is m.model
    lora = get_peft_model(_tiny(), LoraConfig(r=2, target_modules=["q_proj"]))
    assert decoder_and_head(lora)[1] is lora.get_base_model().lm_head  # through peft's wrapper
    # an adapted head, or a family that transforms its logits, keeps the model's own forward
    assert decoder_and_head(get_peft_model(_tiny(), LoraConfig(r=2, target_modules=["lm_head"]))) is None
    assert decoder_and_head(_tiny("gemma2", head_dim=8)) is None
    assert decoder_and_head(nn.parallel.DistributedDataParallel.__new__(nn.parallel.DistributedDataParallel)) is None
