"""Pipeline strings: ``"resize(32)|random_crop(28, pad=4)|flip_lr|normalize"`` -> a ``Compose``.

``parse_pp`` builds a pipeline from the transforms registered in ``jaxvision.data.transforms``::

    parse_pp("resize(32)|random_crop(28, pad=4)|flip_lr|color_jitter(0.4, 0.4)|cutout(8)|normalize",
             stats=compute_mean_std(source))
"""

from __future__ import annotations

import ast
import difflib
import inspect
import re
from typing import Any, Sequence

import numpy as np

from jaxvision.data.example import Example
from jaxvision.data.transforms import TRANSFORMS, Transform


class Compose:
    """Applies ``transforms`` in order, passing the same ``rng`` along."""

    def __init__(self, transforms: Sequence[Transform] = ()):
        self.transforms = tuple(transforms)

    def __call__(self, example: Example, rng: np.random.Generator) -> Example:
        example = dict(example)
        for t in self.transforms:
            example = t(example, rng)
        return example

    def __len__(self) -> int:
        return len(self.transforms)

    def spec(self) -> str:
        """Returns the pipeline string (``parse_pp(c.spec())`` rebuilds an equal pipeline)."""
        return "|".join(t.spec() if hasattr(t, "spec") else repr(t) for t in self.transforms)

    def __repr__(self) -> str:
        return f"Compose({self.spec()!r})"


def _split_steps(spec: str) -> list[str]:
    """Splits on ``|`` outside parentheses, brackets and quotes."""
    steps, depth, quote, cur = [], 0, None, []
    for ch in spec:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "|" and depth == 0:
            steps.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    steps.append("".join(cur))
    return steps


_STEP_RE = re.compile(r"([A-Za-z_]\w*)\s*(?:\((.*)\))?", re.S)


def _parse_step(step: str) -> tuple[str, tuple, dict]:
    m = _STEP_RE.fullmatch(step)
    if not m:
        raise ValueError(f"pipeline step {step!r} is not of the form name or name(args), "
                         "e.g. 'random_crop(28, pad=4)'.")
    name, argstr = m[1], m[2]
    if argstr is None or not argstr.strip():
        return name, (), {}
    def literal(node: ast.AST) -> Any:
        try:
            return ast.literal_eval(node)
        except (ValueError, TypeError, SyntaxError):
            raise ValueError(f"pipeline step {step!r}: argument {ast.unparse(node)!r} is not a "
                             "Python literal; use numbers, strings, tuples or lists (quote "
                             "strings), positional or keyword.") from None

    try:
        call = ast.parse(f"_({argstr})", mode="eval").body
    except SyntaxError:
        raise ValueError(f"pipeline step {step!r}: cannot parse the arguments {argstr!r}; write "
                         "them as in a Python call, e.g. random_crop(28, pad=4).") from None
    if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
        raise ValueError(f"pipeline step {step!r}: *args / **kwargs are not allowed.")
    return name, tuple(literal(a) for a in call.args), {k.arg: literal(k.value) for k in call.keywords}


def parse_pp(spec: str, stats: tuple[Sequence[float], Sequence[float]] | None = None) -> Compose:
    """Builds the pipeline of a ``|``-separated string of steps ``name`` or ``name(args)``.

    Arguments are Python literals (``ast.literal_eval``), positional or keyword. An empty string
    gives the identity. A bare ``normalize`` uses ``stats = (mean, std)``. Raises ``ValueError``
    for an unknown name (listing known names and close matches) or arguments that do not fit the
    transform's signature.
    """
    transforms = []
    for step in _split_steps(spec or ""):
        step = step.strip()
        if not step:
            continue
        name, args, kwargs = _parse_step(step)
        if name not in TRANSFORMS:
            close = difflib.get_close_matches(name, list(TRANSFORMS), n=3)
            raise ValueError(f"unknown transform {name!r} in pipeline {spec!r}. Known: "
                             f"{', '.join(sorted(TRANSFORMS))}."
                             + (f" Did you mean: {', '.join(close)}?" if close else ""))
        factory = TRANSFORMS[name]
        if name == "normalize" and not args and not kwargs:
            if stats is None:
                raise ValueError("pipeline step 'normalize' has no arguments, so it needs the "
                                 "dataset statistics, but stats=None. Pass stats=compute_mean_std("
                                 "source) to parse_pp, or write normalize(mean, std), e.g. "
                                 "normalize((127.5,), (127.5,)).")
            args = tuple(stats)
        sig = inspect.signature(factory)
        try:
            sig.bind(*args, **kwargs)
            transforms.append(factory(*args, **kwargs))
        except (TypeError, ValueError) as e:
            usage = ", ".join(p.name if p.default is p.empty else f"{p.name}={p.default!r}"
                              for p in sig.parameters.values())
            raise ValueError(f"pipeline step {step!r}: {str(e).rstrip('.')}. Signature: "
                             f"{name}({usage}).") from None
    return Compose(transforms)
