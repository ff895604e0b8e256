"""Studies built on trained runs, all through the core's build, evaluators and prediction path:
``ablation`` (variants x seeds), ``crossval`` (k-fold), ``probe`` (linear probe per layer),
``ensemble`` (averaged probabilities, snapshot ensembles)."""
