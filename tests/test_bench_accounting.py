"""The benchmarks' own accounting (bench/): what they count decides the figures in bench/README.md.

Cheap: no training; the helpers on hand-built inputs whose answers are known.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import memory_estimate  # noqa: E402
import profile_step  # noqa: E402
import train_throughput as tt  # noqa: E402


def tri(*lengths):
    return sum(n * (n + 1) // 2 for n in lengths)


def test_attention_pairs_count_each_example_alone_whatever_the_batch_layout():
    # Forge's padding-free row: examples of 3 and 5 tokens, boundaries in cu_seq_lens_q
    ids = torch.zeros(1, 8, dtype=torch.long)
    assert tt.attention_pairs({"input_ids": ids, "cu_seq_lens_q": torch.tensor([0, 3, 8])}) == tri(3, 5)
    # TRL's packed rows: each example restarts its position ids at 0, no mask
    pos = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4]])
    assert tt.attention_pairs({"input_ids": ids, "position_ids": pos}) == tri(3, 5)
    # padded rows: a 2D mask's row lengths (padding pairs are not useful work)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert tt.attention_pairs({"input_ids": torch.zeros(2, 5), "attention_mask": mask}) == tri(3, 5)
    # a 4D block-diagonal causal mask, boolean or additive: its allowed entries
    allowed = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    allowed[0, 0, :3, :3] = torch.ones(3, 3).tril().bool()
    allowed[0, 0, 3:, 3:] = torch.ones(5, 5).tril().bool()
    assert tt.attention_pairs({"input_ids": ids, "attention_mask": allowed}) == tri(3, 5)
    additive = torch.zeros(1, 1, 8, 8).masked_fill(~allowed, float("-inf"))
    assert tt.attention_pairs({"input_ids": ids, "attention_mask": additive}) == tri(3, 5)
    # no mask, no positions: one causal example per row
    assert tt.attention_pairs({"input_ids": torch.zeros(2, 4)}) == 2 * tri(4)


def test_mfu_counts_useful_flops():
    res = {
        "real_tokens_per_s": 100.0,
        "trained_tokens_per_s": 60.0,
        "attention_pairs_per_s": 1000.0,
        "n_matmul_params": 1000,
        "n_trainable": 10,
        "n_head_params": 200,
        "attention_width": 8,
        "n_layers": 2,
    }
    tt.add_derived(res, peak=1e6)
    linear = 100.0 * (4 * 1000 + 6 * 10)
    assert res["mfu_linear_only"] == pytest.approx(linear / 1e6)
    # the head's FLOPs move from every real token to the trained ones; attention adds 12*width*layers a pair
    useful = 100.0 * (4 * 800 + 6 * 10) + 60.0 * 4 * 200 + 1000.0 * 12 * 8 * 2
    assert res["useful_flops_per_s"] == pytest.approx(useful) and res["mfu"] == pytest.approx(useful / 1e6)


@pytest.mark.parametrize(
    ("name", "group"),
    [
        ("aten::mm", "matmul"),
        ("aten::mul", "elementwise"),  # 't' (a layout key) is in every aten:: name: it must not win
        ("aten::add_", "elementwise"),
        ("aten::silu_backward", "elementwise"),
        ("aten::t", "copies/layout"),
        ("aten::copy_", "copies/layout"),
        ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
        ("aten::_fused_adamw_", "optimizer"),
        ("aten::logsumexp", "loss"),
    ],
)
def test_profile_groups_ops_by_their_bare_name(name, group):
    assert profile_step.group_of(name) == group


def test_matmul_kinds_split_lora_head_and_frozen():
    class Ev:
        def __init__(self, shapes, us, count=1):
            self.key, self.input_shapes, self.self_cpu_time_total, self.count = "aten::mm", shapes, us, count

    kinds = profile_step.matmul_kinds(
        [
            Ev([[512, 576], [576, 16]], 10.0),
            Ev([[400, 576], [576, 49152]], 30.0),
            Ev([[512, 576], [576, 1536]], 60.0, 2),
        ],
        rank=16,
        vocab=49152,
    )
    assert kinds["lora (rank-sized side)"] == (10.0, 2.0 * 512 * 576 * 16)
    assert kinds["lm head (vocab side)"] == (30.0, 2.0 * 400 * 576 * 49152)
    assert kinds["frozen layers"] == (60.0, 2 * 2.0 * 512 * 576 * 1536)


def test_memory_bench_rows_are_longer_than_the_cutoff(tmp_path):
    path = memory_estimate.full_rows(512, tmp_path / "rows.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 40 and all(len(r["output"]) >= 6 * 512 for r in rows)
    assert set(memory_estimate.WORKLOADS) >= {"defaults", "long-2048", "long-4096", "qlora"}
