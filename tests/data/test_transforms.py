"""Transforms: every target follows the image, stereo geometry survives, pipelines parse."""

import colorsys
import copy

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxvision.data import transforms as T
from jaxvision.data.pp import parse_pp
from jaxvision.data.example import IGNORE_LABEL, INVALID_DISPARITY, validate_example
from jaxvision.ops import boxes as B

SETTINGS = settings(max_examples=30, deadline=None)


def mono_example(seed=0, h=20, w=24, grid=(2, 3)):
    """Image + every mono target; instances are rectangles in disjoint grid cells, so the boxes
    are their tight boxes and stay tight under any crop."""
    rng = np.random.default_rng(seed)
    inst = np.zeros((h, w), np.int32)
    k = 0
    ch, cw = h // grid[0], w // grid[1]
    for gy in range(grid[0]):
        for gx in range(grid[1]):
            y0, x0 = gy * ch + rng.integers(0, ch - 1), gx * cw + rng.integers(0, cw - 1)
            y1, x1 = rng.integers(y0 + 1, gy * ch + ch + 1), rng.integers(x0 + 1, gx * cw + cw + 1)
            k += 1
            inst[y0:y1, x0:x1] = k
    mask = rng.integers(0, 4, (h, w)).astype(np.int32)
    mask[0, :3] = IGNORE_LABEL
    disparity = rng.uniform(0, 8, (h, w)).astype(np.float32)
    disparity[1, :4] = INVALID_DISPARITY
    return {"image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "mask": mask,
            "instance_mask": inst, "boxes": B.from_instance_mask(inst, k),
            "box_classes": np.arange(k, dtype=np.int32) + 10, "label": np.int32(3),
            "disparity": disparity, "identity": np.int32(7)}


def stereo_example(seed=0, h=12, w=40, fg=(14, 26), d_bg=2, d_fg=5):
    """A rectified pair with two depth layers (a fronto-parallel box at disparity ``d_fg`` over
    rows 2..8 and left-view columns ``fg``, background at ``d_bg``): left[y, x] == right[y, x - D_L]."""
    rng = np.random.default_rng(seed)
    right = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    ys, xs = np.arange(h)[:, None], np.arange(w)[None, :]
    rows = (ys >= 2) & (ys < 9)
    d_left = np.where(rows & (xs >= fg[0]) & (xs < fg[1]), d_fg, d_bg)
    d_right = np.where(rows & (xs >= fg[0] - d_fg) & (xs < fg[1] - d_fg), d_fg, d_bg)
    left = right[ys, np.clip(xs - d_left, 0, w - 1)]
    disp_l, disp_r = d_left.astype(np.float32), d_right.astype(np.float32)
    disp_l[xs - d_left < 0] = INVALID_DISPARITY  # matches fall outside the right view
    disp_l[3, 20:23] = INVALID_DISPARITY            # some unknown pixels, as in real data
    disp_r[5, 8:10] = INVALID_DISPARITY
    return {"image": left, "image_right": right, "disparity": disp_l, "disparity_right": disp_r,
            "index": np.int64(4)}


def stereo_consistent_pixels(ex):
    """Yields (y, x, x_match) for left pixels that are valid, in view and unoccluded (left-right
    check: the right pixel they hit points back to them)."""
    dl, dr = ex["disparity"], ex["disparity_right"]
    h, w = dl.shape
    for y in range(h):
        for x in range(w):
            d = dl[y, x]
            if d < 0 or d != int(d) or not 0 <= x - int(d) < w:
                continue
            xm = x - int(d)
            if dr[y, xm] == d:
                yield y, x, xm


def check_stereo_geometry(ex):
    pix = list(stereo_consistent_pixels(ex))
    assert len(pix) > 0.5 * ex["disparity"].size
    for y, x, xm in pix:
        np.testing.assert_array_equal(ex["image"][y, x], ex["image_right"][y, xm])
    return len(pix)


def apply(pp, ex, seed=0, stats=None):
    return parse_pp(pp, stats=stats)(ex, np.random.default_rng(seed))


def assert_boxes_tight(ex):
    np.testing.assert_array_equal(ex["boxes"], B.from_instance_mask(ex["instance_mask"], len(ex["boxes"])))
    assert ex["instance_mask"].max() <= len(ex["boxes"]) == len(ex["box_classes"])


MONO_PIPELINES = ["", "resize(16)", "resize((40, 12))", "random_crop(16, pad=3)", "center_crop(30)",
                  "random_resized_crop(14)", "flip_lr(1.0)", "color_jitter(0.4, 0.4, 0.4, 0.1)",
                  "cutout(6)", "resize(32)|random_crop(28, pad=4)|flip_lr|color_jitter(0.4, 0.4)|cutout(8)"]
STEREO_PIPELINES = MONO_PIPELINES[:6] + ["flip_lr(1.0)|color_jitter(0.3, 0.3, 0.3, 0.05)"]


@pytest.mark.parametrize("pp", MONO_PIPELINES)
def test_mono_pipelines_keep_examples_valid_and_never_mutate(pp):
    ex = mono_example(seed=1)
    before = copy.deepcopy(ex)
    for seed in range(3):
        out = validate_example(apply(pp, ex, seed))
        assert set(out) == set(ex)
        assert out["label"] == 3 and out["identity"] == 7
        assert out["instance_mask"].max() <= len(out["boxes"]) == len(out["box_classes"])
        assert np.isin(out["mask"], [IGNORE_LABEL, 0, 1, 2, 3]).all()
    for key in ex:
        np.testing.assert_array_equal(ex[key], before[key])


@pytest.mark.parametrize("pp", STEREO_PIPELINES)
def test_stereo_pipelines_keep_examples_valid(pp):
    ex = stereo_example()
    before = copy.deepcopy(ex)
    out = validate_example(apply(pp, ex, seed=2))
    assert set(out) == set(ex) and out["index"] == 4
    assert out["image_right"].shape == out["image"].shape
    for key in ex:
        np.testing.assert_array_equal(ex[key], before[key])


@SETTINGS
@given(st.integers(0, 10**6), st.sampled_from(
    ["flip_lr(1.0)", "random_crop(13, pad=5)", "random_crop((9, 30), pad=8)", "center_crop((26, 15))",
     "resize((40, 72))", "flip_lr(1.0)|random_crop(17, pad=6)|resize((34, 51))"]))
def test_boxes_stay_the_tight_boxes_of_the_instance_mask(seed, pp):
    out = apply(pp, mono_example(seed), seed)
    assert_boxes_tight(out)
    assert out["box_classes"].tolist() == sorted(set(out["box_classes"].tolist()))  # order kept


@SETTINGS
@given(st.integers(-8, 14), st.integers(-8, 16), st.integers(1, 20), st.integers(1, 20))
def test_crop_matches_numpy_pad_then_slice(top, left, h, w):
    ex = mono_example(seed=3, h=12, w=14, grid=(2, 2))
    out = T.crop(ex, top, left, h, w)
    p = 30  # pad everything generously, then slice: an independent reference
    fills = {"image": 0, "mask": IGNORE_LABEL, "instance_mask": 0, "disparity": INVALID_DISPARITY}
    for key, fill in fills.items():
        arr = ex[key]
        pad = [(p, p), (p, p)] + [(0, 0)] * (arr.ndim - 2)
        ref = np.pad(arr, pad, constant_values=fill)[top + p:top + p + h, left + p:left + p + w]
        if key == "instance_mask":  # instances cut away entirely are dropped, the rest renumbered
            survivors = np.unique(ref[ref > 0])
            np.testing.assert_array_equal(out["box_classes"], ex["box_classes"][survivors - 1])
            ref = np.where(ref > 0, np.searchsorted(survivors, ref) + 1, 0)
        np.testing.assert_array_equal(out[key], ref)
        assert out[key].dtype == arr.dtype
    assert_boxes_tight(out)
    assert (B.valid(out["boxes"]) & (out["boxes"] >= 0).all(1)).all()
    assert (out["boxes"][:, 2] <= h).all() and (out["boxes"][:, 3] <= w).all()


def test_random_crop_is_a_valid_window_and_covers_all_offsets():
    ex = mono_example(seed=4, h=8, w=8, grid=(2, 2))
    seen = set()
    for seed in range(300):
        out = T.RandomCrop(6, pad=2)(ex, np.random.default_rng(seed))
        offsets = [(t, l) for t in range(-2, 5) for l in range(-2, 5)
                   if np.array_equal(out["mask"], T.crop(ex, t, l, 6, 6)["mask"])]
        assert offsets
        seen.update(offsets)
    assert seen == {(t, l) for t in range(-2, 5) for l in range(-2, 5)}  # uniform over 7 x 7
    with pytest.raises(ValueError, match="random_crop: crop 12x12 is larger than the image 8x8"):
        T.RandomCrop(12, pad=1)(ex, np.random.default_rng(0))


def test_instance_mask_is_renumbered_when_a_box_is_cropped_away():
    inst = np.zeros((10, 12), np.int32)
    inst[0:3, 0:3] = 1   # lost by the crop below
    inst[5:8, 4:6] = 2
    inst[6:10, 8:12] = 3
    ex = {"image": np.zeros((10, 12, 3), np.uint8), "instance_mask": inst,
          "boxes": B.from_instance_mask(inst, 3), "box_classes": np.array([7, 8, 9], np.int32)}
    out = T.crop(ex, 4, 3, 6, 9)
    assert out["box_classes"].tolist() == [8, 9]
    np.testing.assert_array_equal(out["boxes"], [[1, 1, 4, 3], [2, 5, 6, 9]])
    ref = np.zeros((6, 9), np.int32)
    ref[1:4, 1:3] = 1
    ref[2:6, 5:9] = 2
    np.testing.assert_array_equal(out["instance_mask"], ref)
    # A box clipped to a sliver < 1 px is dropped as well.
    kept = T.crop({**ex, "boxes": np.array([[0, 0, 3, 3], [5, 4, 8, 6], [6, 8, 10, 11.5]],
                                            np.float32)}, 0, 0, 10, 11)
    np.testing.assert_array_equal(kept["boxes"], [[0, 0, 3, 3], [5, 4, 8, 6], [6, 8, 10, 11]])
    assert len(T.crop(ex, 0, 11, 10, 1)["boxes"]) == 1  # [6, 11, 10, 12] -> [6, 0, 10, 1]


def test_resize_scales_disparity_and_keeps_invalid_exactly():
    rng = np.random.default_rng(5)
    disp = rng.uniform(0, 10, (6, 8)).astype(np.float32)
    disp[rng.random((6, 8)) < 0.3] = INVALID_DISPARITY
    disp[0, 0] = -7.0  # any negative value is invalid and comes back as INVALID_DISPARITY
    ex = {"image": rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), "disparity": disp,
          "disparity_right": disp[:, ::-1].copy()}
    out = T.resize(ex, 9, 20)
    for key in ("disparity", "disparity_right"):
        ref = np.empty((9, 20), np.float32)
        for i in range(9):
            for j in range(20):  # nearest: the input pixel under the output pixel's centre
                v = ex[key][int((i + 0.5) * 6 / 9), int((j + 0.5) * 8 / 20)]
                ref[i, j] = v * 2.5 if v >= 0 else INVALID_DISPARITY
        np.testing.assert_allclose(out[key], ref, rtol=1e-6)
        assert out[key].dtype == np.float32
        assert set(np.unique(out[key][out[key] < 0])) <= {INVALID_DISPARITY}


def test_integer_upscale_replicates_masks_and_scales_boxes():
    ex = mono_example(seed=6, h=8, w=9, grid=(2, 3))
    out = T.resize(ex, 16, 27)
    np.testing.assert_array_equal(out["mask"], np.kron(ex["mask"], np.ones((2, 3), np.int32)))
    np.testing.assert_array_equal(out["boxes"], ex["boxes"] * [2, 3, 2, 3])
    assert_boxes_tight(out)
    flat = {"image": np.full((5, 7, 1), 77, np.uint8)}
    np.testing.assert_array_equal(T.resize(flat, 11, 3)["image"], 77)  # bilinear keeps constants


def test_mono_flip_mirrors_everything():
    ex = mono_example(seed=7)
    out = T.flip(ex)
    for key in ("image", "mask", "instance_mask", "disparity"):
        np.testing.assert_array_equal(out[key], ex[key][:, ::-1])
    np.testing.assert_array_equal(out["boxes"][:, [1, 3]], 24 - ex["boxes"][:, [3, 1]])
    assert_boxes_tight(out)
    assert T.FlipLR(0.0)(ex, np.random.default_rng(0))["image"] is ex["image"]


def test_stereo_flip_swaps_and_mirrors_views_keeping_the_geometry():
    ex = stereo_example()
    check_stereo_geometry(ex)  # the synthetic pair is right to begin with
    out = T.FlipLR(1.0)(ex, np.random.default_rng(0))
    check_stereo_geometry(out)
    # The right-view convention holds as well: right[y, x] == left[y, x + disparity_right].
    swapped = {"image": out["image_right"][:, ::-1], "image_right": out["image"][:, ::-1],
               "disparity": out["disparity_right"][:, ::-1], "disparity_right": out["disparity"][:, ::-1]}
    check_stereo_geometry(swapped)
    np.testing.assert_array_equal(out["disparity"] < 0, ex["disparity_right"][:, ::-1] < 0)
    # A plain mirror of each view breaks it: the check above is sensitive.
    naive = {k: v[:, ::-1] for k, v in ex.items() if k != "index"}
    pix = list(stereo_consistent_pixels(naive))
    assert pix and not any(np.array_equal(naive["image"][y, x], naive["image_right"][y, xm])
                           for y, x, xm in pix)


def test_stereo_crop_keeps_the_geometry():
    ex = stereo_example(w=48, fg=(18, 30))
    out = T.RandomCrop((10, 40))(ex, np.random.default_rng(3))
    assert check_stereo_geometry(out) > 0


def test_stereo_flip_is_refused_without_disparity_right():
    ex = stereo_example()
    del ex["disparity_right"]
    for p in (1.0, 0.0):  # refused whatever the draw, so a bad pipeline fails on every example
        with pytest.raises(ValueError, match=r"flip_lr refused.*no 'disparity_right'.*drop flip_lr"):
            T.FlipLR(p)(ex, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"left-view-only targets \['mask'\]"):
        T.flip({**stereo_example(), "mask": np.zeros((12, 40), np.int32)})
    # Images without any disparity swap and mirror fine.
    pair = {k: stereo_example()[k] for k in ("image", "image_right")}
    out = T.flip(pair)
    np.testing.assert_array_equal(out["image"], pair["image_right"][:, ::-1])


def test_same_seed_same_output_and_different_seeds_differ():
    pp = parse_pp("random_resized_crop(16)|flip_lr|color_jitter(0.4, 0.4, 0.4, 0.1)|cutout(4)")
    ex = mono_example(seed=8)
    outs = [pp(ex, np.random.default_rng([0, 1, s])) for s in (5, 5, 6)]
    for key in ex:
        np.testing.assert_array_equal(outs[0][key], outs[1][key])
    assert not np.array_equal(outs[0]["image"], outs[2]["image"])


def test_random_resized_crop_window_respects_scale_and_ratio():
    t = T.RandomResizedCrop(8, scale=(0.2, 0.6), ratio=(0.5, 2.0))
    for seed in range(100):
        top, left, h, w = t.window(40, 50, np.random.default_rng(seed))
        assert 0 <= top <= 40 - h and 0 <= left <= 50 - w
        assert 0.2 * 0.9 <= h * w / 2000 <= 0.6 * 1.1 and 0.5 * 0.85 <= w / h <= 2.0 * 1.15
    ex = mono_example(seed=9, h=40, w=50)
    want = T.resize(T.crop(ex, *t.window(40, 50, np.random.default_rng(1))), 8, 8)
    got = t(ex, np.random.default_rng(1))
    for key in ex:
        np.testing.assert_array_equal(got[key], want[key])
    # Impossible ratio for this image: falls back to the centre crop with the ratio clamped.
    assert T.RandomResizedCrop(4, scale=(1.0, 1.0), ratio=(3.0, 4.0)).window(
        10, 20, np.random.default_rng(0)) == (1, 0, 7, 20)  # w / h = 20 / 7 ~ 3


def test_color_jitter_applies_the_same_change_to_both_views():
    ex = stereo_example(seed=10)
    ex = {"image": ex["image"], "image_right": np.ascontiguousarray(ex["image"][:, ::-1])}
    for seed in range(5):
        out = T.ColorJitter(0.5, 0.5, 0.5, 0.2)(ex, np.random.default_rng(seed))
        assert out["image"].dtype == np.uint8
        assert not np.array_equal(out["image"], ex["image"])
        np.testing.assert_array_equal(out["image_right"], out["image"][:, ::-1])
    gray = {"image": ex["image"][..., :1]}
    assert T.ColorJitter(0.3, 0.3, 0.3, 0.3)(gray, np.random.default_rng(0))["image"].shape == (12, 40, 1)
    same = T.ColorJitter()(ex, np.random.default_rng(0))
    np.testing.assert_array_equal(same["image"], ex["image"])
    with pytest.raises(ValueError, match="put it before normalize"):
        T.ColorJitter(0.1)({"image": ex["image"].astype(np.float32)}, np.random.default_rng(0))


def test_brightness_scales_pixels_by_one_factor_in_range():
    img = np.random.default_rng(0).integers(20, 120, (6, 6, 3), dtype=np.uint8)
    for seed in range(5):
        out = T.ColorJitter(brightness=0.5)({"image": img}, np.random.default_rng(seed))["image"]
        f = out.astype(np.float64).sum() / img.astype(np.float64).sum()
        assert 0.5 - 0.01 <= f <= 1.5 + 0.01
        np.testing.assert_allclose(out, np.clip(img * f, 0, 255), atol=1.5)


def test_hsv_conversions_match_colorsys():
    rgb = np.random.default_rng(1).random((50, 3))
    rgb[:3] = [[0.2, 0.2, 0.2], [0, 0, 0], [1, 0, 1]]  # gray, black, magenta edge cases
    hsv = T.rgb_to_hsv(rgb)
    np.testing.assert_allclose(hsv, [colorsys.rgb_to_hsv(*p) for p in rgb], atol=1e-9)
    np.testing.assert_allclose(T.hsv_to_rgb(hsv), rgb, atol=1e-9)
    shifted = (hsv + [0.3, 0, 0]) % [1.0, 2.0, 2.0]
    np.testing.assert_allclose(T.hsv_to_rgb(shifted), [colorsys.hsv_to_rgb(*p) for p in shifted], atol=1e-9)


def test_cutout_fills_one_square_of_the_left_image():
    ex = stereo_example(seed=11)
    ex["image"] = np.maximum(ex["image"], 1)  # no zero pixels, so the hole is visible
    for seed in range(20):
        out = T.Cutout(6)(ex, np.random.default_rng(seed))
        ys, xs = np.nonzero((out["image"] != ex["image"]).any(-1))
        assert ys.size > 0 and (out["image"][ys, xs] == 0).all()
        h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
        assert h <= 6 and w <= 6 and ys.size == h * w  # a (clipped) solid rectangle
        assert out["image_right"] is ex["image_right"]
    filled = T.Cutout(40, fill=(1, 2, 3))(ex, np.random.default_rng(0))["image"]
    assert (filled == [1, 2, 3]).all(-1).any()


def test_normalize_both_views_and_stats_from_parse_pp():
    ex = stereo_example(seed=12)
    mean, std = (10.0, 20.0, 30.0), (2.0, 4.0, 8.0)
    out = apply("normalize", ex, stats=(mean, std))
    for key in ("image", "image_right"):
        assert out[key].dtype == np.float32
        np.testing.assert_allclose(out[key], (ex[key] - np.array(mean)) / np.array(std), rtol=1e-6)
    explicit = apply("normalize((10, 20, 30), (2, 4, 8))", ex)
    np.testing.assert_array_equal(explicit["image"], out["image"])
    np.testing.assert_array_equal(out["disparity"], ex["disparity"])
    with pytest.raises(ValueError, match="normalize: 'image' has 3 channels but mean has 2"):
        T.Normalize((1, 2), 1)(ex, None)
    with pytest.raises(ValueError, match="std must be .*all > 0"):
        T.Normalize(0, 0)
    with pytest.raises(ValueError, match="'image' has dtype float32"):  # by design: normalize is last
        validate_example(out)


def test_compute_mean_std_matches_numpy():
    rng = np.random.default_rng(13)
    images = rng.integers(0, 256, (7, 5, 6, 3), dtype=np.uint8)
    source = [{"image": im} for im in images]
    mean, std = T.compute_mean_std(source)
    np.testing.assert_allclose(mean, images.mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(std, images.std(axis=(0, 1, 2)), rtol=1e-12)
    assert mean.dtype == np.float64 and mean.shape == (3,)
    mean4, std4 = T.compute_mean_std(source, max_examples=4)
    np.testing.assert_allclose(std4, images[:4].std(axis=(0, 1, 2)), rtol=1e-12)
    # Different image sizes: every pixel counts once.
    mixed = [{"image": rng.integers(0, 256, (h, 4, 1), dtype=np.uint8)} for h in (1, 3, 8)]
    pixels = np.concatenate([e["image"].reshape(-1) for e in mixed]).astype(np.float64)
    np.testing.assert_allclose(T.compute_mean_std(mixed), ([pixels.mean()], [pixels.std()]), rtol=1e-12)
    with pytest.raises(ValueError, match="no examples"):
        T.compute_mean_std([])


def test_parse_pp_round_trip_and_identity():
    spec = ("resize((32, 30))| random_crop(28, pad=4) |flip_lr|color_jitter(0.4, 0.4)|cutout(8, fill=(1, 2, 3))"
            "|random_resized_crop(20, scale=[0.5, 1.0])|center_crop(size=18)|normalize")
    pp = parse_pp(spec, stats=([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]))
    assert len(pp) == 8
    again = parse_pp(pp.spec())
    assert again.spec() == pp.spec() and len(again) == 8
    ex = mono_example(seed=14)
    a, b = pp(ex, np.random.default_rng(3)), again(ex, np.random.default_rng(3))
    for key in ex:
        np.testing.assert_array_equal(a[key], b[key])
    assert a["image"].shape == (18, 18, 3) and a["image"].dtype == np.float32
    for empty in ("", "  ", "|"):
        out = parse_pp(empty)(ex, np.random.default_rng(0))
        assert len(parse_pp(empty)) == 0 and out is not ex
        for key in ex:
            np.testing.assert_array_equal(out[key], ex[key])


@pytest.mark.parametrize("spec, match", [
    ("resize(8)|rnadom_crop(3)", r"unknown transform 'rnadom_crop'.*Known: center_crop, .*"
                                 r"Did you mean: random_crop"),
    ("flip_lr(0.5, 3)", r"step 'flip_lr\(0.5, 3\)'.*too many positional.*Signature: flip_lr\(p=0.5\)"),
    ("random_crop(pad=3)", r"missing a required argument: 'size'.*random_crop\(size, pad=0\)"),
    ("cutout(size=8, colour=1)", r"unexpected keyword argument 'colour'.*cutout\(size, fill=0\)"),
    ("resize(-4)", r"resize: size must be a positive int.*Signature: resize\(size\)"),
    ("resize(big)", r"argument 'big' is not a Python literal"),
    ("resize(__import__('os'))", r"is not a Python literal"),
    ("color_jitter(hue=0.7)", r"hue must be in \[0, 0.5\]"),
    ("normalize", r"needs the dataset statistics, but stats=None.*compute_mean_std"),
    ("resize 8", r"not of the form name or name\(args\)"),
])
def test_parse_pp_errors_are_clear(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_pp(spec)


@pytest.mark.parametrize("h, w, side, want", [
    (480, 640, 256, (256, 341)),   # torchvision: int(256 * 640 / 480) = 341
    (640, 480, 256, (341, 256)),
    (100, 100, 32, (32, 32)),
    (7, 300, 4, (4, 171)),
    (20, 30, 40, (40, 60)),        # upscaling too
])
def test_resize_short_keeps_the_aspect_as_torchvision(h, w, side, want):
    ex = {"image": np.zeros((h, w, 3), np.uint8), "mask": np.zeros((h, w), np.int32),
          "boxes": np.array([[0.0, 0.0, h, w]], np.float32), "box_classes": np.zeros(1, np.int32)}
    out = parse_pp(f"resize_short({side})")(ex, np.random.default_rng(0))
    assert out["image"].shape == (*want, 3) and out["mask"].shape == want
    np.testing.assert_allclose(out["boxes"], [[0, 0, want[0], want[1]]], rtol=1e-6)
    with pytest.raises(ValueError, match="side must be a positive int"):
        parse_pp("resize_short(0)")
