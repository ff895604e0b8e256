"""k-fold splits (property tests), the index-subset source, and cross-validation end to end."""

import contextlib
import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxvision.__main__ import main
from jaxvision.tools.crossval import IndexSubset, fold_split, kfold_indices
from jaxvision.data.source import ArraySource, DataError

SPEC = str(Path(__file__).resolve().parent / "tiny_ablation_experiment.py")


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 300), data=st.data(), seed=st.integers(0, 2**31 - 1))
def test_folds_are_disjoint_cover_and_balanced(n, data, seed):
    k = data.draw(st.integers(2, min(n, 12)))
    folds = kfold_indices(n, k, seed)
    assert len(folds) == k
    joined = np.concatenate(folds)
    assert sorted(joined.tolist()) == list(range(n))                    # covering, disjoint
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    assert all(np.all(np.diff(f) > 0) for f in folds)                    # sorted, no repeats
    again = kfold_indices(n, k, seed)
    assert all(np.array_equal(a, b) for a, b in zip(folds, again))       # deterministic
    for i in range(k):
        train, held = fold_split(folds, i)
        assert np.intersect1d(train, held).size == 0
        assert len(train) + len(held) == n and np.array_equal(held, folds[i])


def test_folds_are_shuffled_by_the_seed():
    a, b = kfold_indices(100, 4, 0), kfold_indices(100, 4, 1)
    assert not np.array_equal(a[0], np.arange(25))                      # not contiguous blocks
    assert not all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("n,k", [(10, 1), (5, 6), (3, 0)])
def test_bad_fold_counts_are_refused(n, k):
    with pytest.raises(ValueError, match="folds"):
        kfold_indices(n, k, 0)


def test_index_subset_reads_the_chosen_examples():
    images = np.arange(10 * 2 * 2 * 1, dtype=np.uint8).reshape(10, 2, 2, 1)
    source = ArraySource({"image": images, "label": np.arange(10), "identity": np.arange(10) % 3},
                         num_classes=10)
    sub = IndexSubset(source, [7, 2, 5], split="train (fold)")
    assert len(sub) == 3 and sub.info.split == "train (fold)" and sub.info.num_classes == 10
    assert [int(sub[i]["label"]) for i in range(3)] == [7, 2, 5]
    np.testing.assert_array_equal(sub[0]["image"], images[7])
    np.testing.assert_array_equal(sub.identities(), [1, 2, 2])
    clone = pickle.loads(pickle.dumps(sub))                              # loader workers
    assert int(clone[2]["label"]) == 5
    with pytest.raises(IndexError):
        sub[3]
    with pytest.raises(DataError, match=r"\[0, 10\)"):
        IndexSubset(source, [0, 10])


def test_crossval_end_to_end(tmp_path, monkeypatch):
    from jaxvision.train import loop
    seen = []
    real_build = loop.build

    def recording_build(config, exp, sources=None, **kwargs):
        seen.append(tuple(s.indices for s in sources))
        return real_build(config, exp, sources, **kwargs)

    monkeypatch.setattr(loop, "build", recording_build)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["crossval", "--config", f"{SPEC}:mlp", "--workdir", str(tmp_path), "--folds", "2"])
    assert rc == 0
    result = json.loads(buf.getvalue().strip().splitlines()[-1])
    assert result["folds"] == 2 and result["examples"] == 64 and result["fold_sizes"] == [32, 32]
    # Each fold trained on the other fold and was evaluated on its own, disjoint examples.
    assert len(seen) == 2
    (train0, held0), (train1, held1) = seen
    np.testing.assert_array_equal(train0, held1)
    np.testing.assert_array_equal(train1, held0)
    assert sorted(np.concatenate([held0, held1]).tolist()) == list(range(64))
    accs = [f["accuracy"] for f in result["per_fold"]]
    assert all(0.0 <= a <= 1.0 for a in accs)
    assert result["mean"]["accuracy"] == pytest.approx(np.mean(accs))
    assert result["std"]["accuracy"] == pytest.approx(np.std(accs, ddof=1))
    for k in (0, 1):
        saved = json.loads((tmp_path / f"fold{k}" / "config.json").read_text())
        assert saved["crossval"] == {"fold": k, "folds": 2, "examples": 64}
    assert "**mean**" in (tmp_path / "crossval.md").read_text()
    assert json.loads((tmp_path / "crossval.json").read_text()) == result

    # Running again reuses the finished folds.
    def no_training(*args, **kwargs):
        raise AssertionError("a finished fold was trained again")

    monkeypatch.setattr(loop, "train", no_training)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["crossval", "--config", f"{SPEC}:mlp", "--workdir", str(tmp_path),
                     "--folds", "2"]) == 0
    assert json.loads(buf.getvalue().strip().splitlines()[-1]) == result


def test_too_many_folds_for_the_batch_is_refused(tmp_path, capsys):
    # 64 folds of one example leave 63 to train on: too few for a batch of 64.
    rc = main(["crossval", "--config", f"{SPEC}:mlp", "--workdir", str(tmp_path), "--folds", "64",
               "--config.train.batch_size=64"])
    assert rc == 2 and "train.batch_size=64" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
