"""``python -m jaxvision data show``: a PNG of what the pipeline feeds the model."""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxvision.data.pipeline import make_transform
from jaxvision.data.source import SkipBad, build_source


def show(config: Any, out: str, *, split: str | None = None, num: int = 6,
         transformed: bool = False) -> str:
    """Saves ``num`` examples of ``split`` (raw, or after ``data.train_pp`` with ``transformed``)
    with every target drawn; returns the PNG path."""
    from jaxvision import viz
    data = config.data
    split = split or data.train_split
    source = build_source(data, split)
    if str(data.get("bad_examples", "error")) == "skip":
        source = SkipBad(source)
    transform = make_transform(data, data.train_pp) if transformed else None
    examples = []
    for index in range(min(num, len(source))):
        example = source[index]
        if transform is not None:
            example = transform(example, np.random.default_rng([int(config.seed), 0, index]))
        example["index"] = np.int64(index)
        examples.append(example)
    title = f"{source.info.name} [{split}]" + (" after train_pp" if transformed else "")
    return viz.show_examples(examples, out, info=source.info, title=title, max_examples=num)
