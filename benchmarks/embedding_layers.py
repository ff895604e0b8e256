"""Recall@1 read off every layer of a trained embedding run, on its eval split.

    .venv/bin/python benchmarks/embedding_layers.py WORKDIR [--config.KEY=VALUE ...]

The run's model is applied with ``return_features=True``; each feature map is flattened (and,
for conv maps, also global-average-pooled) and scored by ``jaxvision.retrieval.retrieval_metrics``
against the eval split's labels, as the ``retrieval`` evaluator does for the shipped embedding.
"""

import sys

from jaxvision.config import workdir_config
from jaxvision.experiment import resolve_experiment
from jaxvision.retrieval import retrieval_metrics
from jaxvision.train import loop

w = sys.argv[1]
config = workdir_config(w, None, [a[2:] for a in sys.argv[2:] if a.startswith("--config.")])
exp = resolve_experiment(config)
run = loop.build(config, exp, abstract=True)
(restored,) = loop.restore_checkpoints(run, w, ["latest"])
state = run.strategy.put_state(restored.state)
key = str(config.loss.identity_key)


def fn(variables, batch, setup_data):
    emb, feats = run.model.apply(variables, exp.prepare(config, batch), train=False,
                                 return_features=True)
    out = {"embedding": emb, "label": batch[key]}
    for k, v in feats.items():
        out[k] = v.reshape(v.shape[0], -1)
        if v.ndim == 4:
            out[k + "_gap"] = v.mean((1, 2))
    return out


out = loop.predict(run, state, fn, run.eval_loader)
labels = out.pop("label")
print("| layer | dim | R@1 |\n|---|---:|---:|")
for k, v in out.items():
    print(f"| {k} | {v.shape[1]} | {retrieval_metrics(v, labels, (1,))['recall_at_1']:.4f} |",
          flush=True)
