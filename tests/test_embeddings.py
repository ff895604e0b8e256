"""Metric learning end to end: the embedding models, every loss of `experiments/embeddings.py`
on a batch, a tiny procedural run with retrieval and verification, its pictures, the raw-pixel
baseline through the same evaluators, and `predict --gallery`."""

import dataclasses
import json

import jax
import ml_collections
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxvision import losses
from jaxvision.__main__ import main
from jaxvision.config import get_config
from jaxvision.data.procedural import ProceduralScenes
from jaxvision.data.source import SourceInfo
from jaxvision.experiment import load_experiment
from jaxvision.models import build_model
from jaxvision.models.embedding import EmbeddingNet, Siamese
from jaxvision.retrieval import retrieval_metrics
from jaxvision.tools.embed import embed_split, pixel_baseline
from jaxvision.train import loop

SPEC = "experiments/embeddings.py"


def _net(**kw):
    return EmbeddingNet(build_model("mlp", num_classes=8, hidden=(16,)), **kw)


def test_embedding_net_normalizes_and_scores():
    x = jax.random.normal(jax.random.key(0), (5, 4, 4, 1))
    net = _net(num_classes=3)
    variables = net.init(jax.random.key(1), x)
    assert set(variables["params"]) == {"backbone", "class_weights"}
    emb = net.apply(variables, x)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-6)
    emb2, cos = net.apply(variables, x, return_scores=True)
    w = np.asarray(variables["params"]["class_weights"])
    want = np.asarray(emb2) @ (w / np.linalg.norm(w, axis=0, keepdims=True))
    np.testing.assert_allclose(cos, want, rtol=1e-5, atol=1e-6)
    lin = dataclasses.replace(net, head="linear", normalize=False)
    e, logits = lin.apply(variables, x, return_scores=True)
    np.testing.assert_allclose(logits, np.asarray(e) @ w, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no class weights"):
        _net().apply(_net().init(jax.random.key(1), x), x, return_scores=True)
    bn = _net(batch_norm=True)
    assert "embedding_norm" in bn.init(jax.random.key(1), x)["batch_stats"]


def test_siamese_shares_one_set_of_weights():
    net = _net()
    siamese = Siamese(net)
    a, b = (jax.random.normal(jax.random.key(i), (3, 4, 4, 1)) for i in (2, 3))
    variables = siamese.init(jax.random.key(0), a, b)
    assert list(variables["params"]) == ["net"]
    ea, eb = siamese.apply(variables, a, b)
    alone = {"params": variables["params"]["net"]}
    np.testing.assert_allclose(ea, net.apply(alone, a), rtol=1e-6)
    np.testing.assert_allclose(eb, net.apply(alone, b), rtol=1e-6)


def _tiny(loss: str = "triplet"):
    config = get_config(f"{SPEC}:default")
    p = config.data.procedural
    p.image_size, p.num_train, p.num_eval = 16, 512, 48
    config.data.pk_identities, config.data.pk_images, config.train.batch_size = 8, 2, 16
    config.model.widths, config.model.dim = (4, 8), 8
    config.loss.name, config.loss.mining = loss, "batch_all"
    config.train.steps, config.train.eval_every, config.train.checkpoint_every = 6, 0, 0
    config.train.log_every = 3
    config.train.eval_batch_size = 16
    config.optim.warmup_steps = 0
    config.evals.verification.pairs = 200
    config.train.async_checkpoint = False
    return config


@pytest.mark.parametrize("loss", ["triplet", "contrastive", "arcface", "softmax"])   # cosface: as arcface, in test_metric_losses
def test_every_loss_runs_on_a_batch_with_finite_gradients(loss):
    config = _tiny(loss)
    # The loss wiring is under test, not the backbone: an MLP compiles in a fraction of the time.
    config.model = ml_collections.ConfigDict(dict(
        name="mlp", hidden=(16,), dim=8, batch_norm=False, normalize=True, represent=""))
    exp = load_experiment(SPEC)
    info = SourceInfo("procedural", "train", ("image", "identity"), num_classes=6,
                      num_identities=36)
    model = exp.build_model(config, info)
    src = ProceduralScenes(image_size=16, num_examples=32, split="train")
    batch = {"image": np.stack([src[i]["image"] for i in range(32)]),
             "identity": np.asarray([src[i]["identity"] for i in range(32)], np.int32),
             "valid": np.arange(32) < 28}
    variables = exp.init_variables(config, model, batch, jax.random.key(0))

    def objective(params):
        value, metrics, _ = exp.loss(config, model, {**variables, "params": params}, batch,
                                     jax.random.key(1), train=True)
        return value, metrics

    (value, metrics), grads = jax.jit(jax.value_and_grad(objective, has_aux=True))(
        variables["params"])
    assert np.isfinite(float(value)) and float(value) > 0
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    if loss in ("triplet", "contrastive"):
        total, count = metrics["loss"]
        assert float(total) / max(float(count), 1.0) == pytest.approx(float(value), rel=1e-5)
    if loss == "triplet":   # the experiment's loss is the library loss on the model's embeddings
        emb, _ = model.apply(variables, batch["image"].astype(np.float32) / 255.0, train=True,
                             mutable=["batch_stats"])
        ref = losses.triplet_loss(emb, jnp.asarray(batch["identity"]), jnp.asarray(batch["valid"]),
                                  margin=0.2, mining="batch_all").mean
        assert float(ref) == pytest.approx(float(value), rel=1e-4)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("emb")
    config = _tiny()
    results = loop.train(config, workdir, experiment=load_experiment(SPEC), progress=False)
    return config, workdir, results


def test_tiny_run_reports_retrieval_verification_and_pictures(run):
    config, workdir, results = run
    for key in ("recall_at_1", "recall_at_8", "precision_at_1", "map_at_r", "r_precision",
                "knn_accuracy", "nmi", "verification_accuracy", "verification_auc",
                "tar_at_far_0.001", "positive_distance", "negative_distance"):
        assert np.isfinite(results[key]), key
    ids = ProceduralScenes(image_size=16, num_examples=48, split="test").identities()
    same_pairs = sum(c * (c - 1) // 2 for c in np.bincount(ids))
    assert results["verification_pairs"] == 2 * min(100, same_pairs)
    for name in ("embedding_map.png", "neighbours.png", "roc.png"):
        assert (workdir / name).stat().st_size > 1000, name
    # The evaluator saw what the shipped model embeds: recompute Recall@K from embed_split.
    _, emb, ids = embed_split(config, workdir, key="identity", max_examples=10_000)
    assert len(ids) == 48
    got = retrieval_metrics(emb, ids, (1, 2, 4, 8))
    for k in ("recall_at_1", "recall_at_8", "map_at_r"):
        assert results[k] == pytest.approx(got[k], abs=1e-9)


def test_pixel_baseline_goes_through_the_same_evaluators(run):
    config, _, _ = run
    base = pixel_baseline(config)
    src = ProceduralScenes(image_size=16, num_examples=48, split="test")
    pixels = np.stack([src[i]["image"].reshape(-1) / 255.0 for i in range(48)])
    ids = np.asarray([src[i]["identity"] for i in range(48)])
    want = retrieval_metrics(pixels, ids, (1, 2, 4, 8))
    for k in ("recall_at_1", "recall_at_4", "map_at_r"):
        assert base[k] == pytest.approx(want[k], abs=1e-9)
    assert "verification_auc" in base and "roc_fpr" not in base


def test_predict_answers_queries_from_a_gallery(run, tmp_path, capsys):
    _, workdir, _ = run
    src = ProceduralScenes(image_size=16, num_examples=12, split="test")
    gallery, queries = tmp_path / "gallery", tmp_path / "queries"
    gallery.mkdir()
    queries.mkdir()
    for i in range(10):
        Image.fromarray(src[i]["image"]).save(gallery / f"g{i}.png")
    (gallery / "broken.png").write_bytes(b"")
    Image.fromarray(src[10]["image"]).save(queries / "q.png")
    Image.fromarray(src[3]["image"]).save(queries / "same_as_g3.png")
    out = tmp_path / "out"
    rc = main(["predict", "--workdir", str(workdir), str(queries), "--gallery", str(gallery),
               "--neighbours", "3", "--out", str(out), "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 2 and "broken.png" in cap.err and "Traceback" not in cap.err
    summary = json.loads(cap.out.strip().splitlines()[-1])
    assert summary["inputs"] == 2 and summary["gallery"] == 11 and summary["failed"] == 1
    lines = {json.loads(x)["file"].rsplit("/", 1)[-1]: json.loads(x)
             for x in (out / "predictions.jsonl").read_text().splitlines()}
    near = lines["same_as_g3.png"]["neighbours"]
    assert len(near) == 3 and near[0]["file"].endswith("g3.png") and near[0]["distance"] < 1e-5
    assert [n["distance"] for n in near] == sorted(n["distance"] for n in near)
    assert (out / lines["q.png"]["picture"]).is_file()


def test_small_cnn_flatten_keeps_the_layout_for_the_head():
    x = jnp.zeros((2, 28, 28, 1))
    for flatten, fan_in in ((False, 16), (True, 14 * 14 * 16)):   # one 2x2 pool: 28 -> 14
        model = build_model("small_cnn", widths=(8, 16), num_classes=5, flatten=flatten)
        params = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)["params"]
        assert params["head"]["kernel"].shape == (fan_in, 5)


def test_represent_ships_the_pooled_features_and_the_loss_sees_the_projection():
    backbone = build_model("small_cnn", widths=(4, 8), num_classes=6)
    net = EmbeddingNet(backbone, represent="pool")
    x = jax.random.uniform(jax.random.key(0), (3, 8, 8, 1))
    variables = net.init(jax.random.key(1), x)
    shipped = net.apply(variables, x)
    projected = net.apply(variables, x, projection=True)
    _, features = backbone.apply({"params": variables["params"]["backbone"],
                                  "batch_stats": variables["batch_stats"]["backbone"]}, x,
                                 return_features=True)
    pool = np.asarray(features["pool"])
    np.testing.assert_allclose(shipped, pool / np.linalg.norm(pool, axis=1, keepdims=True),
                               rtol=1e-5, atol=1e-6)
    assert shipped.shape == (3, 8) and projected.shape == (3, 6)
    with pytest.raises(ValueError, match="not a feature"):
        EmbeddingNet(backbone, represent="nope").init(jax.random.key(1), x)
