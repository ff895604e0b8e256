"""Layer-wise linear probes: how linearly separable the classes are after each layer of a
trained, frozen model.

``run_probe(config, workdir)`` restores a checkpoint of ``config``'s model from ``workdir``,
runs the training and eval splits through it once (``data.eval_pp`` for both: no augmentation),
taps every layer's output, and fits one multinomial logistic regression per layer on the
training features, scored on the eval features.

* Taps: zoo models return them with ``return_features=True`` (then the ``logits`` are added as
  the last tap); other models give the output of every direct submodule through flax's
  ``capture_intermediates``, in call order.
* Features with spatial axes, (N, H, W, C) or (N, T, C), are global-average-pooled to (N, C), so
  the probe's size does not grow with the resolution.
* Memory stays bounded: at most ``max_examples`` examples per split (a seeded random subset),
  each layer kept as (N, C) float32 on the host.
* The probe standardizes each feature with the training features' mean and (population) std,
  as scikit-learn's ``StandardScaler`` does, then minimizes
  ``mean cross-entropy + l2 / 2 * ||W||^2`` (bias not penalized) with full-batch L-BFGS
  (scipy's driver, objective and gradient compiled in JAX). That is scikit-learn's
  ``LogisticRegression(C=1 / (l2 * N))``.

Outputs: ``probe.json``, ``probe.md`` and ``probe.png`` (eval accuracy per layer).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.data.source import DataError, Source, build_source
from jaxvision.experiment import Experiment, resolve_experiment
from jaxvision.models.knn import knn_predict


def pool_features(x: jax.Array) -> jax.Array:
    """(N, ..., C) -> (N, C) float32: the mean over every axis between the first and the last;
    (N, C) stays as is and (N,) becomes (N, 1)."""
    x = x.astype(jnp.float32)
    if x.ndim == 1:
        return x[:, None]
    if x.ndim > 2:
        return jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))
    return x


def has_feature_taps(model: Any) -> bool:
    """Whether the model's ``__call__`` takes ``return_features`` (the zoo's convention)."""
    return "return_features" in inspect.signature(type(model).__call__).parameters


def layer_features(model: Any, variables: dict, x: jax.Array) -> dict[str, jax.Array]:
    """Pooled (N, C) float32 features after each layer of ``model`` at eval (``train=False``).

    Zoo models: their ``return_features`` dict, then ``logits``. Others: the output of each
    direct submodule whose output is one array with a leading batch axis, in call order.
    """
    n = x.shape[0]
    if has_feature_taps(model):
        logits, taps = model.apply(variables, x, train=False, return_features=True)
        taps = {**taps, "logits": logits}
    else:
        _, state = model.apply(variables, x, train=False, capture_intermediates=True,
                               mutable=["intermediates"])
        taps = {}
        for name, sub in state["intermediates"].items():
            out = sub.get("__call__") if hasattr(sub, "get") else None
            if name == "__call__" or not out or len(out) != 1:
                continue
            if isinstance(out[0], jax.Array) and out[0].ndim >= 1 and out[0].shape[0] == n:
                taps[name] = out[0]
    return {k: pool_features(v) for k, v in taps.items()}


def subset_indices(n: int, max_examples: int, seed: int) -> np.ndarray | None:
    """Sorted indices of a seeded random subset of ``max_examples`` of ``range(n)``, or None
    when everything fits (``max_examples`` <= 0 means no cap)."""
    if max_examples <= 0 or n <= max_examples:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, size=max_examples, replace=False))


def tap_fn(model: Any, prepare: Callable[[Any], jax.Array] | None = None
           ) -> tuple[Callable[[dict, Any], dict[str, jax.Array]], list[str]]:
    """Traced ``fn(variables, inputs) -> {layer: (N, C) float32}`` and the list that receives the
    model's layer order when ``fn`` is traced (compiled functions return dicts sorted by key).

    ``prepare`` maps ``inputs`` (e.g. a batch dict) to the model's input first.
    """
    order: list[str] = []

    def fn(variables, inputs):
        feats = layer_features(model, variables, prepare(inputs) if prepare else inputs)
        order[:] = list(feats)
        return feats
    return fn, order


def feature_fn(model: Any, prepare: Callable[[Any], jax.Array] | None = None
               ) -> Callable[[dict, Any], dict[str, jax.Array]]:
    """Compiled ``(variables, inputs) -> {layer: (N, C) float32}``, in the model's layer order,
    on the default device (for interactive use; ``run_probe`` goes through the core)."""
    fn, order = tap_fn(model, prepare)
    jitted = jax.jit(fn)

    def ordered(variables, inputs):
        out = jitted(variables, inputs)
        return {k: out[k] for k in order}
    return ordered


def batch_taps(run: Any) -> tuple[Callable, list[str]]:
    """``(fn(variables, batch, setup_data) -> {'features': {layer: (N, C)}, 'label': (N,)},
    layer order)`` for ``loop.predict``: one function, so every split reuses one compile."""
    taps, order = tap_fn(run.model, functools.partial(run.exp.prepare, run.config))

    def fn(variables, batch, setup_data):
        del setup_data
        return {"features": taps(variables, batch), "label": batch["label"]}
    return fn, order


def extract(run: Any, device_state: Any, source: Source, *, max_examples: int = 5000,
            layers: Sequence[str] | None = None, taps: tuple[Callable, list[str]] | None = None
            ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Runs ``source`` (capped to ``max_examples``) through the run's model once, on its device
    mesh through the core's prediction path (``loop.predict``, every process).

    Returns ({layer: (N, C) float32} in the model's layer order, labels (N,) int64), in the
    source's order; ``layers`` keeps only those taps (unknown names raise ``ValueError`` listing
    the available ones). ``taps``: a ``batch_taps(run)`` to reuse (one compile for all splits).
    """
    from jaxvision.data.pipeline import make_loader
    from jaxvision.tools.crossval import IndexSubset
    from jaxvision.train import loop
    config = run.config
    if "label" not in source.info.keys:
        raise DataError(f"linear probes need an image-level 'label'; {source.info.name} has "
                        f"{', '.join(source.info.keys)}.")
    idx = subset_indices(len(source), max_examples, int(config.seed))
    if idx is not None:
        source = IndexSubset(source, idx)
    loader = make_loader(config.data, source.info.split, mode="eval", source=source,
                         global_batch=int(config.train.eval_batch_size), seed=int(config.seed))
    fn, order = taps if taps is not None else batch_taps(run)
    out = loop.predict(run, device_state, fn, loader)
    feats = {k: out["features"][k] for k in order}
    if layers is not None:
        missing = [name for name in layers if name not in feats]
        if missing:
            raise ValueError(f"probe layers {missing} are not taps of this model; it has: "
                             f"{', '.join(feats)}.")
        feats = {k: v for k, v in feats.items() if k in layers}
    return feats, out["label"].astype(np.int64)


@dataclasses.dataclass
class LinearProbe:
    """A fitted softmax classifier on standardized features: ``(x - mean) / scale @ w + b``."""

    mean: np.ndarray     # (D,)
    scale: np.ndarray    # (D,)
    w: np.ndarray        # (D, C)
    b: np.ndarray        # (C,)
    iterations: int

    def logits(self, x: np.ndarray) -> np.ndarray:
        """(N, D) features -> (N, C) logits."""
        return ((np.asarray(x, np.float64) - self.mean) / self.scale) @ self.w + self.b

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """(N, D) -> (N, C) class probabilities."""
        z = self.logits(x)
        z = np.exp(z - z.max(-1, keepdims=True))
        return z / z.sum(-1, keepdims=True)

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        return float(np.mean(np.argmax(self.logits(x), -1) == np.asarray(y)))


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _value_and_grad(theta: jax.Array, x: jax.Array, y: jax.Array, l2: jax.Array, *,
                    num_classes: int) -> tuple[jax.Array, jax.Array]:
    """The probe objective and its gradient at the flat parameters ``theta`` = [W (D*C), b (C)]."""
    def objective(t):
        d = x.shape[1]
        w, b = t[:d * num_classes].reshape(d, num_classes), t[d * num_classes:]
        z = x @ w + b
        ce = jax.nn.logsumexp(z, -1) - jnp.take_along_axis(z, y[:, None], -1)[:, 0]
        return jnp.mean(ce) + 0.5 * l2 * jnp.sum(w ** 2)
    return jax.value_and_grad(objective)(theta)


def fit_linear_probe(x: np.ndarray, y: np.ndarray, num_classes: int, *, l2: float = 1e-3,
                     max_iter: int = 500, tol: float = 1e-6) -> LinearProbe:
    """Fits multinomial logistic regression on (N, D) features and (N,) int labels.

    Minimizes ``mean cross-entropy + l2 / 2 * ||W||^2`` on standardized features, full batch,
    with L-BFGS (scipy's driver; objective and gradient compiled in JAX, float32) until the
    projected gradient is below ``tol`` or after ``max_iter`` iterations.
    """
    from scipy.optimize import minimize
    x = np.asarray(x, np.float64)
    y = np.asarray(y)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"fit_linear_probe expects x (N, D) and y (N,), got {x.shape} and {y.shape}.")
    if y.size == 0 or y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"fit_linear_probe needs labels in [0, {num_classes}) and at least one "
                         f"example, got {y.size} labels" + (f" in [{y.min()}, {y.max()}]." if y.size else "."))
    mean = x.mean(0)
    scale = x.std(0)
    scale[scale == 0] = 1.0   # constant features stay constant (0), as in StandardScaler
    xs = jnp.asarray((x - mean) / scale, jnp.float32)
    ys = jnp.asarray(y, jnp.int32)
    l2_ = jnp.float32(l2)
    d, c = x.shape[1], int(num_classes)

    def fun(theta: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = _value_and_grad(jnp.asarray(theta, jnp.float32), xs, ys, l2_, num_classes=c)
        return float(value), np.asarray(grad, np.float64)

    res = minimize(fun, np.zeros(d * c + c), jac=True, method="L-BFGS-B",
                   options=dict(maxiter=int(max_iter), gtol=float(tol), ftol=0.0))
    return LinearProbe(mean, scale, res.x[:d * c].reshape(d, c), res.x[d * c:], int(res.nit))


@dataclasses.dataclass
class ProbeRow:
    layer: str
    dim: int
    train_accuracy: float
    eval_accuracy: float
    iterations: int
    knn_accuracy: float | None = None   # k-nearest-neighbour eval accuracy (``knn`` > 0)


def run_probe(config: Any, workdir: str | Path, *, experiment: Experiment | str | None = None,
              checkpoint: str = "latest", max_examples: int = 5000, layers: Sequence[str] | None = None,
              l2: float = 1e-3, max_iter: int = 500, out_dir: str | Path | None = None,
              knn: int = 0) -> list[ProbeRow]:
    """Restores ``checkpoint`` from ``workdir``, probes every layer, writes the reports into
    ``out_dir`` (default ``workdir``); returns one row per layer in the model's order.

    With ``knn`` = k > 0 each layer also gets the eval accuracy of a k-nearest-neighbour
    classifier (L2, majority vote, ties to the smaller class; ``models.knn_predict``) over the
    same training features: the non-parametric probe."""
    from jaxvision.train import loop
    workdir = Path(workdir)
    run = loop.build(config, resolve_experiment(config, experiment), abstract=True)
    (restored,) = loop.restore_checkpoints(run, workdir, [checkpoint])
    device_state = run.strategy.put_state(restored.state)
    data = config.data
    kw = dict(max_examples=max_examples, layers=layers, taps=batch_taps(run))
    train_f, train_y = extract(run, device_state, build_source(data, data.train_split), **kw)
    eval_f, eval_y = extract(run, device_state, build_source(data, data.eval_split), **kw)
    num_classes = int(run.info.num_classes or max(train_y.max(), eval_y.max()) + 1)
    rows = []
    for name, f in train_f.items():
        probe = fit_linear_probe(f, train_y, num_classes, l2=l2, max_iter=max_iter)
        knn_acc = None
        if knn > 0:
            pred = np.asarray(knn_predict(f, train_y, eval_f[name], int(knn),
                                          num_classes=num_classes))
            knn_acc = float(np.mean(pred == eval_y))
        rows.append(ProbeRow(name, int(f.shape[1]), probe.accuracy(f, train_y),
                             probe.accuracy(eval_f[name], eval_y), probe.iterations, knn_acc))
    meta = {"step": int(restored.step), "train_examples": int(len(train_y)),
            "eval_examples": int(len(eval_y)), "l2": l2,
            "majority_baseline": float(np.bincount(eval_y).max() / max(len(eval_y), 1)),
            "knn": int(knn)}
    if jax.process_index() == 0:
        write_reports(rows, Path(out_dir) if out_dir is not None else workdir, meta)
    return rows


def summary_json(rows: Sequence[ProbeRow]) -> dict:
    """The JSON line of ``probe``: eval accuracy per layer and the best layer."""
    best = max(rows, key=lambda r: r.eval_accuracy)
    out = {"eval_accuracy": {r.layer: r.eval_accuracy for r in rows},
           "train_accuracy": {r.layer: r.train_accuracy for r in rows},
           "best_layer": best.layer, "best_eval_accuracy": best.eval_accuracy}
    if rows and rows[0].knn_accuracy is not None:
        out["knn_accuracy"] = {r.layer: r.knn_accuracy for r in rows}
    return out


def write_reports(rows: Sequence[ProbeRow], out_dir: Path, meta: dict) -> None:
    """Writes ``probe.json``, ``probe.md`` and ``probe.png`` into ``out_dir``."""
    from jaxvision import viz
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "probe.json").write_text(json.dumps(
        {**meta, "layers": [dataclasses.asdict(r) for r in rows]}, indent=2))
    lines = [f"# Linear probes (checkpoint step {meta['step']})", "",
             f"{meta['train_examples']} training / {meta['eval_examples']} eval examples, "
             f"l2={meta['l2']}, majority-class baseline {meta['majority_baseline']:.4f}. "
             "Spatial features are global-average-pooled.", "",
             "| layer | dim | train accuracy | eval accuracy | L-BFGS iterations |"
             + (f" {meta['knn']}-NN eval accuracy |" if meta.get("knn") else ""),
             "|---|---:|---:|---:|---:|" + ("---:|" if meta.get("knn") else "")]
    lines += [f"| {r.layer} | {r.dim} | {r.train_accuracy:.4f} | {r.eval_accuracy:.4f} | "
              f"{r.iterations} |" + (f" {r.knn_accuracy:.4f} |" if r.knn_accuracy is not None
                                     else "") for r in rows]
    (out_dir / "probe.md").write_text("\n".join(lines) + "\n")
    viz.plot_bars([r.layer for r in rows], [r.eval_accuracy for r in rows],
                  str(out_dir / "probe.png"), ylabel="eval accuracy",
                  title=f"linear probe per layer (step {meta['step']})")
