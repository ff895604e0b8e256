"""Training core: train state, step, parallelism, logging and checkpoints."""
