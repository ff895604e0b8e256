"""Model summary: per-layer params/FLOPs against hand formulas and the published ballpark."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from jaxvision.models import build_model, format_table, summarize


def _conv_macs(out_hw: int, cout: int, k: int, cin: int) -> int:
    return out_hw * out_hw * cout * k * k * cin


# Ungrouped AlexNet at 224: (output side, out channels, kernel, in channels) of each conv.
_ALEXNET_CONVS = {
    "conv1": (55, 96, 11, 3),
    "conv2": (27, 256, 5, 96),
    "conv3": (13, 384, 3, 256),
    "conv4": (13, 384, 3, 384),
    "conv5": (13, 256, 3, 384),
}
_ALEXNET_FCS = {"fc6": (9216, 4096), "fc7": (4096, 4096), "head": (4096, 1000)}


def test_alexnet_rows_match_hand_formulas():
    rows, totals = summarize(build_model("alexnet"), (224, 224, 3))
    by_name = {r["name"]: r for r in rows}
    assert list(by_name) == list(_ALEXNET_CONVS) + list(_ALEXNET_FCS)
    for name, (hw, cout, k, cin) in _ALEXNET_CONVS.items():
        assert by_name[name]["output_shape"] == (1, hw, hw, cout)
        assert by_name[name]["flops"] == 2 * _conv_macs(hw, cout, k, cin)
        assert by_name[name]["params"] == k * k * cin * cout + cout
    for name, (fin, fout) in _ALEXNET_FCS.items():
        assert by_name[name]["flops"] == 2 * fin * fout
    assert totals["params"] == 62_378_344 == sum(r["params"] for r in rows)
    # Convention: FLOPs = 2 x MACs. The ungrouped model is 1.14 GMACs (2.27 GFLOPs); the
    # published grouped two-GPU model is the often-quoted ~0.72 GMACs.
    assert totals["macs"] == 1_135_256_096 and totals["flops"] == 2 * totals["macs"]
    grouped = summarize(build_model("alexnet", groups=2), (224, 224, 3))[1]
    assert 0.70e9 <= grouped["macs"] <= 0.74e9


def test_flops_scale_with_batch():
    model = build_model("lenet5")
    one = summarize(model, (32, 32, 1))[1]
    four = summarize(model, (32, 32, 1), batch=4)[1]
    assert four["flops"] == 4 * one["flops"] and four["params"] == one["params"]
    # LeNet-5: 28*28*6*25 + 10*10*16*150 + 120*400 + 120*84 + 84*10 multiply-adds.
    assert one["macs"] == 28 * 28 * 6 * 25 + 10 * 10 * 16 * 150 + 120 * 400 + 120 * 84 + 84 * 10


def test_resnet18_totals_and_ballpark():
    model = build_model("resnet18")
    rows, totals = summarize(model, (224, 224, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
    assert totals["params"] == sum(x.size for x in jax.tree.leaves(variables["params"])) == 11_689_512
    assert totals["params"] == sum(r["params"] for r in rows)
    assert totals["state"] == sum(x.size for x in jax.tree.leaves(variables["batch_stats"]))
    assert 1.75e9 <= totals["macs"] <= 1.85e9  # published: 1.8 GMACs
    names = [r["name"] for r in rows]
    assert names[0] == "conv1" and names[-1] == "head" and "layer2_0/downsample_conv" in names


def test_format_table_lists_every_row_and_the_totals():
    rows, totals = summarize(build_model("mlp", hidden=(16,)), (4, 4, 1))
    text = format_table(rows, totals)
    lines = text.splitlines()
    assert lines[0].split() == ["Layer", "Type", "Output", "shape", "RF", "Stride", "Params", "FLOPs"]
    assert any(line.startswith("fc1 ") for line in lines) and any(line.startswith("head ") for line in lines)
    assert f"Total params: {totals['params']:,}" in text
    assert totals["params"] == 16 * 16 + 16 + 16 * 10 + 10


def test_bad_batch_is_rejected():
    with pytest.raises(ValueError, match="batch"):
        summarize(build_model("linear"), (4, 4, 1), batch=0)
