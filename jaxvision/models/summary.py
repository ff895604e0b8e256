"""Per-layer model summary: output shapes, receptive fields, parameter counts and FLOPs,
without real compute.

Receptive field and stride (``jaxvision/models/receptive_field.py``): per layer output, the
input pixels one output position sees (the closed form over every convolution, pooling and
strided op on the way, padding ignored: the field of an output away from the border) and the
input pixels between neighbouring outputs; ``all`` once every position is mixed (a flatten into
a dense layer, a global pooling). A square field prints as one number, else ``HxW``.

FLOP convention: **FLOPs = 2 x multiply-accumulates (MACs)** of the convolution and dense layers
(a multiply-add counts as two operations; bias adds, norms, activations and pooling are not
counted, as in most published tables). Numbers are for the whole ``batch`` (``batch=1`` gives
per-image figures). Under this convention the ungrouped AlexNet at 224 is 2.27 GFLOPs
(1.14 GMACs); the published two-GPU grouped model is ~0.72 GMACs.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

Row = dict[str, Any]


def _size(tree: Any) -> int:
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))


def _subtree(params: Any, path: tuple[str, ...]) -> Any:
    node = params
    for key in path:
        if not hasattr(node, "get") or key not in node:
            return {}
        node = node[key]
    return node


def _direct_params(params: Any, path: tuple[str, ...]) -> dict[str, Any]:
    """The arrays owned by the module at ``path`` itself (not by its submodules)."""
    node = _subtree(params, path)
    if not hasattr(node, "items"):
        return {}
    return {k: v for k, v in node.items() if hasattr(v, "shape")}


def _shape(out: Any) -> Any:
    if hasattr(out, "shape"):
        return tuple(out.shape)
    if isinstance(out, (tuple, list)):
        return [_shape(o) for o in out]
    if isinstance(out, dict):
        return {k: _shape(v) for k, v in out.items()}
    return None


def _macs(module: nn.Module, own: dict[str, Any], in_shape: Any, out_shape: Any) -> int:
    """Multiply-accumulates of one call: every kernel weight meets every output (conv, dense) or
    every input (transposed conv) position once."""
    kernel = own.get("kernel")
    if kernel is None or not isinstance(out_shape, tuple):
        return 0
    if isinstance(module, nn.ConvTranspose):
        return math.prod(in_shape[:-1]) * math.prod(kernel.shape) if isinstance(in_shape, tuple) else 0
    if isinstance(module, (nn.Conv, nn.Dense)):
        return math.prod(out_shape[:-1]) * math.prod(kernel.shape)
    return 0


def _layer_calls(visit: Any) -> Any:
    """An interceptor for ``nn.intercept_methods`` that hands ``visit(next_fun, args, kwargs,
    context)`` each module's ``__call__``, but not other methods, nor a module called within
    another of the same scope (``layers.Conv``'s inner ``nn.Conv``): one call per layer."""
    open_paths: list[tuple[str, ...]] = []

    def interceptor(next_fun, args, kwargs, context):
        path = tuple(context.module.path)
        if context.method_name != "__call__" or (open_paths and open_paths[-1] == path):
            return next_fun(*args, **kwargs)
        open_paths.append(path)
        try:
            return visit(next_fun, args, kwargs, context)
        finally:
            open_paths.pop()
    return interceptor


def summarize(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    batch: int = 1,
    dtype: Any = jnp.float32,
    **call_kwargs: Any,
) -> tuple[list[Row], dict[str, Any]]:
    """Traces ``model`` on a (batch, *input_shape) input without computing anything.

    Returns ``(rows, totals)``. ``rows``, in call order, one per module call that owns
    parameters or does conv/dense work: ``name`` ('layer1_0/conv1'), ``type`` ('Conv'),
    ``output_shape``, ``params`` (counted at a module's first call only), ``flops`` (2 x MACs),
    ``receptive_field`` and ``stride`` (text, in input pixels; module docstring).
    ``totals``: ``params`` (all of the ``params`` collection; equals the sum over rows),
    ``flops``, ``macs``, ``state`` (other collections, e.g. batch-norm statistics), ``batch``,
    ``input_shape``. ``call_kwargs`` go to the model's ``__call__`` (default ``train=False``).
    """
    if batch < 1:
        raise ValueError(f"summarize: batch must be >= 1, got {batch}")
    shape = (batch, *tuple(int(s) for s in input_shape))
    x = jax.ShapeDtypeStruct(shape, dtype)
    call_kwargs = {"train": False, **call_kwargs}

    def init(x):
        rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
        return model.init(rngs, x, **call_kwargs)

    variables = jax.eval_shape(init, x)
    params = variables.get("params", {})

    records: list[dict[str, Any]] = []

    def visit(next_fun, args, kwargs, context):
        record = {"module": context.module, "path": tuple(context.module.path)}
        records.append(record)  # before the call, so rows come in call order
        record["in"] = _shape(args[0]) if args else None
        out = next_fun(*args, **kwargs)
        record["out"] = _shape(out)
        return out

    def apply(variables, x):
        return model.apply(variables, x, rngs={"dropout": jax.random.key(2)}, **call_kwargs)

    with nn.intercept_methods(_layer_calls(visit)):
        jax.eval_shape(apply, variables, x)
    fields = _fields(apply, variables, x, len(records))

    rows: list[Row] = []
    seen: set[tuple[str, ...]] = set()
    for rec, field in zip(records, fields):
        own = _direct_params(params, rec["path"])
        n_params = 0 if rec["path"] in seen else _size(own)
        seen.add(rec["path"])
        flops = 2 * _macs(rec["module"], own, rec["in"], rec["out"])
        if n_params == 0 and flops == 0:
            continue
        rows.append({
            "name": "/".join(rec["path"]) or "(root)",
            "type": type(rec["module"]).__name__,
            "output_shape": rec["out"],
            "params": n_params,
            "flops": flops,
            "receptive_field": _field_text(field, "size"),
            "stride": _field_text(field, "jump"),
        })
    total_flops = sum(r["flops"] for r in rows)
    totals = {
        "params": _size(params),
        "flops": total_flops,
        "macs": total_flops // 2,
        "state": _size({k: v for k, v in variables.items() if k != "params"}),
        "batch": batch,
        "input_shape": list(shape[1:]),
    }
    return rows, totals


def _fields(apply: Any, variables: Any, x: Any, count: int) -> list:
    """The receptive field of the first output array of each module call, in call order (the
    order ``summarize``'s interceptor records them: a slot at entry, filled at exit)."""
    from jaxvision.models.receptive_field import receptive_fields

    def collect(x, variables):
        outs: list = []

        def visit(next_fun, args, kwargs, context):
            slot = len(outs)
            outs.append(None)
            out = next_fun(*args, **kwargs)
            leaves = [v for v in jax.tree.leaves(out) if hasattr(v, "shape")]
            outs[slot] = leaves[0] if leaves else jnp.zeros(())
            return out
        with nn.intercept_methods(_layer_calls(visit)):
            apply(variables, x)
        return outs
    try:
        fields = receptive_fields(collect, x, variables)
    except Exception as e:  # a primitive the closed form cannot read: the rest of the table stands
        import warnings
        warnings.warn(f"summary: receptive fields not computed ({type(e).__name__}: {e}).")
        return [None] * count
    return fields if len(fields) == count else [None] * count


def _field_text(field: Any, what: str) -> str:
    if field is None:
        return ""
    if field.is_global:
        return "all"
    values = [int(v) if float(v).is_integer() else round(float(v), 2) for v in getattr(field, what)]
    return str(values[0]) if len(set(values)) == 1 else "x".join(map(str, values))


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def format_table(rows: Sequence[Row], totals: dict[str, Any]) -> str:
    """Returns a fixed-width text table of ``rows`` followed by the totals lines."""
    header = ("Layer", "Type", "Output shape", "RF", "Stride", "Params", "FLOPs")
    body = [
        (r["name"], r["type"], str(r["output_shape"]), r.get("receptive_field", ""),
         r.get("stride", ""), f"{r['params']:,}", f"{r['flops']:,}")
        for r in rows
    ]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body)]
    align = ("<", "<", "<", ">", ">", ">", ">")

    def line(cells: Sequence[str]) -> str:
        return "  ".join(f"{c:{a}{w}}" for c, a, w in zip(cells, align, widths)).rstrip()

    rule = "-" * len(line(header))
    out = [line(header), rule, *(line(b) for b in body), rule]
    out.append(
        f"Total params: {totals['params']:,} ({_human(totals['params'])})   "
        f"non-trainable state: {totals.get('state', 0):,}"
    )
    out.append(
        f"FLOPs: {totals['flops']:,} ({_human(totals['flops'])}FLOPs = 2 x {_human(totals['flops'] / 2)}MACs, "
        f"conv/dense only) for a batch of {totals.get('batch', 1)} x {tuple(totals.get('input_shape', ()))}"
    )
    return "\n".join(out)
