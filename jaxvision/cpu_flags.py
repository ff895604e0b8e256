"""The XLA:CPU option jaxvision sets before JAX starts its backends: YNNPACK fusions off.

jaxlib 0.10 hands dots, elementwise ops and reductions on CPU to YNNPACK by default. On this
project's train steps that is slower: ResNet-20 at batch 128 on 2 cores runs plain XLA
convolutions at 253 img/s without YNNPACK and 144 with it, LeNet-5's shipped step 8,139 against
5,030 (``benchmarks/NOTES.md``, "XLA:CPU without YNNPACK"). ``jaxvision.ops.conv`` picks its
formulations for whichever setting is in force (``ynn_enabled``).

Importing ``jaxvision`` calls ``apply``, which appends ``--xla_cpu_experimental_ynn_fusion_type=``
to ``XLA_FLAGS`` unless
* ``XLA_FLAGS`` already names that option (the user's choice is kept),
* ``JAXVISION_CPU_YNN=1`` (keep XLA's default),
* JAX's backends have started already (XLA reads its flags once; ``ynn_enabled`` then reports
  the default, on), or
* the installed jaxlib is not 0.10.x, where the option was measured: an XLA that does not know
  an option refuses to start.
The option only concerns XLA:CPU; GPU and TPU runs are unchanged. The two settings round
differently (other kernels), so a run resumed under the other one is not bit-identical to one
that never stopped; keep the setting of a job the same across its processes and restarts. This
module imports no JAX.
"""

from __future__ import annotations

import os
import sys

OPTION = "--xla_cpu_experimental_ynn_fusion_type"
ENV = "JAXVISION_CPU_YNN"


def _backends_started() -> bool:
    bridge = sys.modules.get("jax._src.xla_bridge")
    return bool(getattr(bridge, "_backends", None))


def _known_jaxlib() -> bool:
    try:
        from importlib.metadata import version
        return version("jaxlib").startswith("0.10.")
    except Exception:  # noqa: BLE001 - no metadata: do not touch XLA's options
        return False


def apply() -> bool:
    """Turns YNNPACK fusions off in ``XLA_FLAGS`` when allowed (see the module docstring).
    Returns whether it changed ``XLA_FLAGS``."""
    flags = os.environ.get("XLA_FLAGS", "")
    setting = os.environ.get(ENV, "")
    if setting not in ("", "0", "1"):
        raise ValueError(f"{ENV}={setting!r} must be '1' (keep XLA:CPU's YNNPACK fusions) or "
                         "'0' / unset (turn them off, the default).")
    if OPTION in flags or setting == "1" or _backends_started() or not _known_jaxlib():
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {OPTION}=".strip()
    return True


def ynn_enabled() -> bool:
    """Whether XLA:CPU runs with its YNNPACK fusions: False when ``XLA_FLAGS`` sets
    ``--xla_cpu_experimental_ynn_fusion_type`` to nothing (what ``apply`` adds), True
    otherwise."""
    value = None
    for token in os.environ.get("XLA_FLAGS", "").split():
        if token.startswith(OPTION + "=") or token == OPTION:
            value = token.partition("=")[2]
    return value is None or value.strip("'\"") != ""
