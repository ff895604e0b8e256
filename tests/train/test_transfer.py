"""Transfer learning and knowledge distillation end to end on tiny 16x16 runs, plus unit checks.

One short source run (a 2-stage small CNN, 6 classes) is trained once per module; the transfer
target (10 classes) and the distillation student start from it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st

from jaxvision import losses
from jaxvision.config import ConfigError, apply_override, base_config, get_config, load_module
from jaxvision.experiment import load_experiment
from jaxvision.models import build_model
from jaxvision.train import loop, transfer
from jaxvision.train import state as state_lib
from jaxvision.train.checkpoint import Checkpointer
from jaxvision.train.parallel import Strategy
from jaxvision.train.state import TrainState
from jaxvision.train.step import make_train_step

CLS = "experiments/classification.py"
TINY = "tests/train/tiny_experiment.py"


def small(**model) -> ml_collections.ConfigDict:
    """The tiny test config with a 2-stage small CNN (batch norm: it has model state)."""
    config = get_config(f"{TINY}:tiny")
    config.model = ml_collections.ConfigDict(dict(name="small_cnn", widths=(4, 8), **model))
    config.data.procedural.num_train, config.data.procedural.num_eval = 64, 32
    config.train.steps, config.train.eval_every, config.train.checkpoint_every = 4, 0, 0
    return config


def raw_state(workdir: Path, step=None) -> dict:
    with Checkpointer(Path(workdir) / "checkpoints", async_save=False, max_to_keep=None) as ckpt:
        return ckpt.restore_raw(step).state


@pytest.fixture(scope="module")
def exp():
    return load_experiment(CLS)


@pytest.fixture(scope="module")
def quiet(exp):
    """The experiment without its end-of-run report (plots cost seconds, tests need none)."""
    return dataclasses.replace(exp, report=None)


@pytest.fixture(scope="module")
def source(tmp_path_factory, quiet):
    workdir = tmp_path_factory.mktemp("source")
    loop.train(small(), workdir, experiment=quiet, progress=False)
    variables, step = transfer.read_variables(workdir)
    assert step == 4
    return workdir, variables


# ------------------------------------------------------------------------------- transfer


def test_restore_raw_reads_any_tree_without_a_target(tmp_path):
    state = TrainState(step=np.int32(3), params={"a": {"kernel": np.arange(6.0).reshape(2, 3)}},
                       model_state={"batch_stats": {"a": {"mean": np.ones(3, np.float32)}}},
                       opt_state=[{"mu": np.zeros(2)}, None], rng=np.array([1, 2], np.uint32),
                       bad_step=np.int32(-1))
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(3, state, meta={"k": 1})
    with Checkpointer(tmp_path, async_save=False) as ckpt:
        restored = ckpt.restore_raw()
    assert restored.step == 3 and restored.meta == {"k": 1}
    raw = restored.state
    np.testing.assert_array_equal(raw["params"]["a"]["kernel"], state.params["a"]["kernel"])
    np.testing.assert_array_equal(raw["model_state"]["batch_stats"]["a"]["mean"], np.ones(3))
    np.testing.assert_array_equal(raw["rng"], [1, 2])
    assert int(raw["step"]) == 3 and raw["ema_params"] is None


def test_frozen_backbone_is_bit_identical_the_new_head_trains_and_resume_does_not_retransfer(
        tmp_path, quiet, source, monkeypatch):
    src_dir, src = source
    config = small(num_classes=10)
    config.transfer.workdir = str(src_dir)
    config.optim.freeze = ("^stage",)
    out = loop.train(config, tmp_path, experiment=quiet, progress=False, stop_at=2)
    assert out == {"preempted": True, "step": 2}

    def no_second_transfer(*args, **kwargs):
        raise AssertionError("a resumed run must not read the source again")
    monkeypatch.setattr(transfer, "read_variables", no_second_transfer)
    loop.train(config, tmp_path, experiment=quiet, progress=False)

    mid, final = raw_state(tmp_path, 2), raw_state(tmp_path)
    assert int(final["step"]) == 4
    backbone = [p for p in transfer.flat_paths(src["params"]) if p.startswith("stage")]
    assert len(backbone) == 6
    got = transfer.flat_paths(final["params"])
    for path in backbone:  # copied, then frozen: the source's bits exactly
        np.testing.assert_array_equal(got[path], transfer.flat_paths(src["params"])[path])
    assert got["head/kernel"].shape == (8, 10)   # re-initialized for 10 classes, not copied
    assert not np.array_equal(mid["params"]["head"]["kernel"], final["params"]["head"]["kernel"])


def test_selection_model_state_lr_multipliers_and_errors_on_a_built_run(exp, source):
    src_dir, src = source
    config = small(num_classes=10)
    config.optim.name, config.optim.lr = "sgd", 0.5
    config.optim.freeze, config.optim.lr_multipliers = ("^stage1_",), ("^stage2_=0.1",)
    run = loop.build(config, exp, abstract=True)  # shapes only: no init to compile
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), run.state.variables)
    fresh_state = state_lib.create(zeros, run.optimizer, jax.random.key(0), ema=False)
    fresh = transfer.flat_paths(zeros)
    source_flat = transfer.flat_paths(src)

    def block(**kw):
        return ml_collections.ConfigDict(dict(workdir=str(src_dir), checkpoint=None, include=(),
                                              exclude=("^head/",), model_state=True) | kw)

    state, note = transfer.transfer_state(block(), fresh_state, run.optimizer)
    assert "copied 10 of 12 leaves" in note and "(step 4)" in note
    for path, leaf in transfer.flat_paths(state.variables).items():
        want = fresh[path] if path.startswith("params/head/") else source_flat[path]
        np.testing.assert_array_equal(leaf, want, err_msg=path)
    assert "batch_stats/stage1_norm1/mean" in fresh  # model state was selected and copied
    # freeze and lr_multipliers act on the transferred parameters: one SGD step on unit gradients.
    grads = jax.tree.map(np.ones_like, state.params)
    updates, _ = run.optimizer.update(grads, state.opt_state, state.params)
    for path, u in transfer.flat_paths(updates).items():
        want = 0.0 if path.startswith("stage1_") else -0.05 if path.startswith("stage2_") else -0.5
        np.testing.assert_allclose(np.asarray(u), want, rtol=1e-6, err_msg=path)

    state, _ = transfer.transfer_state(block(include=("^stage2_",), model_state=False),
                                       fresh_state, run.optimizer)
    for path, leaf in transfer.flat_paths(state.variables).items():
        want = source_flat[path] if path.startswith("params/stage2_") else fresh[path]
        np.testing.assert_array_equal(leaf, want, err_msg=path)

    with pytest.raises(ConfigError,
                       match=r"'\^stem' matches no parameter path.*stage1_conv1/kernel"):
        transfer.transfer_state(block(include=("^stem",)), fresh_state, run.optimizer)
    with pytest.raises(ValueError, match=r"params/head/kernel: source shape \(8, 6\), this run's "
                                         r"shape \(8, 10\)"):
        transfer.transfer_state(block(exclude=()), fresh_state, run.optimizer)
    with pytest.raises(FileNotFoundError, match=r"transfer.workdir=.*no checkpoints"):
        transfer.transfer_state(block(workdir=str(src_dir / "nope")), fresh_state, run.optimizer)


NAMES = ("stem", "stage1", "stage2", "head")


@settings(max_examples=40, deadline=None)
@given(present=st.lists(st.sampled_from(NAMES), min_size=1, unique=True),
       include=st.lists(st.sampled_from(NAMES), unique=True),
       exclude=st.lists(st.sampled_from(NAMES), unique=True))
def test_merge_copies_exactly_the_selected_layers(present, include, exclude):
    target = {"params": {n: {"kernel": np.zeros((2, 3), np.float32)} for n in present},
              "batch_stats": {n: {"mean": np.zeros(3, np.float32)} for n in present}}
    source = jax.tree.map(lambda x: x + 1.0, target)
    source["params"]["extra"] = {"kernel": np.ones(5)}  # unused source leaves are fine
    inc, exc = [f"^{n}/" for n in include], [f"^{n}/" for n in exclude]
    expect = {n for n in present if (not include or n in include) and n not in exclude}
    if any(n not in present for n in include):
        with pytest.raises(ConfigError, match="matches no parameter path"):
            transfer.merge_variables(target, source, include=inc, exclude=exc)
        return
    if not expect:
        with pytest.raises(ConfigError, match="select no parameter"):
            transfer.merge_variables(target, source, include=inc, exclude=exc)
        return
    merged, copied = transfer.merge_variables(target, source, include=inc, exclude=exc)
    assert sorted(copied) == sorted(f"{c}/{n}/{leaf}" for n in expect
                                    for c, leaf in (("params", "kernel"), ("batch_stats", "mean")))
    for c in ("params", "batch_stats"):
        for n in present:
            assert np.all(jax.tree.leaves(merged[c][n])[0] == (1.0 if n in expect else 0.0))
    assert np.all(target["params"][present[0]]["kernel"] == 0)  # the target is not modified


def test_merge_names_leaves_missing_from_the_source():
    target = {"params": {"a": {"kernel": np.zeros(2)}, "b": {"kernel": np.zeros(2)}}}
    source = {"params": {"a": {"kernel": np.ones(2)}}}
    with pytest.raises(ValueError, match=r"not in the source: params/b/kernel"):
        transfer.merge_variables(target, source, exclude=())


def test_run_config_rebuilds_the_saved_config(source):
    src_dir, _ = source
    config = transfer.run_config(f"{CLS}:default", src_dir, ["train.steps=7"])
    saved = json.loads((Path(src_dir) / "config.json").read_text())
    assert config.model.widths == (4, 8) and config.data.procedural.image_size == 16
    assert config.train.steps == 7
    assert {k: v for k, v in saved["model"].items()} == {"name": "small_cnn", "widths": [4, 8]}


# ------------------------------------------------------------------------- transfer.map


class Detector(nn.Module):
    """A detector's layout: a zoo classifier nested as ``backbone`` plus a new ``box`` layer."""

    backbone: nn.Module
    outputs: int = 4

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        return nn.Dense(self.outputs, name="box")(self.backbone(x, train=train))


@pytest.fixture(scope="module")
def detector(source):
    """(fresh numpy variables, a fresh state, its optimizer) of a ``Detector`` nesting the
    source's model (same widths and class count, so every backbone leaf can be copied)."""
    _, src = source
    channels = src["params"]["stage1_conv1"]["kernel"].shape[2]
    model = Detector(build_model("small_cnn", widths=(4, 8), num_classes=6))
    variables = jax.device_get(model.init(jax.random.key(1), np.zeros((1, 16, 16, channels),
                                                                      np.float32)))
    optimizer = optax.sgd(0.1)
    state = state_lib.create(variables, optimizer, jax.random.key(0), ema=False)
    return variables, state, optimizer


def nested_block(src_dir, path_map, **kw):
    block = base_config().transfer
    block.workdir, block.include, block.exclude = str(src_dir), ("^backbone/",), ()
    block.map = path_map
    return ml_collections.ConfigDict(block.to_dict() | kw)


@pytest.mark.parametrize("override", ["transfer.map=^=backbone/",
                                      "transfer.map=('^=backbone/',)",
                                      "transfer.map=(('^', 'backbone/'),)",
                                      "transfer.map=[['^', 'backbone/']]"])
def test_map_nests_a_classification_run_under_backbone_params_and_batch_stats(
        source, detector, override):
    src_dir, src = source
    fresh, fresh_state, optimizer = detector
    config = base_config()
    apply_override(config, override)  # the command-line forms, as the CLI parses them
    block = nested_block(src_dir, config.transfer.map)
    state, note = transfer.transfer_state(block, fresh_state, optimizer)
    assert "copied 12 of 14 leaves" in note and "transfer.map" in note
    source_flat, fresh_flat = transfer.flat_paths(src), transfer.flat_paths(fresh)
    got = transfer.flat_paths(state.variables)
    assert set(got) == set(fresh_flat)
    for path, leaf in got.items():
        collection, rest = path.split("/", 1)
        if rest.startswith("box/"):  # not in the source: freshly initialized
            np.testing.assert_array_equal(leaf, fresh_flat[path], err_msg=path)
        else:  # backbone/<source path>, batch statistics included
            want = source_flat[f"{collection}/{rest.removeprefix('backbone/')}"]
            np.testing.assert_array_equal(leaf, want, err_msg=path)
    assert "batch_stats/backbone/stage1_norm1/mean" in got


def test_map_include_exclude_select_in_this_models_space_and_the_reverse_map(source, detector):
    src_dir, src = source
    fresh, _, _ = detector
    merged, copied = transfer.merge_variables(fresh, src, path_map=(("^", "backbone/"),),
                                              include=("^backbone/",),
                                              exclude=("^backbone/head/",))
    assert len(copied) == 10 and not any("head/" in c for c in copied)
    np.testing.assert_array_equal(merged["params"]["backbone"]["head"]["kernel"],
                                  fresh["params"]["backbone"]["head"]["kernel"])
    # The other way: a detector's backbone into a classifier ('pattern=' strips the prefix);
    # the source's box/ leaves are simply unused.
    zeros = jax.tree.map(np.zeros_like, src)
    back, copied = transfer.merge_variables(zeros, merged, path_map="^backbone/=", exclude=())
    assert len(copied) == 12
    fresh_flat, src_flat = transfer.flat_paths(fresh), transfer.flat_paths(src)
    for path, leaf in transfer.flat_paths(back).items():  # the head: the detector's fresh one
        want = fresh_flat[path.replace("params/", "params/backbone/")] \
            if path.startswith("params/head/") else src_flat[path]
        np.testing.assert_array_equal(leaf, want, err_msg=path)


def test_map_errors_collisions_patterns_that_map_nothing_and_a_missing_map(source, detector):
    src_dir, _ = source
    _, fresh_state, optimizer = detector
    with pytest.raises(ConfigError, match=r"transfer.map maps several source paths onto one path "
                       r"this run copies: params/backbone/stage1_conv1/kernel <- "
                       r"params/stage1_conv1/kernel and params/stage2_conv1/kernel"):
        transfer.transfer_state(
            nested_block(src_dir, (("^", "backbone/"), ("^backbone/stage2_", "backbone/stage1_"))),
            fresh_state, optimizer)
    with pytest.raises(ConfigError, match=r"transfer.map: pattern '\^stem/' \(-> 'backbone/stem/'\)"
                       r" matches no path of the source.*Source params: .*stage1_conv1/kernel"):
        transfer.transfer_state(
            nested_block(src_dir, ("^=backbone/", "^stem/=backbone/stem/")), fresh_state, optimizer)
    # No map: the missing paths are named, and the map that fixes them is suggested.
    with pytest.raises(ValueError, match=r"(?s)not in the source: params/backbone/.*add "
                                         r"transfer.map=\(\('\^', 'backbone/'\),\)"):
        transfer.transfer_state(nested_block(src_dir, ()), fresh_state, optimizer)


def test_map_collisions_on_unselected_paths_are_fine():
    target = {"params": {"w": {"kernel": np.zeros(2)}, "x": {"kernel": np.zeros(2)}}}
    source = {"params": {n: {"kernel": np.full(2, i + 1.0)} for i, n in enumerate("wxz")}}
    with pytest.raises(ConfigError, match=r"params/x/kernel <- params/x/kernel and "
                                          r"params/z/kernel.*transfer.exclude"):
        transfer.merge_variables(target, source, path_map=(("^z/", "x/"),), exclude=())
    merged, copied = transfer.merge_variables(target, source, path_map=(("^z/", "x/"),),
                                              exclude=("^x/",))
    assert copied == ["params/w/kernel"] and np.all(merged["params"]["x"]["kernel"] == 0)


@pytest.mark.parametrize("entries, message", [
    (("^", "backbone/"), r"entry '\^' must be a \(pattern, replacement\) pair.*outer tuple"),
    ((("^", "a", "b"),), r"must be a \(pattern, replacement\) pair of strings"),
    (("=backbone/",), r"needs a non-empty pattern"),
    ((("(", "x"),), r"transfer.map: '\(' is not a valid regular expression"),
    ((("^(stage)", "\\2"),), r"replacement '\\\\2' of pattern '\^\(stage\)' is invalid"),
])
def test_map_entries_that_are_not_pairs_or_strings_are_rejected(entries, message):
    target = {"params": {"stage": {"kernel": np.zeros(2)}}}
    with pytest.raises(ConfigError, match=message):
        transfer.merge_variables(target, target, path_map=entries, exclude=())


def test_map_forms_parse_alike():
    want = [("^stage", "backbone/stage"), ("^head/", "")]
    for form in ((("^stage", "backbone/stage"), ("^head/", "")),
                 [["^stage", "backbone/stage"], ["^head/", ""]],
                 ("^stage=backbone/stage", "^head/=")):
        assert [(p.pattern, r) for p, r in transfer.parse_map(form)] == want
    assert [(p.pattern, r) for p, r in transfer.parse_map("a(?=b)=c")] == [("a(?=b)", "c")]
    assert transfer.parse_map(()) == transfer.parse_map(None) == transfer.parse_map("") == []


def test_map_end_to_end_a_run_of_a_nested_model_starts_from_the_classifier(
        tmp_path, quiet, source):
    src_dir, src = source

    def nested_model(config, info, *, axis_name=None):
        return Detector(quiet.build_model(config, info), outputs=info.num_classes)

    config = small()
    config.transfer.workdir, config.transfer.exclude = str(src_dir), ("^box/",)
    config.transfer.map = ("^=backbone/",)
    config.optim.freeze = ("^backbone/",)
    config.train.steps = 1
    loop.train(config, tmp_path, experiment=dataclasses.replace(quiet, build_model=nested_model),
               progress=False)
    got = transfer.flat_paths(raw_state(tmp_path)["params"])
    want = transfer.flat_paths(src["params"])
    assert len(got) == len(want) + 2
    for path, leaf in want.items():  # copied under backbone/, then frozen: the source's bits
        np.testing.assert_array_equal(got[f"backbone/{path}"], leaf, err_msg=path)


# --------------------------------------------------------------------------- distillation


_distill = jax.jit(losses.distillation_loss)
_distill_grad = jax.jit(jax.grad(lambda s, t, temp: jnp.sum(losses.distillation_loss(s, t, temp))))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), shape=st.sampled_from([(1, 2), (4, 5)]),
       scale=st.floats(0.0, 6.0), temperature=st.floats(0.5, 8.0))
def test_distillation_loss_matches_numpy_and_its_gradient_is_t_times_the_prob_gap(
        seed, shape, scale, temperature):
    r = np.random.default_rng(seed)
    student, teacher = r.normal(0, scale, shape), r.normal(0, scale, shape)

    def log_softmax(z):
        z = z / temperature
        return z - np.log(np.sum(np.exp(z - z.max(-1, keepdims=True)), -1, keepdims=True)) \
            - z.max(-1, keepdims=True)
    lt, ls = log_softmax(teacher), log_softmax(student)
    want = temperature**2 * np.sum(np.exp(lt) * (lt - ls), -1)
    s32, t32 = jnp.asarray(student, jnp.float32), jnp.asarray(teacher, jnp.float32)
    np.testing.assert_allclose(np.asarray(_distill(s32, t32, temperature)), want,
                               rtol=2e-4, atol=2e-5)
    grad = _distill_grad(s32, t32, temperature)
    np.testing.assert_allclose(np.asarray(grad), temperature * (np.exp(ls) - np.exp(lt)),
                               rtol=2e-3, atol=2e-5)


def student(src_dir: Path, *overrides: str) -> ml_collections.ConfigDict:
    config = small()
    config.model.widths = (4,)  # a smaller student than its teacher
    config.distill = load_module(CLS).distill_config()
    config.distill.teacher_workdir = str(src_dir)
    config.distill.teacher_config = f"{CLS}:default"  # its config.json fills in the tiny model
    config.distill.temperature, config.distill.alpha = 2.0, 0.7
    config.train.steps, config.train.log_every = 8, 2
    from jaxvision.config import apply_override
    for o in overrides:
        apply_override(config, o)
    return config


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, quiet, source):
    workdir = tmp_path_factory.mktemp("student")
    loop.train(student(source[0]), workdir, experiment=quiet, progress=False)
    return workdir


def test_distillation_run_lowers_the_soft_loss_and_does_not_checkpoint_the_teacher(distilled):
    records = [r for r in loop.read_metrics(distilled) if r["split"] == "train"]
    soft = [r["distill_loss"] for r in records]
    assert len(soft) == 4 and all(np.isfinite(soft))
    assert soft[-1] < soft[0]
    state = raw_state(distilled)
    assert state.get("aux") is None
    assert transfer.flat_paths(state["params"])["head/kernel"].shape == (4, 6)


def test_teacher_variables_are_step_inputs_and_pmap_matches_jit(exp, source):
    config = student(source[0])
    run = loop.build(config, exp)
    assert set(run.setup.data) == {"teacher"} and "teacher" in run.setup.static
    host = jax.device_get(run.state)  # steps donate their input state: start from host copies
    teacher = jax.device_get(run.setup.data)
    batch = next(iter(run.train_loader))
    jit = run.strategy
    step = jit.compile_train(make_train_step(exp, run.model, run.optimizer, config, None,
                                             run.setup.static))
    new, m1 = step(jit.put_state(host), jit.put_batch(batch), jit.put_state(teacher))
    # The same compiled program with another teacher: another soft loss, no retrace.
    louder = jax.tree.map(np.copy, teacher)
    louder["teacher"]["params"]["head"]["kernel"] *= 3
    _, m2 = step(jit.put_state(host), jit.put_batch(batch), jit.put_state(louder))
    assert step._cache_size() == 1
    assert float(m1["distill_loss"][0]) != pytest.approx(float(m2["distill_loss"][0]), rel=1e-3)
    assert float(m1["loss"][0]) == float(m2["loss"][0])  # the hard loss does not see the teacher
    # pmap: the teacher is replicated like the state; two devices give the jit step's result.
    pmap = Strategy("pmap", jax.devices()[:2])
    pstep = pmap.compile_train(make_train_step(exp, run.model, run.optimizer, config,
                                               pmap.axis_name, run.setup.static))
    pnew, pm = pstep(pmap.put_state(host), pmap.put_batch(batch), pmap.put_state(teacher))
    pnew, pm = pmap.unreplicate(pnew), pmap.unreplicate(pm)
    for x, y in zip(jax.tree.leaves(new.params), jax.tree.leaves(pnew.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-4, atol=2e-6)
    np.testing.assert_allclose(float(pm["distill_loss"][0]), float(m1["distill_loss"][0]),
                               rtol=1e-5)
