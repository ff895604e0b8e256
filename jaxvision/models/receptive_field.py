"""Receptive field and stride of every intermediate of a computation, by the closed form.

The closed form (e.g. Araujo et al., "Computing receptive fields of CNNs", Distill 2019): an
output of a layer with kernel ``k``, dilation ``d`` and stride ``s`` sees ``(k - 1) * d + 1``
positions of its input, which are ``j`` input pixels apart when the input's stride (its
"jump") is ``j``, so ``rf_out = rf_in + ((k - 1) * d) * j`` and ``j_out = j * s``. An input
dilation (a transposed convolution, or interior padding) divides the jump first. Where branches
meet (a residual sum, a concatenation) the field is the larger one.

``receptive_fields`` applies it to the jaxpr of a function, primitive by primitive
(convolutions, pooling windows, strided slices, interior padding; elementwise ops, transposes,
reshapes that keep the spatial axes, contractions over channels pass the field through). An
output that mixes all positions of a spatial axis (a flatten into a dense layer, a global
pooling, a spatial reduction, a gather) has a *global* field. Convolution and pooling padding
do not change the size counted here: the field is that of an output away from the border.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.extend import core as jex_core

from jaxvision.ops import conv as conv_ops

# Primitives that hold a sub-computation applied to their operands one to one.
_CALL_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")
_ELEMENTWISE_OK = ("convert_element_type", "copy", "copy_p", "stop_gradient", "reduce_precision")


@dataclasses.dataclass(frozen=True)
class Field:
    """The receptive field of one array: ``axes`` the array axes holding the input's spatial
    axes (H, W) in order; ``size`` the field per spatial axis, in input pixels; ``jump`` the
    distance in input pixels between neighbouring outputs (the cumulative stride);
    ``is_global``: every output depends on every input position."""

    axes: tuple[int, ...]
    size: tuple[float, ...]
    jump: tuple[float, ...]
    is_global: bool = False

    def merged(self, other: "Field | None") -> "Field":
        if other is None:
            return self
        if self.is_global or other.is_global or self.axes != other.axes:
            return _GLOBAL
        return Field(self.axes, tuple(max(a, b) for a, b in zip(self.size, other.size)),
                     tuple(max(a, b) for a, b in zip(self.jump, other.jump)))

    def moved(self, axes: Sequence[int | None]) -> "Field":
        """The same field with its spatial axes renumbered (None: an axis was folded away)."""
        if self.is_global or any(a is None for a in axes):
            return _GLOBAL
        return Field(tuple(int(a) for a in axes), self.size, self.jump)

    def window(self, i: int, kernel: int, stride: int = 1, dilation: int = 1,
               input_dilation: int = 1) -> "Field":
        """After a window op along spatial axis ``i``."""
        if self.is_global:
            return self
        jump = self.jump[i] / input_dilation
        size = self.size[i] + (kernel - 1) * dilation * jump
        return Field(self.axes, _set(self.size, i, size), _set(self.jump, i, jump * stride))


_GLOBAL = Field((), (), (), True)


def _set(t: tuple, i: int, v: Any) -> tuple:
    return t[:i] + (v,) + t[i + 1:]


def _combine(fields: Sequence[Field | None]) -> Field | None:
    out = None
    for f in fields:
        if f is not None:
            out = f if out is None else out.merged(f)
    return out


def _sub_jaxpr(eqn) -> Any:
    for name in _CALL_PARAMS:
        sub = eqn.params.get(name)
        if sub is not None:
            return sub
    return None


def _conv(eqn, f: Field) -> Field:
    dn = eqn.params["dimension_numbers"]
    lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    kernel_shape = eqn.invars[1].aval.shape
    strides = eqn.params["window_strides"]
    rhs_dil = eqn.params.get("rhs_dilation") or (1,) * len(strides)
    lhs_dil = eqn.params.get("lhs_dilation") or (1,) * len(strides)
    new_axes = []
    for i, a in enumerate(f.axes):
        if a not in lhs_spec[2:]:
            return _GLOBAL  # a spatial axis is the batch or feature axis of the convolution
        p = list(lhs_spec[2:]).index(a)
        f = f.window(i, int(kernel_shape[rhs_spec[2 + p]]), int(strides[p]), int(rhs_dil[p]),
                     int(lhs_dil[p]))
        new_axes.append(out_spec[2 + p])
    return f.moved(new_axes)


def _reduce_window(eqn, f: Field) -> Field:
    p = eqn.params
    dims, strides = p["window_dimensions"], p["window_strides"]
    base = p.get("base_dilation") or (1,) * len(dims)
    wdil = p.get("window_dilation") or (1,) * len(dims)
    for i, a in enumerate(f.axes):
        f = f.window(i, int(dims[a]), int(strides[a]), int(wdil[a]), int(base[a]))
    return f


def _reduced(axes_removed: Sequence[int], f: Field) -> Field:
    removed = set(int(a) for a in axes_removed)
    if removed & set(f.axes):
        return _GLOBAL
    return f.moved([a - sum(r < a for r in removed) for a in f.axes])


def _dot_general(eqn, fields: Sequence[Field | None]) -> Field | None:
    ((lc, rc), (lb, rb)) = eqn.params["dimension_numbers"]
    lhs, rhs = eqn.invars[0].aval, eqn.invars[1].aval
    out = None
    for side, f in enumerate(fields):
        if f is None:
            continue
        if f.is_global:
            return _GLOBAL
        contract, batch = (lc, lb) if side == 0 else (rc, rb)
        if set(f.axes) & set(contract):
            return _GLOBAL
        rank = len(lhs.shape) if side == 0 else len(rhs.shape)
        free = [d for d in range(rank) if d not in contract and d not in batch]
        lhs_free = [d for d in range(len(lhs.shape)) if d not in lc and d not in lb]
        offset = len(lb) + (0 if side == 0 else len(lhs_free))
        axes = [list(batch).index(a) if a in batch else offset + free.index(a) for a in f.axes]
        moved = f.moved(axes)
        out = moved if out is None else out.merged(moved)
    return out


def _reshape(eqn, f: Field) -> Field:
    old, new = eqn.invars[0].aval.shape, eqn.params["new_sizes"]
    last = max(f.axes)
    if tuple(new[:last + 1]) == tuple(old[:last + 1]):
        return f
    return _GLOBAL


def _slice(eqn, f: Field) -> Field:
    strides = eqn.params.get("strides")
    if strides:
        for i, a in enumerate(f.axes):
            f = Field(f.axes, f.size, _set(f.jump, i, f.jump[i] * int(strides[a])))
    return f


def _pad(eqn, f: Field) -> Field:
    config = eqn.params["padding_config"]
    for i, a in enumerate(f.axes):
        interior = int(config[a][2])
        if interior:
            f = Field(f.axes, f.size, _set(f.jump, i, f.jump[i] / (interior + 1)))
    return f


def _eqn_field(eqn, fields: list[Field | None]) -> list[Field | None]:
    """The fields of ``eqn``'s outputs from those of its inputs."""
    live = [f for f in fields if f is not None]
    if not live:
        return [None] * len(eqn.outvars)
    name = eqn.primitive.name
    sub = _sub_jaxpr(eqn)
    if sub is not None:
        jaxpr = sub.jaxpr if hasattr(sub, "jaxpr") else sub
        n = len(jaxpr.invars)
        return _interpret(jaxpr, fields[-n:] if n <= len(fields) else fields + [None] * (n - len(fields)))
    f = _combine(fields)
    if f.is_global:
        return [_GLOBAL] * len(eqn.outvars)
    if name == "conv_general_dilated":
        out = _conv(eqn, fields[0]) if fields[0] is not None else _GLOBAL
    elif name.startswith("reduce_window"):
        out = _reduce_window(eqn, fields[0]) if fields[0] is not None else f
    elif name in ("reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and",
                  "reduce_or", "argmax", "argmin"):
        out = _reduced(eqn.params["axes"], f)
    elif name == "transpose":
        perm = list(eqn.params["permutation"])
        out = f.moved([perm.index(a) for a in f.axes])
    elif name == "broadcast_in_dim":
        dims = eqn.params["broadcast_dimensions"]
        out = f.moved([dims[a] for a in f.axes])
    elif name == "squeeze":
        out = _reduced(eqn.params["dimensions"], f)
    elif name == "expand_dims":
        dims = sorted(eqn.params["dimensions"])
        out = f.moved([a + sum(d <= a + k for k, d in enumerate(dims)) for a in f.axes])
    elif name == "reshape":
        out = _reshape(eqn, f)
    elif name == "dot_general":
        out = _dot_general(eqn, fields)
    elif name == "slice":
        out = _slice(eqn, f)
    elif name == "pad":
        out = _pad(eqn, f)
    elif name in ("concatenate", "select_n", "clamp", "dynamic_slice", "rev") or name in _ELEMENTWISE_OK:
        out = f
    else:
        # Elementwise ops keep the shape of an operand that carries the field; anything else
        # (gathers, scatters, loops, sorts) is treated as mixing every position.
        shape = tuple(eqn.outvars[0].aval.shape) if hasattr(eqn.outvars[0].aval, "shape") else ()
        same = any(fv is not None and tuple(v.aval.shape) == shape
                   for v, fv in zip(eqn.invars, fields) if hasattr(v, "aval"))
        out = f if same and len(eqn.outvars) == 1 else _GLOBAL
    return [out] * len(eqn.outvars)


def _interpret(jaxpr, in_fields: Sequence[Field | None]) -> list[Field | None]:
    env: dict[Any, Field | None] = {}
    for v, f in zip(jaxpr.invars, in_fields):
        env[v] = f

    def read(v):
        if isinstance(v, jex_core.Literal):
            return None
        return env.get(v)

    for eqn in jaxpr.eqns:
        outs = _eqn_field(eqn, [read(v) for v in eqn.invars])
        for v, f in zip(eqn.outvars, outs):
            env[v] = f
    return [read(v) for v in jaxpr.outvars]


def receptive_fields(fn: Callable[..., Any], x: jax.ShapeDtypeStruct | np.ndarray, *args: Any,
                     spatial_axes: tuple[int, ...] = (1, 2)) -> list[Field | None]:
    """The receptive field of every array leaf that ``fn(x, *args)`` returns, in leaf order
    (None for an output that does not depend on ``x``). ``x`` (e.g. NHWC) has its spatial axes
    at ``spatial_axes``; ``args`` (parameters) carry no field. Nothing is computed: ``fn`` is
    traced to a jaxpr."""
    with conv_ops.as_lax():   # convolutions stay conv_general_dilated eqns to read
        closed = jax.make_jaxpr(fn)(x, *args)
    n_args = len(jax.tree.leaves(args))
    start = Field(tuple(spatial_axes), (1.0,) * len(spatial_axes), (1.0,) * len(spatial_axes))
    in_fields = [start] + [None] * n_args
    return _interpret(closed.jaxpr, in_fields)
