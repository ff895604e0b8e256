"""Device placement over 1, 2 and 4 simulated devices, and the pipeline's error messages."""

import jax
import numpy as np
import pytest

from jaxvision.data.config import data_config
from jaxvision.data.device import DATA_AXIS, check_batch_size, make_mesh, put_batch
from jaxvision.data.example import ExampleError, validate_example
from jaxvision.data.loader import Loader
from jaxvision.data.pipeline import make_loader
from jaxvision.data.source import ArraySource, DataError, build_source


@pytest.mark.parametrize("n", [1, 2, 4])
def test_put_batch_shards_the_leading_axis_over_devices(n):
    mesh = make_mesh(jax.devices()[:n])
    assert mesh.shape[DATA_AXIS] == n
    batch = {"image": np.arange(8 * 3 * 3 * 1, dtype=np.uint8).reshape(8, 3, 3, 1),
             "label": np.arange(8, dtype=np.int32)}
    out = put_batch(batch, mesh)
    for key, value in batch.items():
        assert out[key].shape == value.shape
        np.testing.assert_array_equal(np.asarray(out[key]), value)
        shards = sorted(out[key].addressable_shards, key=lambda s: s.index[0].start or 0)
        assert len(shards) == n
        for i, shard in enumerate(shards):
            np.testing.assert_array_equal(np.asarray(shard.data), value[i * 8 // n:(i + 1) * 8 // n])


def test_procedural_batches_reach_four_devices():
    data = data_config()
    data.procedural.image_size, data.procedural.num_train = 16, 64
    loader = make_loader(data, "train", mode="train", global_batch=8, seed=0)
    batch = put_batch(next(iter(loader)), make_mesh(jax.devices()[:4]))
    assert batch["image"].shape == (8, 16, 16, 3)
    assert batch["boxes"].shape == (8, 16, 4) and batch["box_valid"].dtype == bool
    assert len(batch["disparity"].addressable_shards) == 4


def test_batch_that_does_not_divide_over_devices():
    with pytest.raises(DataError, match=r"does not divide over 4 devices.*multiple of 4"):
        check_batch_size(6, make_mesh(jax.devices()[:4]))


def test_unknown_dataset_name_suggests_close_names():
    data = data_config("procedurall")
    with pytest.raises(DataError, match="unknown dataset name 'procedurall'.*procedural"):
        build_source(data, "train")


def test_empty_split():
    data = data_config()
    data.procedural.num_train = 10
    with pytest.raises(DataError, match="is empty"):
        build_source(data, "train[10:]")


def test_bad_split_syntax():
    with pytest.raises(DataError, match="NAME\\[start:stop\\]"):
        build_source(data_config(), "train[::2]")


@pytest.mark.parametrize("example,match", [
    ({"image": np.zeros((4, 4), np.uint8)}, r"'image' has shape \(4, 4\) \(rank 2\); expected rank 3"),
    ({"image": np.zeros((4, 4, 3), np.float32)}, r"'image' has dtype float32; expected uint8"),
    ({"image": np.zeros((4, 4, 4), np.uint8)}, r"4 channels"),
    ({"image": np.zeros((4, 4, 3), np.uint8), "mask": np.zeros((3, 4), np.int32)},
     r"'mask' has spatial shape \(3, 4\)"),
    ({"image": np.zeros((4, 4, 3), np.uint8), "boxes": np.zeros((2, 4), np.float32),
      "box_classes": np.zeros((3,), np.int32)}, r"2 boxes but 3 box_classes"),
    ({"label": np.int32(1)}, r"has no 'image' key"),
])
def test_example_errors_name_the_key_and_the_fix(example, match):
    with pytest.raises(ExampleError, match=match):
        validate_example(example, where="mysource[3]")


def test_bad_example_error_names_the_source_and_index():
    images = np.zeros((4, 2, 2, 3), np.uint8)
    src = ArraySource({"image": images, "label": np.zeros((4,), np.int64)}, name="mine")
    with pytest.raises(ExampleError, match=r"mine\[train\]\[0\]: 'label' has dtype int64"):
        next(iter(Loader(src, global_batch=2, mode="eval", prefetch=1)))


def test_mismatched_image_sizes_suggest_a_resize():
    src = ArraySource({"image": [np.zeros((4, 4, 3), np.uint8), np.zeros((5, 5, 3), np.uint8)]})
    with pytest.raises(DataError, match="resize"):
        next(iter(Loader(src, global_batch=2, mode="eval", prefetch=1)))


def test_bare_normalize_uses_the_training_split_statistics():
    from jaxvision.data import pipeline
    from jaxvision.data.transforms import compute_mean_std
    data = data_config()
    data.procedural.image_size, data.procedural.num_train, data.procedural.num_eval = 8, 40, 12
    data.keys = ("label",)
    data.eval_pp = "normalize"
    mean, std = compute_mean_std(build_source(data, "train"), 1000)
    loader = make_loader(data, "test", mode="eval", global_batch=4, seed=0)
    batch = next(iter(loader))
    raw = build_source(data, "test")[0]["image"].astype(np.float64)
    np.testing.assert_allclose(batch["image"][0], (raw - mean) / std, rtol=1e-5, atol=1e-5)
    assert batch["image"].dtype == np.float32
    pipeline._STATS_CACHE.clear()
