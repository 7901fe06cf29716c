"""The benchmark helpers that turn inductor's tuning log into a table and count the
UNet's GEMMs (CPU only: the log is synthetic, the count runs on the meta device)."""

from __future__ import annotations

from bench.autotune_table import parse
from bench.gemm_counts import count, key, savings
from fastsync.config import UNET_PRESETS

LOG = """\
AUTOTUNE addmm(64x32, 64x16, 16x32)
strides: [0, 1], [16, 1], [1, 16]
dtypes: torch.float16, torch.float16, torch.float16
  triton_mm_3 0.0200 ms 100.0% BLOCK_K=16
  bias_addmm 0.0300 ms 66.7%
SingleProcess AUTOTUNE benchmarking takes 2.5000 seconds and 0.0001 seconds precompiling for 2 choices
some other line
AUTOTUNE mm(64x16, 16x16)
strides: [16, 1], [1, 16]
dtypes: torch.float16, torch.float16
  triton_mm_7 0.0100 ms 100.0% BLOCK_K=16
  triton_mm_8 0.0125 ms 80.0% BLOCK_K=32
SingleProcess AUTOTUNE benchmarking takes 1.0000 seconds and 0.0001 seconds precompiling for 3 choices
"""


def test_parse_keeps_winner_aten_time_and_bound():
    rows = parse(LOG.splitlines())
    assert [row["op"] for row in rows] == ["addmm(64x32, 64x16, 16x32)", "mm(64x16, 16x16)"]
    first, second = rows
    assert (first["best"], first["best_ms"], first["aten_ms"], first["tuning_s"]) == ("triton_mm_3", 0.02, 0.03, 2.5)
    assert first["aten_over_best"] == 1.5
    # cuBLAS not among the listed choices: only a bound, the slowest listed time
    assert "aten_ms" not in second and second["aten_slower_than_ms"] == 0.0125
    assert second["tuning_s"] == 1.0


def test_savings_joins_on_input_and_weight_shapes():
    table = {"ops": parse(LOG.splitlines())}
    assert key("addmm(64x32, 64x16, 16x32)") == "addmm(64x16, 16x32)"
    rows = savings({"addmm(64x16, 16x32)": 4, "mm(64x16, 16x16)": 2}, table)
    assert [(row["op"], row["calls"], row["saved_ms_at_least"]) for row in rows] == [
        ("addmm(64x16, 16x32)", 4, 0.04), ("mm(64x16, 16x16)", 2, 0.005)]
    assert savings({}, table) == []  # shapes the forward does not have save nothing


def test_count_sees_each_feed_forward_once():
    config = UNET_PRESETS["stage2_512"]
    counts = count(frames=2, size=8)
    width = config.block_out_channels[0]
    rows = 2 * 2 * 8 * 8  # CFG pair x frames x the largest latent's positions
    # GEGLU in (width -> 8 width) at the largest resolution, in the first down block's and the
    # last up block's layers: one in the spatial transformer, one in the motion module of each
    layers = config.layers_per_block + (config.layers_per_block + 1)
    assert counts[f"addmm({rows}x{width}, {width}x{8 * width})"] == 2 * layers


def test_glue_ops_tells_region_fallbacks_from_ops_between_regions():
    import torch

    from bench.bench_unet import glue_ops

    # aten.median has no inductor lowering, so it stays an ATen call inside the compiled graph
    region = torch.compile(lambda x: torch.ops.aten.median(x.sin(), 0)[0] + 1)
    x = torch.randn(64, 64)

    def forward():
        return torch.cat([region(x), x.sum(0)])  # cat and sum run between "regions"

    forward()  # compile outside the profile
    rows = glue_ops(forward, device="cpu")
    inside = {row["op"] for row in rows if row["inside_region"]}
    between = {row["op"] for row in rows if not row["inside_region"]}
    assert "aten::median" in inside and "aten::median" not in between
    assert {"aten::cat", "aten::sum"} <= between
