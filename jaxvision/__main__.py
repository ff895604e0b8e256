"""The command line: ``python -m jaxvision <command> ...``.

Commands: ``train``, ``eval``, ``list``, ``summary``, ``bench``, ``data prepare``, ``data show``,
``ablate``, ``sweep``, ``crossval``, ``probe``, ``ensemble``, ``predict``, ``explain``, ``export``, ``import-weights``.
Config overrides follow the other flags as ``--config.<key>=<value>`` (or ``--config.<key> <value>``).
Commands that report numbers print one JSON object on the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

import numpy as np


def _split_overrides(argv: Sequence[str], prefix: str = "--config.") -> tuple[list[str], list[str]]:
    """Separates ``--config.k=v`` / ``--config.k v`` overrides (or another ``prefix``'s) from
    the other arguments."""
    rest, overrides = [], []
    argv = list(argv)
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith(prefix):
            if "=" in arg:
                overrides.append(arg[2:])
            elif i + 1 < len(argv):
                overrides.append(f"{arg[2:]}={argv[i + 1]}")
                i += 1
            else:
                raise ValueError(f"{arg} needs a value ({prefix}KEY=VALUE)")
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text}")
    return value


def _run_args(p: argparse.ArgumentParser) -> None:
    """The flags naming a trained run: ``--workdir``, ``--config``, ``--checkpoint``."""
    p.add_argument("--workdir", required=True)
    p.add_argument("--config", default=None, help="default: the config the workdir recorded")
    p.add_argument("--checkpoint", default="latest", help="latest, best, or a step number")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jaxvision", description=__doc__.splitlines()[0],
                                epilog="Config overrides: --config.KEY=VALUE after the flags, e.g. "
                                       "--config.train.steps=100.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train (or resume) an experiment config in a workdir")
    t.add_argument("--config", required=True, help="experiments/<task>.py:<name>")
    t.add_argument("--workdir", required=True)
    t.add_argument("--force", action="store_true", help="resume even if the config changed")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    e = sub.add_parser("eval", help="run every evaluator on a checkpoint; prints the metrics as JSON")
    e.add_argument("--config", default=None, help="default: the config the workdir recorded")
    e.add_argument("--workdir", required=True)
    e.add_argument("--checkpoint", default="latest", help="latest, best, or a step number")
    sub.add_parser("list", help="list experiments and their named configs")
    s = sub.add_parser("summary", help="per-layer table: output shape, receptive field and stride, parameters, FLOPs")
    s.add_argument("--config", required=True)
    b = sub.add_parser("bench", help="time the compiled train step")
    b.add_argument("--config", required=True)
    b.add_argument("--steps", type=_positive, default=20)
    d = sub.add_parser("data", help="data commands: prepare, show")
    dsub = d.add_subparsers(dest="data_command", required=True)
    dp = dsub.add_parser("prepare", help="prepare a TFDS dataset (needs the 'prepare' extra)")
    dp.add_argument("name")
    dp.add_argument("--manual_dir", default=None)
    dp.add_argument("--data_dir", default=None)
    ds = dsub.add_parser("show", help="save a PNG grid of examples with their targets drawn")
    ds.add_argument("--config", required=True)
    ds.add_argument("--out", required=True)
    ds.add_argument("--split", default=None, help="default: the config's data.train_split")
    ds.add_argument("--num", type=_positive, default=6)
    ds.add_argument("--transformed", action="store_true",
                    help="show examples after the training transforms (as the model sees them)")
    a = sub.add_parser("ablate", help="train the config's ablation.variants x ablation.seeds; "
                                      "table, CSV and bar chart (see jaxvision/tools/ablation.py)")
    a.add_argument("--config", required=True)
    a.add_argument("--workdir", required=True)
    a.add_argument("--force", action="store_true", help="resume runs even if their config changed")
    a.add_argument("--progress", action="store_true", help="progress bars")
    o = sub.add_parser("overfit", help="train on a few fixed training examples: does the loss go "
                                       "to ~0 and the metric to its best? (jaxvision/tools/overfit.py)")
    o.add_argument("--config", required=True)
    o.add_argument("--num", type=_positive, default=8, help="training examples (default 8)")
    o.add_argument("--steps", type=_positive, default=200)
    o.add_argument("--workdir", default=None, help="default: a new temporary folder")
    o.add_argument("--progress", action="store_true", help="progress bar")
    iv = sub.add_parser("invariance", help="feature distance per layer and true-class probability "
                                           "under translate / scale / rotate (jaxvision/tools/invariance.py)")
    iv.add_argument("--config", default=None, help="default: the config the workdir recorded")
    iv.add_argument("--workdir", required=True)
    iv.add_argument("--checkpoint", default="latest", help="latest, best, or a step number")
    iv.add_argument("--transform", required=True, choices=("translate", "scale", "rotate"))
    iv.add_argument("--range", default="", help="--range=START,STOP,COUNT amounts (with '=' when "
                    "START is negative; default: translate -16,16,9 px; scale 0.5,1.5,9; rotate "
                    "-90,90,9 degrees)")
    iv.add_argument("--num", type=_positive, default=100, help="eval images")
    iv.add_argument("--out", default=None, help="output directory (default: the workdir)")
    sw = sub.add_parser("sweep", help="hyperparameter search with optuna, each trial a resumable "
                                      "run (jaxvision/tools/sweep.py); --space.KEY=DIST after the flags")
    sw.add_argument("--config", required=True)
    sw.add_argument("--workdir", required=True, help="the study's folder (trial_<k>/, study.db)")
    sw.add_argument("--trials", type=_positive, required=True)
    sw.add_argument("--metric", default=None, help="default: train.best_metric")
    sw.add_argument("--mode", default=None, choices=("max", "min"), help="default: train.best_mode")
    sw.add_argument("--sampler", default="tpe", choices=("tpe", "random"))
    sw.add_argument("--pruner", default="median", choices=("median", "none"))
    sw.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    sw.add_argument("--force", action="store_true", help="resume trials even if their config changed")
    sw.add_argument("--progress", action="store_true", help="progress bars")
    c = sub.add_parser("crossval", help="k-fold cross-validation over the training split")
    c.add_argument("--config", required=True)
    c.add_argument("--workdir", required=True)
    c.add_argument("--folds", type=int, default=5)
    c.add_argument("--force", action="store_true", help="resume folds even if their config changed")
    c.add_argument("--progress", action="store_true", help="progress bars")
    pr = sub.add_parser("probe", help="linear probe per layer of a trained model")
    pr.add_argument("--config", default=None, help="default: the config the workdir recorded")
    pr.add_argument("--workdir", required=True)
    pr.add_argument("--checkpoint", default="latest", help="latest, best, or a step number")
    pr.add_argument("--max-examples", type=int, default=5000,
                    help="cap per split (a seeded random subset); 0 = all")
    pr.add_argument("--layers", default="", help="comma-separated taps to probe (default: all)")
    pr.add_argument("--l2", type=float, default=1e-3, help="L2 penalty on standardized features")
    pr.add_argument("--max-iter", type=int, default=500, help="L-BFGS iterations at most")
    pr.add_argument("--out", default=None, help="report directory (default: the workdir)")
    pr.add_argument("--knn", type=int, default=0,
                    help="also score a k-nearest-neighbour classifier per layer (k; 0 = off)")
    en = sub.add_parser("ensemble", help="accuracy of several runs and of their averaged "
                                         "probabilities (see jaxvision/tools/ensemble.py)")
    en.add_argument("--config", default=None, help="default: the config each member recorded "
                    "(a spec here is for runs from before configs recorded their experiment)")
    en.add_argument("--workdir", required=True, action="append",
                    help="a member run (repeat for more members)")
    en.add_argument("--snapshots", action="store_true",
                    help="members = the cycle-end checkpoints of each workdir (cosine_restarts)")
    en.add_argument("--checkpoint", default="latest", help="latest, best, or a step number")
    pd = sub.add_parser("predict", help="run a trained model on image files or folders; writes "
                                        "predictions.jsonl and a picture per image")
    _run_args(pd)
    pd.add_argument("inputs", nargs="+", help="image files or folders")
    pd.add_argument("--right", nargs="+", default=None,
                    help="stereo models: the right view of each input, in the same order")
    pd.add_argument("--out", required=True, help="output folder")
    pd.add_argument("--gallery", nargs="+", default=None,
                    help="embedding models: image files or folders; each input's record and "
                         "picture show its nearest gallery images")
    pd.add_argument("--neighbours", type=_positive, default=8, help="gallery images per query")
    pd.add_argument("--batch-size", type=_positive, default=None,
                    help="images per device batch (default: train.eval_batch_size)")
    pd.add_argument("--no-pictures", action="store_true", help="write only predictions.jsonl")
    pd.add_argument("--no-progress", action="store_true", help="no progress bar")
    xp = sub.add_parser("explain", help="occlusion sensitivity, Grad-CAM and first-layer filters "
                                        "of a classification run (jaxvision/tools/explain.py)")
    _run_args(xp)
    xp.add_argument("inputs", nargs="+", help="image files or folders")
    xp.add_argument("--out", default=None, help="output folder (default: WORKDIR/explain)")
    xp.add_argument("--class", dest="target", type=int, default=None,
                    help="the class index to explain (default: the predicted one)")
    xp.add_argument("--patch", type=int, default=0, help="occluder side in input pixels (default 1/4 of the input)")
    xp.add_argument("--stride", type=int, default=0, help="occluder step (default patch / 2)")
    xp.add_argument("--layer", default=None, help="Grad-CAM feature map (default: the last one tapped)")
    ex = sub.add_parser("export", help="serialize the model's predict function (StableHLO, "
                                       "jax.export) with its weights into one file")
    _run_args(ex)
    ex.add_argument("--out", required=True, help="the file to write (e.g. model.jvx)")
    ex.add_argument("--platforms", default="",
                    help="comma-separated: cpu, cuda, rocm, tpu (default: this machine's backend)")
    iw = sub.add_parser("import-weights", help="turn a torchvision state dict (.safetensors) into "
                                               "a workdir that transfer, eval and predict read")
    iw.add_argument("--model", required=True, help="alexnet, vgg11, vgg11_bn, vgg16, vgg16_bn, "
                                                   "resnet18, resnet34, resnet50, ...")
    iw.add_argument("--from", dest="source", required=True, help="FILE.safetensors")
    iw.add_argument("--out", required=True, help="the workdir to create")
    iw.add_argument("--classes", default=None,
                    help="a text file of class names, one per line (default: the ImageNet "
                         "WordNet ids)")
    return p


def _json_default(x):
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return str(x)


def _print_json(obj: dict) -> None:
    print(json.dumps(obj, default=_json_default), flush=True)


# The exit-code contract (README "Command line"): 0 = done, or stopped cleanly with a checkpoint
# (SIGTERM, Ctrl-C); 1 = the run failed (non-finite loss, a failed process); 2 = the input is
# wrong (a config key or value, a file or workdir, the data, a busy workdir, a checkpoint that is
# not there); 130 = aborted by a second Ctrl-C.
EXIT_FAILED, EXIT_BAD_INPUT, EXIT_ABORTED = 1, 2, 130


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        rest, space = _split_overrides(argv, "--space.")
        rest, overrides = _split_overrides(rest)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    args = _parser().parse_args(rest)
    if space and args.command != "sweep":
        print(f"error: --space.* is a `sweep` flag ({space[0]})", file=sys.stderr)
        return EXIT_BAD_INPUT
    args.space = dict(s.split("=", 1) for s in space)
    import os
    from jaxvision.config import get_config
    from jaxvision.distributed import DistributedError
    from jaxvision.train.checkpoint import CheckpointError
    from jaxvision.train.lock import WorkdirBusyError
    from jaxvision.train.loop import TrainingError
    bad_input = (ValueError, OSError, CheckpointError, WorkdirBusyError)  # DataError etc. are ValueErrors
    try:
        return _run(args, overrides, get_config)
    except KeyboardInterrupt:
        print("\naborted (Ctrl-C twice): nothing was saved after the last checkpoint",
              file=sys.stderr)
        return EXIT_ABORTED
    except (*bad_input, TrainingError, DistributedError) as e:
        # Expected failures: the message says what and how to fix it; a traceback would bury it.
        if os.environ.get("JAXVISION_TRACEBACK"):
            raise
        print(f"error: {e}", file=sys.stderr)
        if isinstance(e, bad_input):
            print("(set JAXVISION_TRACEBACK=1 to see the traceback)", file=sys.stderr)
            return EXIT_BAD_INPUT
        return EXIT_FAILED


def _run(args, overrides, get_config) -> int:
    if args.command in ("train", "eval", "bench", "ensemble", "probe", "overfit"):
        # First, before anything touches JAX devices: join the other processes of a multi-process
        # job (a no-op for a plain single-process run; see jaxvision/distributed.py).
        from jaxvision import distributed
        distributed.initialize()
    if args.command == "list":
        from jaxvision.config import list_experiments
        for spec, _, doc in list_experiments():
            print(f"{spec:55s} {doc}")
        return 0
    if args.command == "data" and args.data_command == "prepare":
        from jaxvision.data import tfds_source
        path = tfds_source.prepare(args.name, args.manual_dir, args.data_dir)
        print(f"prepared {args.name} in {path}")
        return 0
    if args.command == "ablate":
        from jaxvision.tools import ablation
        config = ablation.load_config(args.config, overrides)
        rows = ablation.run_ablation(config, args.workdir, force=args.force,
                                     progress=args.progress)
        metric = str(config.ablation.metric)
        print(ablation.markdown_table(rows, metric))
        _print_json(ablation.summary_json(rows, metric))
        return 0
    if args.command == "ensemble":
        from jaxvision.tools.ensemble import ensemble_from_specs
        which = int(args.checkpoint) if args.checkpoint.isdigit() else args.checkpoint
        _print_json(ensemble_from_specs(args.config, args.workdir, overrides=overrides,
                                        snapshots=args.snapshots,
                                        checkpoint=None if which == "latest" else which))
        return 0
    if args.command in ("predict", "export", "explain"):
        from jaxvision.inference import load_predictor
        predictor = load_predictor(args.workdir, args.checkpoint, config=args.config,
                                   overrides=overrides,
                                   batch_size=getattr(args, "batch_size", None) or 0)
        if args.command == "explain":
            from pathlib import Path
            from jaxvision.tools.explain import explain
            result = explain(predictor, args.inputs, args.out or Path(args.workdir) / "explain",
                             target=args.target, patch=args.patch, stride=args.stride,
                             layer=args.layer)
            for r in result["inputs"]:
                print(f"{r['input']}: class {r['class']} p={r['probability']:.3f}, occluded min "
                      f"{r['occlusion_min']:.3f}, Grad-CAM at {r['layer']} -> {r['png']}")
            _print_json({k: v for k, v in result.items() if k != "inputs"})
            return 0
        if args.command == "export":
            from jaxvision import export
            platforms = [p for p in args.platforms.split(",") if p] or None
            _print_json(export.export_predictor(predictor, args.out, platforms=platforms))
            return 0
        from jaxvision.tools.predict import predict_files
        result = predict_files(predictor, args.inputs, args.out, rights=args.right,
                               progress=not args.no_progress, pictures=not args.no_pictures,
                               gallery=args.gallery, neighbours=args.neighbours)
        _print_json(result.to_json())
        if result.failed:
            what = "inputs and gallery files" if result.gallery else "inputs"
            print(f"error: {len(result.failed)} of {result.inputs + result.gallery} {what} could "
                  f"not be read (named above); the predictions of the others are in "
                  f"{result.out}", file=sys.stderr)
            return EXIT_BAD_INPUT
        return 0
    if args.command == "import-weights":
        from jaxvision.tools.import_weights import import_weights
        _print_json(import_weights(args.model, args.source, args.out, classes=args.classes))
        return 0
    if args.command in ("eval", "probe", "invariance") and args.config is None:
        # The run says which experiment and config it is (its workdir's config.json).
        from jaxvision.config import workdir_config
        config = workdir_config(args.workdir, None, overrides)
    else:
        config = get_config(args.config, overrides)
    if args.command == "train":
        from jaxvision.train.loop import train
        results = train(config, args.workdir, force=args.force, progress=not args.no_progress)
        _print_json({k: v for k, v in results.items() if np.ndim(v) == 0})
    elif args.command == "eval":
        from jaxvision.train.loop import evaluate_checkpoint
        results = evaluate_checkpoint(config, args.workdir, checkpoint=args.checkpoint)
        _print_json({k: v for k, v in results.items() if np.ndim(v) == 0})
    elif args.command == "summary":
        from jaxvision.train.bench import summary
        table, totals = summary(config)
        print(table)
        _print_json(totals)
    elif args.command == "bench":
        from jaxvision.train.bench import bench
        _print_json(bench(config, steps=args.steps))
    elif args.command == "sweep":
        from jaxvision.tools.sweep import markdown_table, sweep, write_outputs
        result = sweep(config, args.workdir, args.space, args.trials, metric=args.metric,
                       mode=args.mode, sampler=args.sampler, pruner=args.pruner, seed=args.seed,
                       progress=args.progress, force=args.force)
        print(markdown_table(result))
        files = write_outputs(result, args.workdir)
        print(f"wrote {files['csv']} and {files['png']}")
        _print_json(result.to_json())
    elif args.command == "crossval":
        from jaxvision.tools.crossval import crossval, markdown
        result = crossval(config, args.workdir, folds=args.folds, force=args.force,
                          progress=args.progress)
        print(markdown(result))
        _print_json(result.to_json())
    elif args.command == "invariance":
        import numpy as _np
        from jaxvision.config import ConfigError as _config_error
        from jaxvision.tools.invariance import invariance
        amounts = None
        if args.range:
            try:
                lo, hi, n = (float(v) for v in args.range.split(","))
            except ValueError:
                raise _config_error(f"--range {args.range!r} must be START,STOP,COUNT (e.g. -16,16,9).") from None
            amounts = list(_np.linspace(lo, hi, int(n)))
        result = invariance(config, args.workdir, args.transform, amounts, num=args.num,
                            checkpoint=args.checkpoint, out=args.out)
        print(f"wrote {result['png']} and {result['csv']}")
        _print_json(result)
    elif args.command == "overfit":
        from jaxvision.tools.overfit import overfit, report
        result = overfit(config, num=args.num, steps=args.steps, workdir=args.workdir,
                         progress=args.progress)
        print(report(result))
        _print_json(result.to_json())
        return 0 if result.passed else 1
    elif args.command == "probe":
        from jaxvision.tools.probe import run_probe, summary_json
        rows = run_probe(config, args.workdir, checkpoint=args.checkpoint,
                         max_examples=args.max_examples, l2=args.l2, max_iter=args.max_iter,
                         layers=[x for x in args.layers.split(",") if x] or None, out_dir=args.out,
                         knn=args.knn)
        for r in rows:
            print(f"{r.layer:24s} dim {r.dim:6d}  train {r.train_accuracy:.4f}  eval {r.eval_accuracy:.4f}")
        _print_json(summary_json(rows))
    elif args.command == "data" and args.data_command == "show":
        from jaxvision.data.show import show
        out = show(config, args.out, split=args.split, num=args.num, transformed=args.transformed)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
