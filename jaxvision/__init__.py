"""jaxvision: computer-vision experiments in JAX/Flax (see README.md)."""

from jaxvision import cpu_flags as _cpu_flags

# Before anything starts JAX's backends: XLA reads its options once (jaxvision/cpu_flags.py).
_cpu_flags.apply()
