"""The one factory for optimizers and learning-rate schedules (the experiment's ``optim`` block).

Everything is assembled from optax building blocks. ``make_optimizer`` returns, for a flax
``params`` dict, the chain::

    [param groups: frozen leaves -> optax.set_to_zero (no state)]
    trainable leaves -> clip_by_global_norm -> inject_hyperparams(
                            (l2 wd) -> optimizer scaling -> (decoupled wd) -> * -lr(t))
                        -> per-group lr multipliers

Parameter groups are selected with regexes (``re.search``) over '/'-joined parameter paths, see
``param_paths``. The current learning rate lives in the opt state (``current_lr``).
"""

from __future__ import annotations

import warnings

import difflib
import math
import re
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import optax

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw")
SCHEDULES = ("constant", "step", "exponential", "inverse_time", "cosine", "linear", "one_cycle",
             "cosine_restarts")
WEIGHT_DECAY_MODES = ("auto", "l2", "decoupled")
DECAY_MASKS = ("default", "all")
# Leaf names that are never weight-decayed under decay_mask='default' (biases, norm scales).
_NO_DECAY_NAMES = ("bias", "scale")
_MOMENTUM_HP = {"momentum": "momentum", "nesterov": "momentum", "adam": "b1", "adamw": "b1"}


def optim_config() -> ml_collections.ConfigDict:
    """Returns the default ``optim`` ConfigDict; experiments override what they need.

    Optimizer: ``name`` in OPTIMIZERS; ``lr`` (peak / base learning rate); ``momentum`` (for
    'momentum' / 'nesterov', optax.trace: ``v = g + m v``); ``b1``, ``b2`` (Adam); ``eps``
    (Adam: outside the sqrt; RMSProp and AdaGrad: inside the sqrt, as optax defines them);
    ``rms_decay`` (RMSProp's squared-gradient average); ``adagrad_init`` (AdaGrad's initial
    accumulator).

    Regularization: ``weight_decay`` (0 = off); ``weight_decay_mode``: 'l2' adds ``wd * w`` to the
    gradient before the optimizer (adaptive methods rescale it), 'decoupled' adds ``wd * w`` to
    the optimizer's output, then everything is times lr (AdamW), 'auto' = decoupled for 'adamw',
    l2 otherwise; ``decay_mask``: 'default' spares every leaf with ndim <= 1 and every leaf named
    bias / scale, 'all' decays everything; ``grad_clip_norm`` (global-norm clipping, 0 = off).

    Schedule (``make_schedule``), ``t`` counts steps after warm-up and ``T`` = total - warm-up:
    'constant'; 'step': ``boundaries`` are FRACTIONS of total_steps in (0, 1), strictly
    increasing, at each one lr is multiplied by ``factors[i]`` (or by ``factor`` when
    ``factors`` is empty), cumulatively (boundary step = round(fraction * total_steps));
    'exponential': ``lr exp(-decay_rate t)``; 'inverse_time': ``lr / (1 + decay_rate t)``;
    'cosine': from lr to ``end_lr`` over T; 'linear': from lr to ``end_lr`` over T;
    'cosine_restarts' (SGDR): ``cycles`` equal cosine cycles from lr to ``end_lr``, each
    L = T / cycles steps long (T must divide), restarting at lr: for snapshot ensembles save a
    checkpoint every L steps (``jaxvision/ensemble.py``);
    'one_cycle' (no separate warm-up): cosine from ``max_lr / div_factor`` up to ``max_lr``
    (``max_lr`` = 0 means ``lr``) over the first ``pct_start`` of the steps, then down to
    ``max_lr / (div_factor * final_div_factor)``; with ``cycle_momentum`` the momentum (SGD
    momentum, or Adam's b1; other optimizers have none) goes the opposite way between
    ``max_momentum`` and ``base_momentum``. ``warmup_steps``: linear warm-up from
    ``warmup_init_lr`` to lr before any schedule.

    Parameter groups: ``freeze`` (regexes; matching leaves get zero updates, no weight decay and
    no optimizer state); ``lr_multipliers`` ('regex=multiplier' strings, first match wins; the
    leaf's update, decoupled weight decay included, is multiplied). ``ema_decay``: Polyak average
    of the params kept by the train state (0 = off), see ``ema_update``.
    """
    return ml_collections.ConfigDict(dict(
        name="sgd",
        lr=0.1,
        momentum=0.9,
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        rms_decay=0.9,
        adagrad_init=0.1,
        weight_decay=0.0,
        weight_decay_mode="auto",
        decay_mask="default",
        grad_clip_norm=0.0,
        schedule="constant",
        boundaries=(),
        factor=0.1,
        factors=(),
        decay_rate=0.0,
        end_lr=0.0,
        cycles=1,
        warmup_steps=0,
        warmup_init_lr=0.0,
        max_lr=0.0,
        pct_start=0.3,
        div_factor=25.0,
        final_div_factor=1e4,
        cycle_momentum=True,
        base_momentum=0.85,
        max_momentum=0.95,
        freeze=(),
        lr_multipliers=(),
        ema_decay=0.0,
    ))


# ----------------------------------------------------------------------------------- helpers

def _close(word: str, valid) -> str:
    near = difflib.get_close_matches(str(word), list(valid), n=3, cutoff=0.5)
    return f" Did you mean {' or '.join(repr(n) for n in near)}?" if near else ""


def _resolve(config: Mapping[str, Any] | ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Defaults overridden by ``config``; unknown keys are an error (typos would be silent)."""
    cfg = optim_config()
    items = config.items() if hasattr(config, "items") else dict(config).items()
    for key, value in items:
        if key not in cfg:
            raise ValueError(f"optim.{key}: unknown key.{_close(key, cfg.keys())} "
                             f"Valid keys: {sorted(cfg.keys())}.")
        if key in ("freeze", "lr_multipliers", "boundaries", "factors") and isinstance(value, str):
            value = (value,) if value else ()
        cfg[key] = value
    return cfg


def _check_choice(key: str, value: str, valid) -> None:
    if value not in valid:
        raise ValueError(f"optim.{key}={value!r} is unknown.{_close(value, valid)} "
                         f"Valid: {', '.join(valid)}.")


def _key_name(entry) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _path_str(path) -> str:
    return "/".join(_key_name(e) for e in path)


def param_paths(params: Any) -> list[str]:
    """Returns the '/'-joined key path of every leaf of ``params``, in tree-leaf order.

    E.g. ``{'head': {'kernel': w, 'bias': b}}`` -> ``['head/bias', 'head/kernel']``.
    """
    return [_path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]


def _path_examples(paths: list[str], k: int = 12) -> str:
    shown = ", ".join(paths[:k])
    return shown + (f", ... ({len(paths)} in all)" if len(paths) > k else "")


def _compile(key: str, pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ValueError(f"optim.{key}: {pattern!r} is not a valid regular expression ({e}).")


def _parse_lr_multipliers(entries) -> list[tuple[re.Pattern, float]]:
    """Parses ``('regex=multiplier', ...)``; the last '=' separates, so regexes may contain '='."""
    out = []
    for entry in entries:
        if not isinstance(entry, str) or "=" not in entry:
            raise ValueError(f"optim.lr_multipliers: {entry!r} must be a string 'regex=multiplier',"
                             " e.g. 'backbone/.*=0.1'.")
        pattern, _, mult = entry.rpartition("=")
        try:
            value = float(mult)
        except ValueError:
            raise ValueError(f"optim.lr_multipliers: in {entry!r} the multiplier {mult!r} is not "
                             "a number; expected 'regex=multiplier', e.g. 'backbone/.*=0.1'."
                             ) from None
        if not pattern or not math.isfinite(value) or value < 0:
            raise ValueError(f"optim.lr_multipliers: {entry!r} needs a non-empty regex and a "
                             "finite multiplier >= 0, e.g. 'backbone/.*=0.1'.")
        out.append((_compile("lr_multipliers", pattern), value))
    return out


def _first_match(path: str, patterns: list[re.Pattern]) -> int:
    for i, p in enumerate(patterns):
        if p.search(path):
            return i
    return -1


def _require_matches(key: str, patterns: list[re.Pattern], paths: list[str], what: str) -> None:
    for p in patterns:
        if not any(p.search(s) for s in paths):
            raise ValueError(f"optim.{key}: pattern {p.pattern!r} matches no {what} (patterns are "
                             f"searched with re.search in '/'-joined paths). Paths: "
                             f"{_path_examples(paths)}.")


def _decay_mask_fn(mode: str) -> Callable[[Any], Any]:
    """Returns params -> bool tree, True where weight decay applies."""
    def mask(tree):
        def keep(path, leaf):
            if mode == "all":
                return True
            return jnp.ndim(leaf) > 1 and _key_name(path[-1]) not in _NO_DECAY_NAMES
        return jax.tree_util.tree_map_with_path(keep, tree)
    return mask


# --------------------------------------------------------------------------------- schedules

_WARNED_WARMUP: set[tuple[int, int]] = set()


def _validate_steps(cfg: ml_collections.ConfigDict, total_steps: int) -> None:
    if int(total_steps) != total_steps or total_steps <= 0:
        raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}.")
    _check_choice("schedule", cfg.schedule, SCHEDULES)
    if cfg.warmup_steps < 0:
        raise ValueError(f"optim.warmup_steps={cfg.warmup_steps} must be >= 0.")
    if cfg.warmup_steps and cfg.warmup_steps >= total_steps:
        # A short trial run of a config tuned for a long one (--config.train.steps=30) should
        # work: warm up for a tenth of it instead. ``cfg`` is this call's own copy.
        scaled = int(total_steps) // 10
        if (cfg.warmup_steps, total_steps) not in _WARNED_WARMUP:   # once, not per schedule
            _WARNED_WARMUP.add((cfg.warmup_steps, total_steps))
            warnings.warn(f"optim.warmup_steps={cfg.warmup_steps} is not shorter than the run "
                          f"(train.steps={total_steps}); warming up for {scaled} steps instead. "
                          f"Set --config.optim.warmup_steps below {total_steps} to choose.",
                          stacklevel=3)
        cfg.warmup_steps = scaled
    if cfg.schedule == "one_cycle" and cfg.warmup_steps:
        raise ValueError("optim.warmup_steps must be 0 with schedule='one_cycle': its first "
                         "pct_start of the steps already is the warm-up.")


def _step_boundaries(cfg: ml_collections.ConfigDict, total_steps: int) -> dict[int, float]:
    """Returns {post-warm-up step: factor} for schedule='step', after checking consistency."""
    fracs = [float(b) for b in cfg.boundaries]
    if not fracs:
        raise ValueError("optim.boundaries is empty; schedule='step' needs fractions of "
                         "total_steps in (0, 1), e.g. (0.5, 0.75).")
    if any(not 0 < f < 1 for f in fracs):
        raise ValueError(f"optim.boundaries={tuple(fracs)} must be fractions of total_steps in "
                         "(0, 1); for an absolute step s use s / total_steps.")
    factors = [float(f) for f in cfg.factors] if len(cfg.factors) else [cfg.factor] * len(fracs)
    if len(factors) != len(fracs):
        raise ValueError(f"optim.factors has {len(factors)} entries but optim.boundaries has "
                         f"{len(fracs)}; give one factor per boundary or leave factors empty.")
    if any(f < 0 for f in factors):
        raise ValueError(f"optim.factors / optim.factor must be >= 0, got {tuple(factors)}.")
    steps = [round(f * total_steps) for f in fracs]
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise ValueError(f"optim.boundaries={tuple(fracs)} give steps {steps} for total_steps="
                         f"{total_steps}; they must be strictly increasing.")
    if steps[0] <= cfg.warmup_steps:
        raise ValueError(f"optim.boundaries: first boundary at step {steps[0]} is inside the "
                         f"warm-up (warmup_steps={cfg.warmup_steps}); move it later.")
    return {s - cfg.warmup_steps: f for s, f in zip(steps, factors)}


def _one_cycle_peak(cfg: ml_collections.ConfigDict) -> float:
    return float(cfg.max_lr) if cfg.max_lr > 0 else float(cfg.lr)


def make_schedule(config, total_steps: int) -> optax.Schedule:
    """Returns the learning-rate schedule ``step (int) -> lr (scalar)``, warm-up included.

    ``config`` is an ``optim`` block (see ``optim_config``); ``total_steps`` the number of
    optimizer steps of the run (decaying schedules reach their end value there).
    """
    cfg = _resolve(config)
    _validate_steps(cfg, total_steps)
    lr, warm = float(cfg.lr), int(cfg.warmup_steps)
    horizon = total_steps - warm  # steps of the main schedule
    name = cfg.schedule
    if name != "one_cycle" and lr <= 0:
        raise ValueError(f"optim.lr={cfg.lr} must be > 0.")
    if name == "constant":
        main = optax.constant_schedule(lr)
    elif name == "step":
        main = optax.piecewise_constant_schedule(lr, _step_boundaries(cfg, total_steps))
    elif name in ("exponential", "inverse_time"):
        k = float(cfg.decay_rate)
        if k <= 0:
            raise ValueError(f"optim.decay_rate={cfg.decay_rate} must be > 0 for schedule="
                             f"{name!r} (k per step in lr*exp(-k t) or lr/(1+k t)).")
        if name == "exponential":
            # optax computes lr * rate**(t / n); a long period n keeps the float32 exponent t/n
            # accurate, and capping k*n at 50 keeps rate = exp(-k n) from underflowing to 0.
            n = max(1, min(horizon, int(50.0 / k)))
            main = optax.exponential_decay(lr, transition_steps=n, decay_rate=math.exp(-k * n))
        else:  # optax has no inverse-time decay
            main = lambda t: lr / (1.0 + k * jnp.asarray(t, jnp.float32))  # noqa: E731
    elif name in ("cosine", "linear", "cosine_restarts"):
        if not 0 <= cfg.end_lr <= lr:
            raise ValueError(f"optim.end_lr={cfg.end_lr} must be in [0, lr={lr}].")
        if name == "cosine":
            main = optax.cosine_decay_schedule(lr, decay_steps=horizon, alpha=cfg.end_lr / lr)
        elif name == "cosine_restarts":
            length = cycle_length(cfg, total_steps)
            main = optax.sgdr_schedule([dict(init_value=lr, peak_value=lr, warmup_steps=0,
                                             decay_steps=length, end_value=float(cfg.end_lr))
                                        ] * int(cfg.cycles))
        else:
            main = optax.linear_schedule(lr, float(cfg.end_lr), transition_steps=horizon)
    else:  # one_cycle
        peak = _one_cycle_peak(cfg)
        if (peak <= 0 or not 0 < cfg.pct_start < 1 or cfg.div_factor <= 0
                or cfg.final_div_factor <= 0):
            raise ValueError(f"optim one_cycle needs max_lr (or lr) > 0, 0 < pct_start < 1 and "
                             f"positive div factors; got max_lr={cfg.max_lr}, lr={cfg.lr}, "
                             f"pct_start={cfg.pct_start}, div_factor={cfg.div_factor}, "
                             f"final_div_factor={cfg.final_div_factor}.")
        return optax.cosine_onecycle_schedule(total_steps, peak, pct_start=cfg.pct_start,
                                              div_factor=cfg.div_factor,
                                              final_div_factor=cfg.final_div_factor)
    if warm == 0:
        return main
    ramp = optax.linear_schedule(float(cfg.warmup_init_lr), lr, transition_steps=warm)
    return optax.join_schedules([ramp, main], [warm])


def cycle_length(config, total_steps: int) -> int:
    """Returns the steps per cycle of schedule='cosine_restarts': (total - warm-up) / cycles."""
    cfg = _resolve(config)
    horizon = int(total_steps) - int(cfg.warmup_steps)
    cycles = cfg.cycles
    if isinstance(cycles, bool) or not isinstance(cycles, int) or not 1 <= cycles <= horizon:
        raise ValueError(f"optim.cycles={cycles!r} must be an int in [1, {horizon}] (the steps "
                         "after warm-up).")
    if horizon % cycles:
        raise ValueError(f"optim.cycles={cycles} does not divide the {horizon} steps after warm-up "
                         f"(train.steps={total_steps} - optim.warmup_steps={cfg.warmup_steps}); "
                         f"choose train.steps = warmup_steps + cycles * cycle_length.")
    return horizon // cycles


def make_momentum_schedule(config, total_steps: int) -> optax.Schedule | None:
    """Returns the one-cycle momentum schedule (high when lr is low), or None.

    None unless ``schedule == 'one_cycle'`` and ``cycle_momentum``. The momentum goes, by cosine
    interpolation, from ``max_momentum`` at step 0 to ``base_momentum`` at the lr peak
    (``int(pct_start * total_steps)``, as optax's one-cycle lr) and back to ``max_momentum`` at
    ``total_steps``.
    """
    cfg = _resolve(config)
    _validate_steps(cfg, total_steps)
    if cfg.schedule != "one_cycle" or not cfg.cycle_momentum:
        return None
    lo, hi = float(cfg.base_momentum), float(cfg.max_momentum)
    if not 0 < lo <= hi < 1:
        raise ValueError(f"optim: one-cycle momentum needs 0 < base_momentum <= max_momentum < 1,"
                         f" got base_momentum={lo}, max_momentum={hi}.")
    peak_step = int(cfg.pct_start * total_steps)
    return optax.piecewise_interpolate_schedule(
        "cosine", hi, {peak_step: lo / hi, int(total_steps): hi / lo})


# -------------------------------------------------------------------------------- optimizers

def _core_factory(cfg: ml_collections.ConfigDict) -> Callable[..., optax.GradientTransformation]:
    """Returns a factory whose numeric arguments inject_hyperparams can schedule and log.

    Each factory builds ``(l2 wd) -> scaling -> (decoupled wd) -> scale_by_learning_rate``.
    Weight decay sits inside so that the decoupled term is multiplied by the *scheduled* lr.
    """
    mode = cfg.weight_decay_mode
    if mode == "auto":
        mode = "decoupled" if cfg.name == "adamw" else "l2"
    use_wd = cfg.weight_decay > 0
    mask = _decay_mask_fn(cfg.decay_mask)

    def finish(scaler, learning_rate, weight_decay):
        decay = [optax.masked(optax.add_decayed_weights(weight_decay), mask)] if use_wd else []
        return optax.chain(*(decay if mode == "l2" else []), scaler,
                           *(decay if mode == "decoupled" else []),
                           optax.scale_by_learning_rate(learning_rate))

    name = cfg.name
    if name == "sgd":
        def core(learning_rate, weight_decay):
            return finish(optax.identity(), learning_rate, weight_decay)
    elif name in ("momentum", "nesterov"):
        # optax.trace: v <- g + m v; update g + m v (nesterov) or v; same as PyTorch's SGD.
        def core(learning_rate, momentum, weight_decay):
            return finish(optax.trace(decay=momentum, nesterov=name == "nesterov"),
                          learning_rate, weight_decay)
    elif name == "adagrad":
        # optax: G <- G + g^2 (G0 = adagrad_init); update g / sqrt(G + eps) (eps inside sqrt).
        def core(learning_rate, eps, weight_decay):
            return finish(optax.scale_by_rss(initial_accumulator_value=cfg.adagrad_init, eps=eps),
                          learning_rate, weight_decay)
    elif name == "rmsprop":
        # optax: nu <- d nu + (1-d) g^2 (nu0 = 0, no bias correction); g / sqrt(nu + eps).
        def core(learning_rate, decay, eps, weight_decay):
            return finish(optax.scale_by_rms(decay=decay, eps=eps), learning_rate, weight_decay)
    else:  # adam, adamw: m_hat / (sqrt(v_hat) + eps), bias-corrected, eps outside the sqrt.
        def core(learning_rate, b1, b2, eps, weight_decay):
            return finish(optax.scale_by_adam(b1=b1, b2=b2, eps=eps), learning_rate, weight_decay)
    return core


def _validate_optimizer(cfg: ml_collections.ConfigDict) -> None:
    _check_choice("name", cfg.name, OPTIMIZERS)
    _check_choice("weight_decay_mode", cfg.weight_decay_mode, WEIGHT_DECAY_MODES)
    _check_choice("decay_mask", cfg.decay_mask, DECAY_MASKS)
    if cfg.name == "adamw" and cfg.weight_decay_mode == "l2":
        raise ValueError("optim.name='adamw' is Adam with decoupled weight decay; for Adam with "
                         "L2 regularization use name='adam', weight_decay_mode='l2'.")
    for key in ("weight_decay", "grad_clip_norm", "eps"):
        if cfg[key] < 0:
            raise ValueError(f"optim.{key}={cfg[key]} must be >= 0.")
    for key in ("momentum", "b1", "b2", "rms_decay", "ema_decay"):
        if not 0 <= cfg[key] < 1:
            raise ValueError(f"optim.{key}={cfg[key]} must be in [0, 1).")


def make_optimizer(config, total_steps: int) -> optax.GradientTransformation:
    """Returns the whole optax chain for ``config`` (an ``optim`` block) over ``total_steps``.

    ``init`` takes the params pytree (flax ``params`` dict); ``update`` needs ``params`` too
    whenever weight decay is on. Unknown names / keys, inconsistent boundaries, bad
    ``lr_multipliers`` and ``freeze`` patterns matching no parameter (at ``init``) raise
    ValueError.
    """
    cfg = _resolve(config)
    _validate_optimizer(cfg)
    hparams: dict[str, Any] = dict(learning_rate=make_schedule(cfg, total_steps),
                                   weight_decay=float(cfg.weight_decay))
    if cfg.name in ("momentum", "nesterov"):
        hparams.update(momentum=cfg.momentum)
    elif cfg.name == "adagrad":
        hparams.update(eps=cfg.eps)
    elif cfg.name == "rmsprop":
        hparams.update(decay=cfg.rms_decay, eps=cfg.eps)
    elif cfg.name in ("adam", "adamw"):
        hparams.update(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    momentum = make_momentum_schedule(cfg, total_steps)
    if momentum is not None and cfg.name in _MOMENTUM_HP:  # sgd/adagrad/rmsprop have none
        hparams[_MOMENTUM_HP[cfg.name]] = momentum
    tx = optax.inject_hyperparams(_core_factory(cfg))(**hparams)

    parts = [optax.clip_by_global_norm(float(cfg.grad_clip_norm))] if cfg.grad_clip_norm else []
    parts.append(tx)
    multipliers = _parse_lr_multipliers(cfg.lr_multipliers)
    if multipliers:
        patterns = [p for p, _ in multipliers]

        def mult_labels(tree):
            # Sees only trainable leaves (frozen ones are optax.MaskedNode, which has no leaves).
            _require_matches("lr_multipliers", patterns, param_paths(tree), "trainable parameter")
            return jax.tree_util.tree_map_with_path(
                lambda path, _: f"lr_group_{_first_match(_path_str(path), patterns)}", tree)
        groups = {f"lr_group_{i}": optax.scale(m) for i, (_, m) in enumerate(multipliers)}
        groups["lr_group_-1"] = optax.identity()
        parts.append(optax.multi_transform(groups, mult_labels))
    tx = optax.chain(*parts) if len(parts) > 1 else tx

    freeze = [_compile("freeze", p) for p in cfg.freeze]
    if not freeze:
        return tx

    def freeze_labels(tree):
        _require_matches("freeze", freeze, param_paths(tree), "parameter")
        return jax.tree_util.tree_map_with_path(
            lambda path, _: "frozen" if _first_match(_path_str(path), freeze) >= 0 else "trainable",
            tree)
    return optax.multi_transform({"trainable": tx, "frozen": optax.set_to_zero()}, freeze_labels)


def injected_hyperparams(opt_state: Any) -> dict[str, Any]:
    """Returns the injected hyperparameters of ``opt_state`` as they are stored (arrays, on
    the device, with a leading replica axis under pmap), keyed by name; {} when there are none.
    Reading these rather than the whole state keeps a host read small."""
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(
        x, (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)))
        if isinstance(s, (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState))]
    return dict(found[0].hyperparams) if found else {}


def current_hyperparams(opt_state: Any) -> dict[str, float]:
    """Returns the injected hyperparameters (learning_rate, momentum / b1, ...) as floats.

    Values are those used by the most recent update (before any update: the step-0 values).
    Host-side (not under jit); {} when the state has no injected hyperparameters.
    """
    return {k: float(v) for k, v in jax.device_get(injected_hyperparams(opt_state)).items()}


def current_lr(opt_state: Any) -> float | None:
    """Returns the base learning rate of the most recent update (schedule(step - 1); schedule(0)
    before any update), or None if ``opt_state`` has no injected learning rate. Per-group
    ``lr_multipliers`` are not included. Host-side, for logging.
    """
    return current_hyperparams(opt_state).get("learning_rate")


def ema_update(ema_params: Any, params: Any, decay) -> Any:
    """Returns the Polyak average ``decay * ema_params + (1 - decay) * params``, leaf by leaf.

    Pure and jit-able; ``decay`` may be a Python float or a traced scalar.
    """
    return optax.incremental_update(params, ema_params, step_size=1.0 - decay)
