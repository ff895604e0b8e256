"""The training loop every experiment runs through: ``train(config, workdir)``.

It builds the data, the model and the optimizer from the config, resumes from the newest usable
checkpoint in ``workdir`` (parameters, optimizer and model state, step, key and the data
iterator's position, so stopping and resuming gives the same parameters as never stopping), runs
the compiled step, evaluates over the whole eval split, saves checkpoints, and logs.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import jax
import numpy as np

from jaxvision import config as config_lib
from jaxvision import optim
from jaxvision.data.pipeline import make_loader
from jaxvision.config import ConfigError, split_spec
from jaxvision.data.source import SourceInfo, build_source
from jaxvision.evaluators import Evaluator, build_evaluators
from jaxvision.evaluators import metric_names as evaluator_metric_names
from jaxvision.experiment import Experiment, Setup, resolve_experiment
from jaxvision.metrics import Accumulator
from jaxvision.train import state as state_lib
from jaxvision.train.checkpoint import Checkpointer
from jaxvision.train.lock import WorkdirLock
from jaxvision.train.logs import MetricsWriter, read_metrics, truncate_metrics
from jaxvision.train.parallel import Strategy
from jaxvision.train.step import make_eval_step, make_train_step


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, config mismatch on resume); says why and what to do."""


@dataclasses.dataclass
class Run:
    """Everything built from a config, shared by train, eval, bench and the tools."""

    config: Any
    exp: Experiment
    strategy: Strategy
    info: SourceInfo
    model: Any
    optimizer: Any
    state: state_lib.TrainState          # on the host, unreplicated
    train_loader: Any
    evaluators: list[Evaluator]
    eval_loaders: dict[str, Any]         # evaluator name -> its eval-mode loader
    metric_names: list[dict[str, str]]   # per evaluator: its key -> the name it is logged under
    setup: Setup                         # the experiment's, built once on the host
    setup_data: Any = None               # setup.data placed on the devices (None when there is none)
    _eval_steps: dict = dataclasses.field(default_factory=dict)   # evaluator index or fn -> step

    @property
    def eval_loader(self) -> Any:
        """The first evaluator's loader (the eval split of a single-evaluator run)."""
        return self.eval_loaders[self.evaluators[0].name]

    def eval_step(self, index: int) -> Any:
        """The compiled eval step of evaluator ``index`` (compiled on first use)."""
        if index not in self._eval_steps:
            ev = self.evaluators[index]
            fn = ev.device_fn(self.exp, self.model, self.config, self.setup.static)
            self._eval_steps[index] = self.strategy.compile_eval(
                make_eval_step(fn, ev.kind, self.strategy.axis_name), ev.kind)
        return self._eval_steps[index]

    def logged_names(self) -> list[str]:
        return [n for names in self.metric_names for n in names.values()]


def build(config: Any, exp: Experiment, sources: tuple[Any, Any] | None = None, *,
          abstract: bool = False) -> Run:
    """Builds data, model, optimizer, evaluators, the experiment's setup and a fresh state
    (nothing compiled, nothing restored).

    With ``abstract`` the state holds only shapes and dtypes (``jax.ShapeDtypeStruct``), a
    restore target that costs no compilation.

    ``sources`` = (train, eval) sources replaces the training split and the split of every
    evaluator reading ``data.eval_split`` (e.g. the folds of ``crossval``); transforms and
    loading still follow ``config.data``.
    """
    config_lib.check_config(config)
    n = int(config.parallel.get("num_devices", 0))
    if n and jax.process_count() > 1:
        raise TrainingError("parallel.num_devices only applies to single-process runs; leave it 0.")
    if str(config.parallel.strategy) == "pmap" and jax.process_count() > 1:
        # Reading a pmap result back (unreplicate) is then itself a cross-process computation
        # that can deadlock; jit gives the same numbers with one program over every device.
        raise TrainingError(f"parallel.strategy='pmap' runs in one process only, and this job has "
                            f"{jax.process_count()} processes; use --config.parallel.strategy=jit "
                            "(the default: one program over the devices of every process).")
    if n > jax.device_count():
        raise TrainingError(f"parallel.num_devices={n} but only {jax.device_count()} devices exist.")
    strategy = Strategy(str(config.parallel.strategy), jax.devices()[:n] if n else None)
    strategy.check_batch(int(config.train.batch_size))
    evaluators = build_evaluators(config)
    for ev in evaluators:
        key = (f"evals.{ev.name}.batch_size" if config.get("evals") and
               int(config.evals[ev.name].get("batch_size", 0)) else "train.eval_batch_size")
        strategy.check_batch(ev.batch_size, key)
    data = config.data
    train_source = sources[0] if sources is not None else build_source(data, data.train_split)
    split_sources = {str(data.eval_split): sources[1]} if sources is not None else {}
    train_loader = make_loader(data, data.train_split, mode="train", source=train_source,
                               global_batch=int(config.train.batch_size), seed=int(config.seed))
    eval_loaders = {}
    for ev in evaluators:
        if ev.split not in split_sources:
            split_sources[ev.split] = build_source(data, ev.split)
        eval_loaders[ev.name] = make_loader(data, ev.split, mode="eval",
                                            source=split_sources[ev.split],
                                            global_batch=ev.batch_size, seed=int(config.seed))
    model = exp.build_model(config, train_source.info, axis_name=strategy.axis_name)
    optimizer = optim.make_optimizer(config.optim, int(config.train.steps))
    setup = exp.build_setup(config, train_source.info)
    sample = next(iter(eval_loaders[evaluators[0].name]))
    sample = {k: v[:1] for k, v in sample.items()}
    key = jax.random.key(int(config.seed))
    init_key, state_key = jax.random.split(key)
    ema = float(config.optim.get("ema_decay", 0.0)) > 0
    # The abstract state calls the same jitted init as the real one below, so jax traces the
    # model's init once for both.
    init = jax.jit(functools.partial(exp.init_variables, config, model))
    abstract_state = jax.eval_shape(lambda s, k1, k2: state_lib.create(
        init(s, k1), optimizer, k2, ema), sample, init_key, state_key)
    names = _metric_names(config, exp, model, evaluators, eval_loaders, abstract_state, setup,
                          sample)
    run = Run(config, exp, strategy, train_source.info, model, optimizer, abstract_state,
              train_loader, evaluators, eval_loaders, names, setup)
    run.setup_data = strategy.put_state(setup.data) if setup.data is not None else None
    if abstract:
        return run
    variables = jax.device_get(init(sample, init_key))
    run.state = state_lib.create(variables, optimizer, state_key, ema)
    return run


def inference_run(config: Any, exp: Experiment, info: SourceInfo, variables: dict
                  ) -> tuple[Run, Any]:
    """A ``Run`` that only predicts (no data, optimizer or evaluators) with ``variables`` (e.g.
    ``transfer.read_variables``) on its device mesh; returns ``(run, device_state)`` for
    ``predict(run, device_state, fn, batches)``."""
    n = int(config.parallel.get("num_devices", 0))
    strategy = Strategy(str(config.parallel.strategy), jax.devices()[:n] if n else None)
    model = exp.build_model(config, info, axis_name=strategy.axis_name)
    setup = exp.build_setup(config, info)
    state = state_lib.TrainState(
        step=np.zeros((), np.int32), params=variables["params"],
        model_state={k: v for k, v in variables.items() if k != "params"}, opt_state=(),
        rng=np.zeros((2,), np.uint32), ema_params=None, bad_step=np.full((), -1, np.int32))
    run = Run(config, exp, strategy, info, model, optimizer=None, state=state, train_loader=None,
              evaluators=[], eval_loaders={}, metric_names=[], setup=setup)
    run.setup_data = strategy.put_state(setup.data) if setup.data is not None else None
    return run, strategy.put_state(state)


def _metric_names(config: Any, exp: Experiment, model: Any, evaluators: list[Evaluator],
                  loaders: dict, state: Any, setup: Setup, sample: dict) -> list[dict[str, str]]:
    """Traces every evaluator once (no compile) for its metric keys, resolves name clashes, and
    checks ``train.best_metric`` against the result. ``sample``: one example of the first
    evaluator's split (the others' splits are read only when they differ)."""
    keys = []
    for ev in evaluators:
        batch = sample
        if ev.split != evaluators[0].split:
            batch = {k: v[:1] for k, v in next(iter(loaders[ev.name])).items()}
        fn = ev.device_fn(exp, model, config, setup.static)
        shapes = jax.eval_shape(lambda st, b, d: fn(st.eval_variables(), b, d), state, batch,
                                setup.data)
        keys.append(ev.metric_names(shapes))
    names = evaluator_metric_names(keys, [ev.name for ev in evaluators])
    best = str(config.train.best_metric or "")
    logged = [n for m in names for n in m.values()]
    if best and best not in logged:
        close = difflib.get_close_matches(best, logged, n=3)
        raise ConfigError(f"train.best_metric={best!r} is not a metric of this run's evaluators; "
                          f"they log: {', '.join(logged)}."
                          + (f" Did you mean {close[0]!r}?" if close else "")
                          + " Set --config.train.best_metric to one of them ('' = none).")
    return names


def _outputs(run: Run, step: Any, device_state: Any, loader: Any, kind: str) -> Iterator[dict]:
    """Per batch of ``loader``: the eval step's outputs on the host (sums as one copy;
    per-example outputs gathered from every process with the padded examples dropped)."""
    strategy = run.strategy
    for batch in loader:
        out = step(device_state, strategy.put_batch(batch), run.setup_data)
        if kind == "sums":
            yield strategy.host(out)
        else:
            host = strategy.gather(out)
            keep = host.pop("valid").astype(bool)
            yield jax.tree.map(lambda v: v[keep], host)


def evaluate(run: Run, device_state: Any, which: Sequence[int] | None = None) -> dict:
    """Runs the evaluators (all, or those at the indices ``which``) over their whole splits:
    every example once, padding dropped. Returns their metrics by their logged names."""
    results: dict = {}
    for i, ev in enumerate(run.evaluators):
        if which is not None and i not in which:
            continue
        ev.reset()
        loader = run.eval_loaders[ev.name]
        dropped_before = getattr(loader, "dropped_boxes", 0)
        for out in _outputs(run, run.eval_step(i), device_state, loader, ev.kind):
            ev.update(out)
        names = run.metric_names[i]
        for key, value in ev.compute().items():
            results[names.get(key, key)] = value
        skipped = _skipped(loader)
        if skipped:
            # Bad examples replaced under data.bad_examples='skip' are not in the metrics.
            key = "skipped_examples" if "skipped_examples" not in results else f"{ev.name}/skipped_examples"
            results[key] = float(skipped)
        dropped = _sum_processes(getattr(loader, "dropped_boxes", 0) - dropped_before)
        if dropped:
            # The box policy (jaxvision/data/example.py) dropped boxes: the metrics never saw them.
            key = "dropped_boxes" if "dropped_boxes" not in results else f"{ev.name}/dropped_boxes"
            results[key] = float(dropped)
    return results


def _skipped(loader: Any) -> int:
    """Bad examples of ``loader``'s split skipped so far, over every process."""
    return _sum_processes(loader.skipped().count if hasattr(loader, "skipped") else 0)


def _sum_processes(count: int) -> int:
    """``count`` summed over every process of the job."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        count = int(np.sum(multihost_utils.process_allgather(np.int32(count))))
    return int(count)


def predict(run: Run, device_state: Any, fn: Callable, loader: Any) -> dict[str, np.ndarray]:
    """Every example of ``loader`` (an eval-mode loader) through ``fn(variables, batch,
    setup_data) -> {name: (N, ...)}`` on the run's device mesh, as evaluators see it: returns
    ``{name: (num_examples, ...)}`` numpy arrays in the loader's order (padding dropped), on
    every process. For tools (ensemble, probe) that need the raw per-example outputs. Calls
    with the same ``fn`` reuse its compiled step (e.g. one per checkpoint of an ensemble)."""
    if fn not in run._eval_steps:
        def with_valid(variables, batch, setup_data):
            return {**fn(variables, batch, setup_data), "valid": batch["valid"]}
        run._eval_steps[fn] = run.strategy.compile_eval(
            make_eval_step(with_valid, "gather", run.strategy.axis_name), "gather")
    step = run._eval_steps[fn]
    chunks = list(_outputs(run, step, device_state, loader, "gather"))
    return jax.tree.map(lambda *parts: np.concatenate(parts), *chunks)


class _Preemption:
    """Turns SIGTERM, and a first Ctrl-C (SIGINT), into a flag the loop checks between steps
    (save, then exit cleanly); a second Ctrl-C aborts at once (KeyboardInterrupt).

    With several processes they must all stop after the same step (the save is collective), so
    JAX's preemption sync replaces the local handlers: the runtime catches SIGTERM on any process
    and ``check(step)`` turns True on every process at the same step (launchers turn Ctrl-C into
    SIGTERM for every process).
    """

    def __init__(self):
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict = {}
        self._synced = jax.process_count() > 1

    def __enter__(self):
        if not self._synced and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def check(self, step: int) -> bool:
        """Whether to save and stop after ``step``; call it after every step, on every process."""
        if self._synced and not self.requested:
            from jax.experimental import multihost_utils
            try:
                self.requested = multihost_utils.reached_preemption_sync_point(step)
            except RuntimeError:  # jax_enable_preemption_service is off: SIGTERM just ends the job
                self._synced = False
            if self.requested:
                self.signal_name = "SIGTERM"
        return self.requested

    def _handle(self, signum, frame):
        del frame
        if signum == signal.SIGINT:
            if self.requested:
                raise KeyboardInterrupt
            print("\n[jaxvision] Ctrl-C: saving a checkpoint after this step, then stopping "
                  "(Ctrl-C again to abort without saving)", file=sys.stderr, flush=True)
            self.signal_name = "Ctrl-C (SIGINT)"
        else:
            self.signal_name = "SIGTERM"
        self.requested = True

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


# Keys a resumed run may change without --force: they do not change what is trained.
_FREE_TRAIN_KEYS = ("steps", "plots")


def _check_resume_config(config: Any, meta: dict | None, force: bool) -> None:
    if not meta or "config" not in meta:
        return
    new = config_lib.to_dict(config)
    old = config_lib.migrate(dict(meta["config"]), new)
    for key in _FREE_TRAIN_KEYS:
        old.get("train", {}).pop(key, None)
        new.get("train", {}).pop(key, None)
    lines = config_lib.diff(old, new)
    if lines and not force:
        raise ConfigError("the workdir holds a run with a different config:\n  " + "\n  ".join(lines)
                            + "\nUse another --workdir, undo the change, or pass --force to resume "
                            "anyway (only " + " and ".join(f"train.{k}" for k in _FREE_TRAIN_KEYS)
                            + " may change freely).")


def _restore(run: Run, ckpt: Checkpointer, which: str | int | None = None):
    restored = ckpt.restore(run.state, step=which)
    if jax.process_count() > 1:
        # On the host, as a fresh state is: restored arrays sit on this process's devices, and
        # placing them on the global mesh would be a cross-host transfer (unsupported on CPU).
        return dataclasses.replace(restored, state=jax.device_get(restored.state))
    return restored


def train(config: Any, workdir: str | Path, *, experiment: Experiment | str | None = None,
          force: bool = False, progress: bool = True, stop_at: int | None = None,
          sources: tuple[Any, Any] | None = None,
          on_eval: Callable[[int, dict], bool] | None = None) -> dict:
    """Trains (or resumes) ``config`` in ``workdir``; returns the final eval metrics.

    ``stop_at`` interrupts the run after that step with a checkpoint, as a pre-emption would
    (for time-sliced jobs and resume tests); training again in ``workdir`` continues it, and
    the result is ``{"preempted": True, "step": ...}``.

    ``on_eval(step, metrics)`` is called after each evaluation before the last (with its
    checkpoint written); returning True stops the run there (a sweep's pruning) and the result
    is those metrics with ``"stopped": True`` and ``"step"``.

    Stops early, with a checkpoint, on SIGTERM; raises ``TrainingError`` on a non-finite loss or
    gradient (the last checkpoint, written before that step, stays intact). ``sources``: see
    ``build``.
    """
    workdir = Path(workdir)
    exp = resolve_experiment(config, experiment)
    recorded = str(config.get("experiment") or "")
    if split_spec(recorded)[0] != split_spec(exp.spec)[0]:
        # The workdir must say which task it holds: the experiment that trains it, also when a
        # config built in Python names none or another one.
        config = copy.deepcopy(config)
        with config.unlocked():
            config.experiment = f"{split_spec(exp.spec)[0]}:{split_spec(recorded or exp.spec)[1]}"
    with WorkdirLock(workdir):   # first: a second trainer stops before building anything
        run = build(config, exp, sources)
        return _train(run, workdir, force=force, progress=progress, stop_at=stop_at,
                      on_eval=on_eval)


def _train(run: Run, workdir: Path, *, force: bool, progress: bool, stop_at: int | None,
           on_eval: Callable[[int, dict], bool] | None = None) -> dict:
    config, exp = run.config, run.exp
    is_main = jax.process_index() == 0
    tc = config.train
    ckpt = Checkpointer(workdir / "checkpoints", max_to_keep=int(tc.keep_checkpoints),
                        best_metric=str(tc.best_metric) or None, best_mode=str(tc.best_mode),
                        async_save=bool(tc.async_checkpoint))
    meta = {"config": config_lib.to_dict(config), "config_hash": config_lib.config_hash(config)}
    data_state, restored_step = None, None
    transfer_note = ""
    host_state = run.state
    total = int(tc.steps)
    if ckpt.latest_step() is not None:
        _check_resume_config(config, ckpt.restore_meta(), force)
        restored = _restore(run, ckpt)
        host_state, data_state = restored.state, restored.data_state
        restored_step = restored.step
        if restored_step > total:
            ckpt.close()
            raise ConfigError(
                f"the run in {workdir} is already at step {restored_step}, past train.steps="
                f"{total}; raise --config.train.steps to continue it, or use another --workdir.")
        final = [r for r in read_metrics(workdir) if r.get("split") == "eval"
                 and r.get("step") == total]
        if restored_step == total and final:
            ckpt.close()
            if is_main:
                print(f"[jaxvision] nothing to do: the run in {workdir} finished its {total} "
                      "steps (raise --config.train.steps to continue it)", file=sys.stderr)
            return {k: v for k, v in final[-1].items() if k not in ("step", "split", "time")}
    elif config.get("transfer") is not None and config.transfer.workdir:
        from jaxvision.train import transfer  # only a fresh run starts from another run's weights
        host_state, transfer_note = transfer.transfer_state(config.transfer, host_state,
                                                            run.optimizer)
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)
        tmp = workdir / "config.json.tmp"
        tmp.write_text(json.dumps(meta["config"], indent=2))
        os.replace(tmp, workdir / "config.json")   # never a half-written config.json
        # What `predict` and `export` need to run the model without its data set.
        from jaxvision import inference
        inference.write_model_info(workdir, inference.model_info_of(
            config.data, run.eval_loader.source, run.info))
    start = int(host_state.step)
    if is_main and start:
        # The logs describe the state on disk: records after the restored step (written by a
        # run that stopped later than its last usable checkpoint) are dropped.
        truncate_metrics(workdir, start)
    writer = MetricsWriter(workdir, total_steps=total, initial_step=start, enabled=is_main,
                           progress=progress)
    if start:
        writer.message(f"resumed from step {start} in {workdir}")
    elif transfer_note:
        writer.message(transfer_note)
    strategy = run.strategy
    train_step = strategy.compile_train(
        make_train_step(exp, run.model, run.optimizer, config, strategy.axis_name,
                        run.setup.static))
    device_state = strategy.put_state(host_state)
    it = run.train_loader.iterator(data_state)
    pending: list = []
    results: dict = {}
    best, since_best, stopped_early = None, 0, False
    patience = int(tc.early_stopping_patience)
    sign = 1.0 if tc.best_mode == "max" else -1.0

    def check_finite() -> None:
        bad = int(strategy.host(device_state.bad_step))
        if bad >= 0:
            last = ckpt.latest_step()
            raise TrainingError(f"loss or gradient is not finite at step {bad}; training stopped. "
                                f"The last checkpoint ({'step ' + str(last) if last is not None else 'none'}) "
                                "is intact. Lower optim.lr, add optim.grad_clip_norm, or check the data.")

    # The step actually restored, not latest_step(): a damaged newest checkpoint is skipped on
    # restore and must be written again when training reaches its step.
    saved = {"step": restored_step}

    def save(step: int, metrics: dict | None = None, force_save: bool = False) -> None:
        check_finite()
        if saved["step"] == step:
            return
        saved["step"] = step
        scalars = {k: float(v) for k, v in (metrics or {}).items() if np.ndim(v) == 0}
        if not tc.best_metric or tc.best_metric not in scalars:
            scalars = None  # a checkpoint without eval metrics never competes for 'best'
        ckpt.save(step, strategy.unreplicate(device_state), data_state=it.get_state(),
                  meta=meta, metrics=scalars, force=force_save)

    def flush_train(step: int) -> None:
        if not pending:
            return
        acc = Accumulator()
        for m in pending:
            acc.add(strategy.host(m))
        pending.clear()
        record = acc.result()
        lr = strategy.host(optim.injected_hyperparams(device_state.opt_state)).get("learning_rate")
        if lr is not None:
            record["lr"] = float(lr)
        dropped = getattr(run.train_loader, "dropped_boxes", 0)
        if dropped:
            # The box policy (jaxvision/data/example.py): boxes clipped or cropped away, counted
            # by this process since it started.
            record["dropped_boxes"] = float(dropped)
        writer.write(step, "train", record)

    def stop_with_checkpoint(step: int, message: str) -> None:
        """Ends the run before train.steps: logs, a checkpoint of this step (kept if an
        evaluation just wrote it), and everything closed."""
        flush_train(step)
        save(step, force_save=True)
        ckpt.wait()
        writer.message(message)
        writer.close()
        ckpt.close()

    step = start
    with _Preemption() as preempt:
        try:
            while step < total:
                batch = strategy.put_batch(next(it))
                device_state, metrics = train_step(device_state, batch, run.setup_data)
                pending.append(metrics)
                step += 1
                writer.advance(1)
                if step % int(tc.log_every) == 0 or step == total:
                    check_finite()
                    flush_train(step)
                due = [i for i, ev in enumerate(run.evaluators)
                       if ev.every > 0 and step % ev.every == 0 and step < total]
                do_eval = bool(due)
                if do_eval:
                    check_finite()
                    results = evaluate(run, device_state, due)
                    writer.write(step, "eval", results)
                    if tc.best_metric and tc.best_metric in results:
                        value = sign * results[tc.best_metric]
                        if best is None or value > best:
                            best, since_best = value, 0
                        else:
                            since_best += 1
                # The last step's checkpoint is written after the final evaluation, with its
                # metrics, so that it can be the 'best' one.
                if step < total and (do_eval or (int(tc.checkpoint_every) > 0
                                                 and step % int(tc.checkpoint_every) == 0)):
                    save(step, results if do_eval else None)
                if do_eval and on_eval is not None and on_eval(step, results):
                    stop_with_checkpoint(step, f"stopped at step {step} by the evaluation callback")
                    return {**results, "stopped": True, "step": step}
                if patience and since_best >= patience:
                    writer.message(f"early stopping at step {step}: no improvement of "
                                   f"{tc.best_metric} in {patience} evaluations")
                    stopped_early = True
                    break
                if preempt.check(step) or (stop_at is not None and step >= stop_at and step < total):
                    why = preempt.signal_name or f"stop_at={stop_at}"
                    stop_with_checkpoint(step, f"{why}: saved a checkpoint at step {step} and stopped")
                    return {"preempted": True, "step": step}
            check_finite()
            flush_train(step)
            if stopped_early and ckpt.best_step() is not None:
                ckpt.wait()
                restored = _restore(run, ckpt, "best")
                device_state = strategy.put_state(restored.state)
                writer.message(f"restored the best parameters (step {restored.step})")
            results = evaluate(run, device_state)
            writer.write(step, "eval", results)
            save(step, results, force_save=True)
            ckpt.wait()
        finally:
            writer.close()
    ckpt.close()
    if is_main:
        finish(run, workdir, results)
    if jax.process_count() > 1:
        # The others wait here for process 0's plots and report: at exit they would wait only
        # JAXVISION_SHUTDOWN_TIMEOUT for it and then fail the job.
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("jaxvision_train_finished")
    return results


def finish(run: Run, workdir: Path, results: dict) -> None:
    """End-of-training outputs on process 0: curves PNG (unless ``train.plots`` is off) and the
    experiment's own report."""
    from jaxvision import viz
    from jaxvision.experiment import plots
    records = read_metrics(workdir)
    if records and plots(run.config):
        viz.plot_curves(records, str(workdir / "curves.png"), title=str(workdir.name))
    if run.exp.report is not None:
        run.exp.report(run.config, workdir, results, run.info)


def restore_checkpoints(run: Run, workdir: str | Path, checkpoints: Sequence[Any]) -> list:
    """Restores each of ``checkpoints`` ('latest' or None, 'best', a step) of the run in
    ``workdir`` into ``run.state``'s structure; returns the ``Restored`` records in order."""
    config = run.config
    directory = Path(workdir) / "checkpoints"
    if not directory.is_dir():
        # Reading must not create folders in someone's workdir (orbax would).
        raise FileNotFoundError(f"no checkpoints in {directory}; train first with `python -m "
                                "jaxvision train --config ... --workdir ...`.")
    ckpt = Checkpointer(directory, async_save=False, max_to_keep=None,
                        best_metric=str(config.train.best_metric) or None,
                        best_mode=str(config.train.best_mode))
    try:
        if ckpt.latest_step() is None:
            raise FileNotFoundError(f"no checkpoint in {Path(workdir) / 'checkpoints'}; train "
                                    "first with `python -m jaxvision train --config ... "
                                    "--workdir ...`.")
        out = []
        for which in checkpoints:
            which = None if which in (None, "latest") else which
            which = int(which) if isinstance(which, str) and which.isdigit() else which
            out.append(_restore(run, ckpt, which))
        return out
    finally:
        ckpt.close()


def evaluate_checkpoint(config: Any, workdir: str | Path, *, checkpoint: str = "latest",
                        experiment: Experiment | str | None = None) -> dict:
    """Restores ``checkpoint`` ('latest', 'best' or a step) from ``workdir`` and runs every
    evaluator of ``config`` on it; returns their metrics and ``step``."""
    run = build(config, resolve_experiment(config, experiment), abstract=True)
    (restored,) = restore_checkpoints(run, workdir, [checkpoint])
    results = evaluate(run, run.strategy.put_state(restored.state))
    results["step"] = int(restored.step)
    return results
