"""``jaxvision.cpu_flags``: YNNPACK fusions off unless the user chose, and only before JAX starts."""

import os
import subprocess
import sys

import pytest

from jaxvision import cpu_flags

OFF = cpu_flags.OPTION + "="


@pytest.fixture
def fresh(monkeypatch):
    """``apply`` as on a fresh import: backends not started, jaxlib 0.10, no user setting."""
    monkeypatch.setattr(cpu_flags, "_backends_started", lambda: False)
    monkeypatch.setattr(cpu_flags, "_known_jaxlib", lambda: True)
    monkeypatch.delenv(cpu_flags.ENV, raising=False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
    return monkeypatch


def test_apply_turns_ynnpack_off_once_and_keeps_other_flags(fresh):
    assert cpu_flags.apply()
    assert os.environ["XLA_FLAGS"].split() == ["--xla_backend_optimization_level=0", OFF]
    assert not cpu_flags.ynn_enabled()
    assert not cpu_flags.apply()                      # the option is there now: unchanged
    assert os.environ["XLA_FLAGS"].count(cpu_flags.OPTION) == 1


@pytest.mark.parametrize("flags, enabled", [
    (f"{cpu_flags.OPTION}=+dot", True),              # the user's own value is kept
    (f"{cpu_flags.OPTION}=dot,reduce", True),
    (OFF, False),
])
def test_a_users_option_is_kept(fresh, flags, enabled):
    fresh.setenv("XLA_FLAGS", flags)
    assert not cpu_flags.apply()
    assert os.environ["XLA_FLAGS"] == flags
    assert cpu_flags.ynn_enabled() == enabled


def test_opt_out_started_backends_and_other_jaxlibs_leave_xla_flags_alone(fresh):
    fresh.setenv(cpu_flags.ENV, "1")
    assert not cpu_flags.apply() and cpu_flags.ynn_enabled()
    fresh.setenv(cpu_flags.ENV, "0")
    fresh.setattr(cpu_flags, "_backends_started", lambda: True)   # too late: XLA read its flags
    assert not cpu_flags.apply() and cpu_flags.ynn_enabled()
    fresh.setattr(cpu_flags, "_backends_started", lambda: False)
    fresh.setattr(cpu_flags, "_known_jaxlib", lambda: False)       # the option may not exist
    assert not cpu_flags.apply() and cpu_flags.ynn_enabled()
    fresh.setenv(cpu_flags.ENV, "yes")
    with pytest.raises(ValueError, match="JAXVISION_CPU_YNN='yes' must be '1'"):
        cpu_flags.apply()


def test_this_process_and_a_fresh_import_run_without_ynnpack():
    """The test process imported jaxvision before JAX started: the shipped setting is in force,
    and a new process gets it from ``import jaxvision`` and runs a convolution with it."""
    assert not cpu_flags.ynn_enabled()
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", cpu_flags.ENV)}
    code = ("import os, jaxvision, jax, jax.numpy as jnp; from jaxvision import cpu_flags;"
            "from jaxvision.ops import conv;"
            "y = conv.conv_general_dilated(jnp.ones((1, 8, 8, 2)), jnp.ones((3, 3, 2, 4)),"
            " (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'));"
            "print(os.environ['XLA_FLAGS'], cpu_flags.ynn_enabled(), float(y[0, 4, 4, 0]))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == [OFF, "False", "18.0"]
