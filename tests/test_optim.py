"""Tests of jaxvision.optim against closed forms and hand-written numpy optimizers (float64)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st

from jaxvision import optim

RTOL = 2e-5  # float32 optax vs float64 numpy


def cfg(**kw):
    c = optim.optim_config()
    c.update(kw)
    return c


def evaluate(schedule, n: int) -> np.ndarray:
    """Schedule values at int32 steps 0..n-1 (the dtype optax feeds it during training)."""
    steps = jnp.arange(n, dtype=jnp.int32)
    return np.asarray(jax.vmap(lambda t: jnp.broadcast_to(jnp.asarray(schedule(t), jnp.float32), ())
                               )(steps), np.float64)


def tiny_params(seed: int = 0) -> dict:
    r = np.random.default_rng(seed)
    return {"layer": {"kernel": jnp.asarray(r.normal(size=(2, 3)), jnp.float32),
                      "bias": jnp.asarray(r.normal(size=(3,)), jnp.float32)}}


def grad_sequence(params, n: int = 3, seed: int = 1, scale: float = 1.0) -> list:
    r = np.random.default_rng(seed)
    return [jax.tree.map(lambda p: jnp.asarray(scale * r.normal(size=p.shape), jnp.float32), params)
            for _ in range(n)]


def run(config, params, grads, total_steps: int = 100):
    """Applies the optimizer for len(grads) steps; returns (list of params after each, state)."""
    tx = optim.make_optimizer(config, total_steps)
    state = tx.init(params)
    out = []
    for g in grads:
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
        out.append(params)
    return out, state


def to_np(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


# ----------------------------------------------------------------------------- schedules

T, W, LR = 100, 10, 0.4


def warm(t, init=0.0):
    return init + (LR - init) * t / W


@pytest.mark.parametrize("warmup", [0, W])
@pytest.mark.parametrize("name", ["constant", "step", "exponential", "inverse_time", "cosine",
                                  "linear"])
def test_schedule_closed_forms(name, warmup):
    k, end, init = 0.03, 0.05, 0.01
    c = cfg(lr=LR, schedule=name, warmup_steps=warmup, warmup_init_lr=init, decay_rate=k,
            end_lr=end, boundaries=(0.3, 0.6), factors=(0.5, 0.2))
    n = T + 15  # also past the end
    got = evaluate(optim.make_schedule(c, T), n)
    t_abs = np.arange(n, dtype=np.float64)
    t = t_abs - warmup  # the main schedule starts after the warm-up
    horizon = T - warmup
    if name == "constant":
        want = np.full(n, LR)
    elif name == "step":  # boundaries are fractions of total steps, counted from step 0
        want = LR * np.where(t_abs < 30, 1.0, np.where(t_abs < 60, 0.5, 0.1))
    elif name == "exponential":
        want = LR * np.exp(-k * t)
    elif name == "inverse_time":
        want = LR / (1 + k * t)
    elif name == "cosine":
        want = end + (LR - end) * 0.5 * (1 + np.cos(np.pi * np.minimum(t, horizon) / horizon))
    else:
        want = LR + (end - LR) * np.minimum(t, horizon) / horizon
    if warmup:
        want = np.where(t_abs < warmup, warm(t_abs, init), want)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)


def test_step_schedule_single_factor():
    c = cfg(lr=1.0, schedule="step", boundaries=(0.25, 0.5, 0.75), factor=0.1)
    got = evaluate(optim.make_schedule(c, 40), 45)
    t = np.arange(45)
    np.testing.assert_allclose(got, 0.1 ** ((t >= 10).astype(int) + (t >= 20) + (t >= 30)),
                               rtol=1e-6)


def one_cycle_closed_form(n, total, peak, pct, div, fdiv, lo, hi):
    s = int(pct * total)
    init, final = peak / div, peak / (div * fdiv)
    t = np.arange(n, dtype=np.float64)
    c1 = 0.5 * (1 + np.cos(np.pi * t / s))  # 1 -> 0 over [0, s]
    c2 = 0.5 * (1 + np.cos(np.pi * (t - s) / (total - s)))  # 1 -> 0 over [s, total]
    lr = np.where(t < s, peak + (init - peak) * c1, final + (peak - final) * c2)
    mom = np.where(t < s, lo + (hi - lo) * c1, hi + (lo - hi) * c2)
    return np.where(t >= total, final, lr), np.where(t >= total, hi, mom)


def test_one_cycle_lr_and_opposite_momentum():
    total = 90
    c = cfg(schedule="one_cycle", max_lr=2.0, pct_start=0.3, div_factor=20.0,
            final_div_factor=100.0, base_momentum=0.8, max_momentum=0.95)
    lr = evaluate(optim.make_schedule(c, total), total + 5)
    mom = evaluate(optim.make_momentum_schedule(c, total), total + 5)
    want_lr, want_mom = one_cycle_closed_form(total + 5, total, 2.0, 0.3, 20.0, 100.0, 0.8, 0.95)
    np.testing.assert_allclose(lr, want_lr, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(mom, want_mom, rtol=1e-5)
    assert lr.argmax() == mom.argmin() == 27  # opposite directions, same turning point


def test_momentum_schedule_only_for_one_cycle():
    assert optim.make_momentum_schedule(cfg(schedule="cosine"), 10) is None
    assert optim.make_momentum_schedule(cfg(schedule="one_cycle", cycle_momentum=False), 10) is None


@settings(max_examples=25, deadline=None)
@given(total=st.integers(2, 400), warm_frac=st.floats(0, 0.9),
       name=st.sampled_from(["exponential", "inverse_time", "cosine", "linear"]))
def test_decaying_schedules_reach_lr_after_warmup_then_never_increase(total, warm_frac, name):
    warmup = min(int(warm_frac * total), total - 1)
    c = cfg(lr=0.3, schedule=name, warmup_steps=warmup, decay_rate=0.01, end_lr=0.01)
    v = evaluate(optim.make_schedule(c, total), 401)  # fixed length: eager op caches hit
    np.testing.assert_allclose(v[warmup], 0.3, rtol=1e-6)
    assert np.all(np.diff(v[warmup:]) <= 1e-7) and np.all(v >= 0) and np.all(v <= 0.3 + 1e-7)


# ---------------------------------------------------------------------------- optimizers

def numpy_optimizer(name, params, grads, lr, *, momentum=0.9, b1=0.9, b2=0.999, eps=1e-8,
                    rms_decay=0.9, adagrad_init=0.1, wd=0.0, mode="l2", mask=None):
    """Independent float64 implementation following optax's definitions; returns params list."""
    p = to_np(params)
    mask = mask or jax.tree.map(lambda x: x.ndim > 1, p)
    st1 = jax.tree.map(np.zeros_like, p)
    st2 = jax.tree.map(lambda x: np.full_like(x, adagrad_init if name == "adagrad" else 0.0), p)
    out = []
    for t, g in enumerate(to_np(grads), start=1):
        def leaf(p, g, s1, s2, m):
            decay = wd * p if m else 0.0
            if mode == "l2":
                g = g + decay
            if name == "sgd":
                u = g
            elif name in ("momentum", "nesterov"):  # trace: v = g + m v (PyTorch convention)
                s1 = g + momentum * s1
                u = g + momentum * s1 if name == "nesterov" else s1
            elif name == "adagrad":  # optax: eps INSIDE the sqrt, accumulator starts at 0.1
                s2 = s2 + g * g
                u = g / np.sqrt(s2 + eps)
            elif name == "rmsprop":  # optax: eps INSIDE the sqrt, no bias correction, nu0 = 0
                s2 = rms_decay * s2 + (1 - rms_decay) * g * g
                u = g / np.sqrt(s2 + eps)
            else:  # adam: bias-corrected moments, eps OUTSIDE the sqrt
                s1 = b1 * s1 + (1 - b1) * g
                s2 = b2 * s2 + (1 - b2) * g * g
                u = (s1 / (1 - b1 ** t)) / (np.sqrt(s2 / (1 - b2 ** t)) + eps)
            if mode == "decoupled":
                u = u + decay
            return p - lr * u, s1, s2
        new = jax.tree.map(leaf, p, g, st1, st2, mask)
        is_tuple = lambda x: isinstance(x, tuple)  # noqa: E731
        p = jax.tree.map(lambda x: x[0], new, is_leaf=is_tuple)
        st1 = jax.tree.map(lambda x: x[1], new, is_leaf=is_tuple)
        st2 = jax.tree.map(lambda x: x[2], new, is_leaf=is_tuple)
        out.append(p)
    return out


def assert_trees_close(a, b, rtol=RTOL, atol=1e-6):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol,
                                                         atol=atol), a, b)


@pytest.mark.parametrize("name", list(optim.OPTIMIZERS))
def test_first_three_updates_match_numpy(name):
    params = tiny_params()
    grads = grad_sequence(params)
    # eps = 0.05 is large so that eps inside vs outside the sqrt would be caught.
    hp = dict(lr=0.05, momentum=0.8, b1=0.7, b2=0.9, eps=0.05, rms_decay=0.8, adagrad_init=0.2)
    got, _ = run(cfg(name=name, **hp), params, grads)
    want = numpy_optimizer(name, params, grads, 0.05, momentum=0.8, b1=0.7, b2=0.9, eps=0.05,
                           rms_decay=0.8, adagrad_init=0.2)
    for g, w in zip(got, want):
        assert_trees_close(g, w)


def test_eps_placement_matters_at_this_eps():
    """Guards the test above: moving eps under / out of the sqrt changes the result."""
    params, grads = tiny_params(), grad_sequence(tiny_params())
    got, _ = run(cfg(name="rmsprop", lr=0.05, eps=0.05, rms_decay=0.8), params, grads[:1])
    g = to_np(grads[0])["layer"]["kernel"]
    nu = 0.2 * g * g
    wrong = to_np(params)["layer"]["kernel"] - 0.05 * g / (np.sqrt(nu) + 0.05)
    assert not np.allclose(np.asarray(got[0]["layer"]["kernel"]), wrong, rtol=1e-3)


def test_l2_and_decoupled_weight_decay_differ_for_adam():
    params = tiny_params()
    grads = grad_sequence(params, n=4)
    results = {}
    for mode in ("l2", "decoupled"):
        got, _ = run(cfg(name="adam", lr=0.1, weight_decay=0.3, weight_decay_mode=mode), params,
                     grads)
        want = numpy_optimizer("adam", params, grads, 0.1, wd=0.3, mode=mode)
        for g, w in zip(got, want):
            assert_trees_close(g, w)
        results[mode] = np.asarray(got[-1]["layer"]["kernel"])
    assert np.abs(results["l2"] - results["decoupled"]).max() > 1e-3
    # 'adamw' is Adam + decoupled decay.
    adamw, _ = run(cfg(name="adamw", lr=0.1, weight_decay=0.3), params, grads)
    np.testing.assert_allclose(np.asarray(adamw[-1]["layer"]["kernel"]), results["decoupled"],
                               rtol=1e-6)


def test_l2_and_decoupled_weight_decay_agree_for_plain_sgd():
    params = tiny_params()
    grads = grad_sequence(params, n=3)
    lr, wd = 0.1, 0.5
    finals = []
    for mode in ("l2", "decoupled"):
        got, _ = run(cfg(name="sgd", lr=lr, weight_decay=wd, weight_decay_mode=mode), params, grads)
        finals.append(np.asarray(got[-1]["layer"]["kernel"], np.float64))
    p = to_np(params)["layer"]["kernel"]
    for g in to_np(grads):  # closed form: p <- (1 - lr wd) p - lr g
        p = (1 - lr * wd) * p - lr * g["layer"]["kernel"]
    np.testing.assert_allclose(finals[0], p, rtol=1e-5)
    np.testing.assert_allclose(finals[1], p, rtol=1e-5)


def mask_params():
    one = lambda *s: jnp.ones(s, jnp.float32)  # noqa: E731
    return {"conv": {"kernel": one(2, 2), "bias": one(2)}, "norm": {"scale": one(2)},
            "embed": {"table": one(3, 2)}, "pos": {"bias": one(2, 2)}, "temp": one()}


@pytest.mark.parametrize("mask", ["default", "all"])
def test_decay_mask(mask):
    params = mask_params()
    zeros = jax.tree.map(jnp.zeros_like, params)
    got, _ = run(cfg(name="sgd", lr=0.1, weight_decay=0.5, decay_mask=mask), params, [zeros])
    paths = dict(zip(optim.param_paths(params), jax.tree.leaves(got[0])))
    decayed = {"conv/kernel", "embed/table"} if mask == "default" else set(paths)
    for path, value in paths.items():
        np.testing.assert_allclose(np.asarray(value), 0.95 if path in decayed else 1.0, rtol=1e-6,
                                   err_msg=path)


@pytest.mark.parametrize("scale", [0.01, 10.0])
def test_grad_clip_by_global_norm(scale):
    params = tiny_params()
    (g,) = grad_sequence(params, n=1, scale=scale)
    got, _ = run(cfg(name="sgd", lr=1.0, grad_clip_norm=1.0), params, [g])
    gn = to_np(g)
    norm = math.sqrt(sum(float((x ** 2).sum()) for x in jax.tree.leaves(gn)))
    factor = min(1.0, 1.0 / norm)
    assert (factor < 1) == (scale > 1)
    want = jax.tree.map(lambda p, x: p - factor * x, to_np(params), gn)
    assert_trees_close(got[0], want)


def groups_params():
    r = np.random.default_rng(3)
    leaf = lambda *s: jnp.asarray(r.normal(size=s), jnp.float32)  # noqa: E731
    return {"backbone": {"conv": {"kernel": leaf(3, 3), "bias": leaf(3)}},
            "head": {"kernel": leaf(3, 2), "bias": leaf(2)}}


def test_freeze_keeps_leaves_bit_identical_and_stateless():
    params = groups_params()
    grads = grad_sequence(params, n=5, seed=4)
    c = cfg(name="adamw", lr=0.05, weight_decay=0.1, freeze=("^backbone/",), grad_clip_norm=1.0)
    got, state = run(c, params, grads)
    for path, before, after in zip(optim.param_paths(params), jax.tree.leaves(params),
                                   jax.tree.leaves(got[-1])):
        same = np.asarray(before).tobytes() == np.asarray(after).tobytes()
        assert same == path.startswith("backbone/"), path
    state_paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(state)]
    assert not [p for p in state_paths if "backbone" in p]  # no Adam moments for frozen leaves
    assert any("head" in p for p in state_paths)


def test_clip_norm_ignores_frozen_gradients():
    params = groups_params()
    g = grad_sequence(params, n=1, seed=5)[0]
    g["backbone"] = jax.tree.map(lambda x: 1e3 * x, g["backbone"])
    got, _ = run(cfg(name="sgd", lr=1.0, grad_clip_norm=1.0, freeze=("backbone",)), params, [g])
    head = to_np(g)["head"]
    norm = math.sqrt(sum(float((x ** 2).sum()) for x in jax.tree.leaves(head)))
    want = jax.tree.map(lambda p, x: p - min(1.0, 1.0 / norm) * x, to_np(params)["head"], head)
    assert_trees_close(got[0]["head"], want)


def test_lr_multipliers_scale_sgd_updates_first_match_wins():
    params = groups_params()
    (g,) = grad_sequence(params, n=1, seed=6)
    c = cfg(name="sgd", lr=0.1, lr_multipliers=("head/kernel=0.1", "head/.*=3", "kernel=2"))
    got, _ = run(c, params, [g])
    mult = {"head/kernel": 0.1, "head/bias": 3.0, "backbone/conv/kernel": 2.0,
            "backbone/conv/bias": 1.0}
    for path, p0, gi, p1 in zip(optim.param_paths(params), jax.tree.leaves(to_np(params)),
                                jax.tree.leaves(to_np(g)), jax.tree.leaves(got[0])):
        np.testing.assert_allclose(np.asarray(p1) - p0, -0.1 * mult[path] * gi, rtol=1e-5,
                                   atol=1e-7, err_msg=path)


def test_current_lr_follows_schedule():
    params = tiny_params()
    c = cfg(name="momentum", lr=0.2, schedule="cosine", warmup_steps=3, end_lr=0.02)
    total = 12
    sched = optim.make_schedule(c, total)
    tx = optim.make_optimizer(c, total)
    state = tx.init(params)
    assert optim.current_lr(state) == pytest.approx(float(sched(0)))
    step = jax.jit(lambda g, s, p: tx.update(g, s, p))
    for k, g in enumerate(grad_sequence(params, n=total, seed=7), start=1):
        _, state = step(g, state, params)
        # The logged lr is the one the k-th update used: schedule(k - 1).
        assert optim.current_lr(state) == pytest.approx(float(sched(k - 1)), rel=1e-6)
    assert optim.current_lr({"no": jnp.zeros(())}) is None


def test_one_cycle_momentum_drives_sgd_momentum():
    params = tiny_params()
    grads = grad_sequence(params, n=3, seed=8)
    total = 10
    c = cfg(name="momentum", schedule="one_cycle", max_lr=0.5, pct_start=0.4, base_momentum=0.8,
            max_momentum=0.95)
    got, state = run(c, params, grads, total_steps=total)
    lrs, moms = one_cycle_closed_form(3, total, 0.5, 0.4, 25.0, 1e4, 0.8, 0.95)
    p, v = to_np(params), None
    for t, g in enumerate(to_np(grads)):
        v = g if v is None else jax.tree.map(lambda gi, vi: gi + moms[t] * vi, g, v)
        p = jax.tree.map(lambda pi, vi: pi - lrs[t] * vi, p, v)
    assert_trees_close(got[-1], p)
    hp = optim.current_hyperparams(state)
    assert hp["momentum"] == pytest.approx(moms[2], rel=1e-6)
    # Adam gets the cycle on b1; plain SGD has no momentum to cycle.
    _, adam_state = run(cfg(**{**c.to_dict(), "name": "adam"}), params, grads, total)
    assert optim.current_hyperparams(adam_state)["b1"] == pytest.approx(moms[2], rel=1e-6)
    _, sgd_state = run(cfg(**{**c.to_dict(), "name": "sgd"}), params, grads, total)
    assert "momentum" not in optim.current_hyperparams(sgd_state)


# ------------------------------------------------------------------------- helpers, EMA

@settings(max_examples=30, deadline=None)
@given(st.recursive(st.integers(0, 3).map(lambda n: np.zeros((n,))),
                    lambda kids: st.dictionaries(st.text("abcxyz_", min_size=1, max_size=4), kids,
                                                 min_size=1, max_size=3), max_leaves=8))
def test_param_paths_match_a_plain_recursive_walk(tree):
    def walk(node, prefix):
        if not isinstance(node, dict):
            return [prefix]
        return [q for k in sorted(node) for q in walk(node[k], f"{prefix}/{k}" if prefix else k)]
    if isinstance(tree, dict):
        assert optim.param_paths(tree) == walk(tree, "")


def test_ema_update_closed_form_and_jit():
    r = np.random.default_rng(9)
    ema = {"a": jnp.asarray(r.normal(size=(3, 2)), jnp.float32), "b": jnp.float32(1.5)}
    new = {"a": jnp.asarray(r.normal(size=(3, 2)), jnp.float32), "b": jnp.float32(-2.0)}
    for decay in (0.0, 0.9, 0.999, 1.0):
        want = jax.tree.map(lambda e, p: decay * np.float64(e) + (1 - decay) * np.float64(p),
                            ema, new)
        assert_trees_close(optim.ema_update(ema, new, decay), want, rtol=1e-6)
        assert_trees_close(jax.jit(optim.ema_update)(ema, new, jnp.float32(decay)), want,
                           rtol=1e-6)


@settings(max_examples=25, deadline=None)
@given(decay=st.floats(0, 1), e=st.floats(-5, 5), p=st.floats(-5, 5))
def test_ema_update_lies_between(decay, e, p):
    out = float(optim.ema_update({"x": jnp.float32(e)}, {"x": jnp.float32(p)}, decay)["x"])
    assert min(e, p) - 1e-5 <= out <= max(e, p) + 1e-5


# ------------------------------------------------------------------------------ errors

@pytest.mark.parametrize("overrides, match", [
    (dict(name="adamm"), r"name='adamm'.*adam.*Valid: sgd, momentum"),
    (dict(schedule="cosin"), r"schedule='cosin'.*'cosine'"),
    (dict(weight_decay_mode="decouple"), r"weight_decay_mode.*'decoupled'"),
    (dict(decay_mask="bias"), r"decay_mask"),
    (dict(name="adamw", weight_decay_mode="l2"), r"name='adam', weight_decay_mode='l2'"),
    (dict(schedule="step"), r"boundaries is empty"),
    (dict(schedule="step", boundaries=(0.5, 0.3)), r"strictly increasing"),
    (dict(schedule="step", boundaries=(0.5, 0.501)), r"strictly increasing"),
    (dict(schedule="step", boundaries=(30,)), r"fractions of total_steps"),
    (dict(schedule="step", boundaries=(0.3, 0.6), factors=(0.1,)), r"one factor per boundary"),
    (dict(schedule="step", boundaries=(0.05,), warmup_steps=10), r"inside the warm-up"),
    (dict(schedule="exponential"), r"decay_rate"),
    (dict(schedule="one_cycle", warmup_steps=5), r"warmup_steps must be 0"),
    (dict(warmup_steps=-1), r"warmup_steps=-1 must be >= 0"),
    (dict(lr_multipliers=("head",)), r"'regex=multiplier'"),
    (dict(lr_multipliers=("head=fast",)), r"multiplier 'fast' is not a number"),
    (dict(lr_multipliers=("head=-1",)), r"multiplier >= 0"),
    (dict(freeze=("head[",)), r"freeze.*not a valid regular expression"),
    (dict(momentum=1.0, name="momentum"), r"momentum=1.0 must be in \[0, 1\)"),
])
def test_config_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        optim.make_optimizer(cfg(**overrides), 100)


def test_unknown_key_and_bad_total_steps():
    with pytest.raises(ValueError, match=r"weight_decy.*'weight_decay'"):
        optim.make_optimizer({"weight_decy": 0.1}, 10)
    with pytest.raises(ValueError, match="total_steps"):
        optim.make_schedule(cfg(), 0)


def test_patterns_matching_no_parameter_list_paths():
    params = groups_params()
    tx = optim.make_optimizer(cfg(freeze=("^encoder/",)), 10)
    with pytest.raises(ValueError, match=r"freeze: pattern '\^encoder/'.*head/kernel"):
        tx.init(params)
    tx = optim.make_optimizer(cfg(lr_multipliers=("decoder=0.1",)), 10)
    with pytest.raises(ValueError, match=r"lr_multipliers: pattern 'decoder'.*backbone/conv/bias"):
        tx.init(params)


def test_plain_dict_config_and_string_freeze():
    params = groups_params()
    tx = optim.make_optimizer({"name": "sgd", "lr": 0.1, "freeze": "backbone"}, 10)
    state = tx.init(params)
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
    assert float(jnp.abs(updates["backbone"]["conv"]["kernel"]).max()) == 0.0
    np.testing.assert_allclose(np.asarray(updates["head"]["bias"]), -0.1, rtol=1e-6)
