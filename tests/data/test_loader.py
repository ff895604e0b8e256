"""Loader: order, eval padding, host sharding, box padding, PK sampling, iterator state."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxvision.data.loader import Loader, Order
from jaxvision.data.source import ArraySource, DataError


def _box(i: int) -> np.ndarray:
    """A valid box inside a 4 x 4 image that tells example i apart (its width)."""
    return np.array([0, 0, 2, 1 + i % 3], np.float32)


def make_source(n=23, size=4, with_boxes=False, identities=None):
    rng = np.random.default_rng(0)
    arrays = {
        "image": rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8),
        "label": np.arange(n, dtype=np.int32) % 5,
    }
    if with_boxes:
        arrays["boxes"] = [np.tile(_box(i), (i % 4, 1)) for i in range(n)]
        arrays["box_classes"] = [np.full((i % 4,), i, np.int32) for i in range(n)]
    if identities is not None:
        arrays["identity"] = np.asarray(identities, np.int32)
    return ArraySource(arrays, num_classes=5)


def augment(example, rng):
    """A random transform: adds a random offset drawn from the per-example rng."""
    example = dict(example)
    example["noise"] = np.float32(rng.normal())
    return example


def take(it, n):
    return [next(it) for _ in range(n)]


@given(n=st.integers(1, 40), batch=st.integers(1, 9), procs=st.sampled_from([1, 2, 4]))
@settings(max_examples=30, deadline=None)
def test_eval_visits_every_example_exactly_once(n, batch, procs):
    batch *= procs
    src = make_source(n)
    seen = []
    for p in range(procs):
        loader = Loader(src, global_batch=batch, mode="eval", process_index=p, process_count=procs,
                        prefetch=1)
        batches = list(loader)
        assert len(batches) == -(-n // batch)
        for b in batches:
            assert b["image"].shape[0] == batch // procs
            seen.extend(b["index"][b["valid"]].tolist())
    assert sorted(seen) == list(range(n))


def test_train_epochs_are_permutations_and_drop_remainder():
    src = make_source(23)
    loader = Loader(src, global_batch=5, seed=3, prefetch=1)
    assert len(loader) == 4
    it = iter(loader)
    epoch0 = np.concatenate([b["index"] for b in take(it, 4)])
    epoch1 = np.concatenate([b["index"] for b in take(it, 4)])
    assert len(set(epoch0.tolist())) == 20 and len(set(epoch1.tolist())) == 20
    assert not np.array_equal(epoch0, epoch1)  # reshuffled each epoch
    np.testing.assert_array_equal(epoch0, np.random.default_rng([3, 0]).permutation(23)[:20])


def test_global_batch_is_the_same_whatever_the_process_count():
    src = make_source(40)
    one = take(Loader(src, global_batch=8, seed=1, transform=augment, prefetch=1).iterator(), 6)
    parts = [take(Loader(src, global_batch=8, seed=1, transform=augment, process_index=p,
                         process_count=4, prefetch=1).iterator(), 6) for p in range(4)]
    for step in range(6):
        for key in ("image", "index", "noise"):
            joined = np.concatenate([parts[p][step][key] for p in range(4)])
            np.testing.assert_array_equal(one[step][key], joined)


def test_random_transforms_depend_on_seed_epoch_index_only():
    src = make_source(10)
    a = take(iter(Loader(src, global_batch=5, seed=7, transform=augment, prefetch=1)), 4)
    b = take(iter(Loader(src, global_batch=5, seed=7, transform=augment, prefetch=3)), 4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["noise"], y["noise"])
    # Example i in epoch e always gets rng([seed, e, i]).
    for step, batch in enumerate(a):
        for idx, noise in zip(batch["index"], batch["noise"]):
            expected = np.random.default_rng([7, step // 2, int(idx)]).normal()
            assert noise == np.float32(expected)


def test_iterator_state_restores_exactly():
    src = make_source(30)
    loader = Loader(src, global_batch=4, seed=5, transform=augment, prefetch=2)
    it = loader.iterator()
    take(it, 9)
    state = it.get_state()
    expected = take(it, 5)
    resumed = take(loader.iterator(state), 5)
    for x, y in zip(expected, resumed):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def test_boxes_padded_with_validity_mask():
    src = make_source(8, with_boxes=True)
    batch = next(iter(Loader(src, global_batch=8, mode="eval", max_boxes=5, prefetch=1)))
    assert batch["boxes"].shape == (8, 5, 4) and batch["box_classes"].shape == (8, 5)
    for row, idx in enumerate(batch["index"]):
        n = int(idx) % 4
        assert batch["box_valid"][row].tolist() == [True] * n + [False] * (5 - n)
        np.testing.assert_array_equal(batch["boxes"][row, :n], np.tile(_box(int(idx)), (n, 1)))
        assert (batch["boxes"][row, n:] == 0).all()


def test_box_policy_clips_drops_counts_and_pads_per_box_keys():
    boxes = [np.array([[-2, -3, 3, 2],      # clipped to [0, 0, 3, 2]
                       [1, 1, 1.5, 3],      # under 1 px tall: dropped
                       [5, 5, 9, 9],        # outside the 4 x 4 image: nothing left, dropped
                       [0, 1, 4, 4]], np.float32)]
    src = ArraySource({"image": np.zeros((1, 4, 4, 3), np.uint8), "boxes": boxes,
                       "box_classes": [np.array([0, 1, 2, 3], np.int32)],
                       "box_crowd": [np.array([True, False, False, False])],
                       "box_area": [np.array([25.0, 1.0, 16.0, 9.0], np.float32)]})
    loader = Loader(src, global_batch=2, mode="eval", max_boxes=3, prefetch=1)
    batch = next(iter(loader))
    np.testing.assert_array_equal(batch["boxes"][0], [[0, 0, 3, 2], [0, 1, 4, 4], [0, 0, 0, 0]])
    assert batch["box_classes"][0].tolist() == [0, 3, 0]
    assert batch["box_crowd"][0].tolist() == [True, False, False]
    # box_area keeps the kept fraction of its box: 6 of 25 px of the first box remain.
    np.testing.assert_allclose(batch["box_area"][0], [25.0 * 6 / 25, 9.0, 0.0])
    assert batch["box_valid"][0].tolist() == [True, True, False]
    assert loader.dropped_boxes == 2  # the padding copy (valid False) is not counted


def test_too_many_boxes_is_a_clear_error():
    src = make_source(8, with_boxes=True)
    with pytest.raises(DataError, match="data.max_boxes"):
        list(Loader(src, global_batch=8, mode="eval", max_boxes=2, prefetch=1))


def test_pk_sampler_gives_p_identities_times_k_images():
    ids = np.repeat(np.arange(6), [5, 5, 5, 4, 5, 5])
    src = make_source(len(ids), identities=ids)
    loader = Loader(src, global_batch=12, seed=0, sampler="pk", pk=(3, 4), prefetch=1)
    for batch in take(iter(loader), 5):
        got = batch["identity"].reshape(3, 4)
        assert (got == got[:, :1]).all()               # K images of one identity per row
        assert len(set(got[:, 0].tolist())) == 3        # P distinct identities
        np.testing.assert_array_equal(ids[batch["index"]], batch["identity"])
        for row in batch["index"].reshape(3, 4):       # K different images, never a repeat
            assert len(set(row.tolist())) == 4


def test_pk_sampler_errors_name_the_fix():
    ids = np.repeat(np.arange(6), [5, 5, 5, 3, 5, 5])
    with pytest.raises(DataError, match=r"1 of 6 identities have fewer \(identity 3 has 3.*"
                                        r"pk_images to at most 3"):
        Loader(make_source(len(ids), identities=ids), global_batch=12, sampler="pk", pk=(3, 4))
    with pytest.raises(DataError, match=r"train.batch_size == data.pk_identities \* data.pk_images"):
        Loader(make_source(len(ids), identities=np.arange(len(ids)) % 6), global_batch=10,
               sampler="pk", pk=(3, 4))


def test_errors_are_clear():
    src = make_source(10)
    with pytest.raises(DataError, match="fewer than train.batch_size"):
        Loader(src, global_batch=16)
    with pytest.raises(DataError, match="does not divide over 3 processes"):
        Loader(src, global_batch=4, process_count=3)
    with pytest.raises(DataError, match="pk_identities"):
        Loader(make_source(10, identities=np.arange(10) % 2), global_batch=8, sampler="pk", pk=(4, 2))
    bad = ArraySource({"image": np.zeros((4, 3, 3), np.uint8)})
    with pytest.raises(ValueError, match="'image' has shape"):
        next(iter(Loader(bad, global_batch=2, mode="eval", prefetch=1)))


def test_worker_processes_give_the_same_batches():
    src = make_source(16)
    ref = take(iter(Loader(src, global_batch=4, seed=2, transform=augment, prefetch=1)), 5)
    mp = take(iter(Loader(src, global_batch=4, seed=2, transform=augment, num_workers=2)), 5)
    for x, y in zip(ref, mp):
        np.testing.assert_array_equal(x["index"], y["index"])
        np.testing.assert_array_equal(x["noise"], y["noise"])


def test_order_is_picklable_and_pure():
    import pickle
    order = Order(11, 3, seed=4)
    clone = pickle.loads(pickle.dumps(order))
    assert [order.index(s, p) for s in range(6) for p in range(3)] == \
        [clone.index(s, p) for s in range(6) for p in range(3)]


def test_data_keys_select_targets_and_keep_identities():
    from jaxvision.data.config import data_config
    from jaxvision.data.source import build_source
    data = data_config()
    data.procedural.image_size, data.procedural.num_train = 16, 40
    data.keys = ("label",)
    source = build_source(data, "train[:30]")
    assert set(source[0]) == {"image", "label"} and source.info.keys == ("image", "label")
    # The stereo-with-masks refusal of flip_lr no longer applies to a classification view.
    from jaxvision.data.pipeline import make_loader
    data.train_pp = "flip_lr"
    batch = next(iter(make_loader(data, "train", mode="train", global_batch=8, seed=0)))
    assert set(batch) == {"image", "label", "index", "valid"}
    data.keys = ("label", "depth")
    with pytest.raises(DataError, match="does not have"):
        build_source(data, "train")
    arrays = ArraySource({"image": np.zeros((10, 2, 2, 3), np.uint8),
                          "identity": np.arange(10, dtype=np.int32)})
    from jaxvision.data.source import apply_slice
    np.testing.assert_array_equal(apply_slice(arrays, "train[2:5]").identities(), [2, 3, 4])
