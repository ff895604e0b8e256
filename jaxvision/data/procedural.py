"""The built-in procedural scenes: zero-download data that carries every target at once.

Each example is a rectified stereo pair of a small synthetic scene: between ``min_objects`` and
``max_objects`` flat objects over a textured background. Every object has one of
``len(SHAPES)`` shape classes, one of ``len(COLORS)`` base colors (jittered in brightness and
hue), a random size, rotation and surface texture (flat, stripes, checker or radial), and an
integer depth expressed as its disparity. Objects are painted far to near (painter's order), so
near objects occlude far ones, in both views.

Targets (layouts as in ``jaxvision/data/example.py``):

* ``label``: shape class of the *largest visible object* (most pixels in the left view; ties go
  to the first in box order). One object per scene is drawn larger than the others and its
  class is uniform, so labels are close to balanced; color is independent of shape, so neither
  a pixel nor the mean color predicts the label.
* ``boxes`` / ``box_classes``: tight boxes of each object's visible left-view pixels, in
  painter's order (far to near); objects with no visible pixel are dropped.
* ``mask``: 0 = background, ``shape class + 1`` on objects (``len(SHAPES) + 1`` classes).
  ``instance_mask``: ``k`` on the pixels of ``boxes[k - 1]``, 0 elsewhere.
* ``identity``: ``shape * len(COLORS) + color`` of the largest visible object.
* Stereo: objects have disparities in ``[max_disparity // 4 + 1, max_disparity]``; the
  background is a plane slanted by row with disparities in ``[0, max_disparity // 4]`` (farther
  than every object). All disparities are integers and textures (including the ``noise``) are
  fixed to the surfaces, so a left pixel that the right view also sees satisfies
  ``image[y, x] == image_right[y, x - disparity[y, x]]`` exactly. ``disparity`` and
  ``disparity_right`` hold the true disparity of the visible surface everywhere, also where the
  match falls outside the other image or is occluded there; use
  ``jaxvision.ops.stereo.left_right_consistency`` to find the matchable pixels.

Example ``i`` of a split depends only on ``(seed, split, i)`` and the constructor settings.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np

from jaxvision.data.example import Example
from jaxvision.data.source import DataError, SourceInfo

SHAPES = ("disk", "square", "triangle", "ring", "cross", "star")
COLORS = ("red", "green", "blue", "yellow", "magenta", "cyan")
# Split name -> random stream; 'eval' and 'validation' are aliases of 'test'.
SPLIT_STREAMS = {"train": 0, "test": 1, "eval": 1, "validation": 1}
KEYS = ("image", "label", "boxes", "box_classes", "mask", "instance_mask", "image_right",
        "disparity", "disparity_right", "identity")

_PALETTE = np.array([[215, 45, 45], [45, 185, 65], [55, 85, 225],
                     [225, 205, 45], [205, 55, 195], [45, 195, 205]], np.float32)
# Circumradius / nominal radius per shape, chosen so every shape covers ~2 r^2 pixels: without
# it thin shapes (triangle, star) would rarely be the largest object and labels would skew.
_EXTENT = (0.80, 1.0, 1.24, 0.955, 1.02, 1.11)
_TRIANGLE_NORMALS = np.array([[0.0, -1.0], [math.cos(math.pi / 6), 0.5],
                              [-math.cos(math.pi / 6), 0.5]], np.float32)
# Nominal radius as a fraction of the image size: one main object, smaller distractors.
_MAIN_RADIUS = (0.18, 0.28)
_OTHER_RADIUS = (0.08, 0.16)
_NUM_TEXTURES = 4  # flat, stripes, checker, radial


def _shape_mask(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Returns the bool coverage of ``shape`` at object coordinates (u, v), circumradius 1."""
    if shape == 0:  # disk
        return u * u + v * v <= 1.0
    if shape == 1:  # square
        return np.maximum(np.abs(u), np.abs(v)) <= 0.7071
    if shape == 2:  # equilateral triangle, inradius 0.5
        n = _TRIANGLE_NORMALS
        return ((u * n[0, 0] + v * n[0, 1] <= 0.5) & (u * n[1, 0] + v * n[1, 1] <= 0.5)
                & (u * n[2, 0] + v * n[2, 1] <= 0.5))
    if shape == 3:  # ring
        rho2 = u * u + v * v
        return (rho2 <= 1.0) & (rho2 >= 0.55 ** 2)
    au, av = np.abs(u), np.abs(v)
    if shape == 4:  # cross of two bars
        return ((au <= 0.3) & (av <= 0.954)) | ((av <= 0.3) & (au <= 0.954))
    # five-pointed star: radius oscillates between 0.4 (valleys) and 1 (points)
    t = np.mod(np.arctan2(v, u) * (5 / (2 * math.pi)), 1.0)
    return np.sqrt(u * u + v * v) <= 0.4 + 0.6 * np.abs(2 * t - 1)


class ProceduralScenes:
    """A random-access source of procedural stereo scenes (see the module docstring).

    ``max_disparity`` is floored to an integer (>= 1). ``noise`` is the std of the surface
    texture noise, 0-255 scale. ``split`` is ``train`` or ``test`` (aliases ``eval``,
    ``validation``); the two draw from disjoint random streams.
    """

    def __init__(self, *, image_size: int = 64, num_examples: int = 1000, min_objects: int = 1,
                 max_objects: int = 4, max_disparity: float = 12.0, noise: float = 8.0,
                 seed: int = 0, split: str = "train"):
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise DataError(f"ProceduralScenes: {what} (config: data.procedural.*).")

        need(isinstance(image_size, (int, np.integer)) and image_size >= 8,
             f"image_size={image_size!r}; expected an int >= 8 (pixels, square images)")
        need(isinstance(num_examples, (int, np.integer)) and num_examples >= 0,
             f"num_examples={num_examples!r}; expected an int >= 0")
        need(isinstance(min_objects, (int, np.integer)) and min_objects >= 1,
             f"min_objects={min_objects!r}; expected an int >= 1")
        need(isinstance(max_objects, (int, np.integer)) and max_objects >= min_objects,
             f"max_objects={max_objects!r}; expected an int >= min_objects={min_objects}")
        need(np.isfinite(max_disparity) and max_disparity >= 1,
             f"max_disparity={max_disparity!r}; expected a number >= 1 (pixels)")
        need(np.isfinite(noise) and noise >= 0, f"noise={noise!r}; expected a number >= 0")
        need(isinstance(seed, (int, np.integer)) and seed >= 0,
             f"seed={seed!r}; expected an int >= 0")
        if split not in SPLIT_STREAMS:
            raise DataError(f"procedural data has no split {split!r}; allowed splits: "
                            f"{', '.join(SPLIT_STREAMS)} ('eval' and 'validation' are 'test'). "
                            "Set data.train_split / data.eval_split accordingly.")
        self.image_size = int(image_size)
        self.num_examples = int(num_examples)
        self.min_objects, self.max_objects = int(min_objects), int(max_objects)
        self.max_disparity = int(math.floor(max_disparity))
        self.noise = float(noise)
        self.seed = int(seed)
        self.split = split
        self._stream = SPLIT_STREAMS[split]
        self._bg_max = self.max_disparity // 4  # background disparities: [0, _bg_max]
        s, wb = self.image_size, self.image_size + self._bg_max
        # Pixel-center grids of the background texture, which extends _bg_max columns past the
        # left image so the right view can show the strip the left view does not.
        self._yy = (np.arange(s, dtype=np.float32) + 0.5)[:, None]
        self._xx = (np.arange(wb, dtype=np.float32) + 0.5)[None, :]
        self._bank: np.ndarray | None = None
        self.info = SourceInfo(
            name="procedural", split=split, keys=KEYS, num_classes=len(SHAPES),
            class_names=SHAPES, num_box_classes=len(SHAPES), num_mask_classes=len(SHAPES) + 1,
            mask_class_names=("background",) + SHAPES,
            num_identities=len(SHAPES) * len(COLORS), max_disparity=float(self.max_disparity))

    def __repr__(self) -> str:
        return (f"ProceduralScenes(split={self.split!r}, n={self.num_examples}, "
                f"size={self.image_size}, objects={self.min_objects}..{self.max_objects}, "
                f"max_disparity={self.max_disparity}, noise={self.noise}, seed={self.seed})")

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> Example:
        """Returns example ``index`` (0 <= index < len) with every key of ``KEYS``."""
        index = operator.index(index)
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for procedural[{self.split}] of "
                             f"length {self.num_examples}")
        return self._generate(np.random.default_rng([self.seed, self._stream, index]))

    def _noise_bank(self) -> np.ndarray:
        # Texture noise is cropped from one fixed bank at random offsets: drawing fresh normals
        # per example would cost more than the rest of the scene.
        if self._bank is None:
            side = 2 * self.image_size + self.max_disparity + 16
            rng = np.random.default_rng([self.seed, 2, 0])
            self._bank = rng.standard_normal((3, side, side), dtype=np.float32) * np.float32(self.noise)
        return self._bank

    def _noise(self, h: int, w: int, fy: float, fx: float) -> np.ndarray:
        bank = self._noise_bank()
        y, x = int(fy * (bank.shape[1] - h)), int(fx * (bank.shape[2] - w))
        return bank[:, y:y + h, x:x + w]

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        """Returns the (3, S, S + bg_max) uint8 background texture in left-view coordinates."""
        s, yy, xx = self.image_size, self._yy, self._xx
        u = rng.random(16).tolist()
        tint = rng.normal(0.0, 25.0, (2, 3, 1, 1)).astype(np.float32)
        c0 = np.float32(60 + 130 * u[0]) + tint[0]
        c1 = np.float32(60 + 130 * u[1]) + tint[1]
        a = 2 * math.pi * u[2]
        t = np.clip(((xx - s / 2) * math.cos(a) + (yy - s / 2) * math.sin(a)) / s + 0.5, 0, 1)
        field = c0 + (c1 - c0) * t
        if u[3] < 0.5:  # stripes across the gradient
            b = 2 * math.pi * u[4]
            phase = (xx * math.cos(b) + yy * math.sin(b)) * (2 * math.pi * (2 + 6 * u[5]) / s)
            field *= 1 + (0.05 + 0.15 * u[6]) * np.sin(phase + 2 * math.pi * u[7])
        for _ in range(int(u[8] * 4)):  # soft color blobs
            by, bx, sigma = (rng.random(3) * s).tolist()
            sigma = 0.1 * s + 0.15 * sigma
            blob = np.exp(((yy - by) ** 2 + (xx - bx) ** 2) * np.float32(-0.5 / sigma ** 2))
            field += blob * rng.normal(0.0, 40.0, (3, 1, 1)).astype(np.float32)
        if self.noise:
            field += self._noise(s, xx.shape[1], u[9], u[10])
        return np.clip(field + 0.5, 0, 255).astype(np.uint8)

    def _window(self, shape: int, d: int, radius: float, cy: float, cx: float, rotation: float
                ) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray] | None:
        """The object's window clipped to rows [0, S) and left-view columns [0, S + d):
        ``(y0, x0, mask (h, w) bool, uu, vv)`` (object-fixed coordinates), or None if empty."""
        s = self.image_size
        rc = radius * _EXTENT[shape]
        y0, y1 = max(0, math.floor(cy - rc)), min(s, math.ceil(cy + rc))
        x0, x1 = max(0, math.floor(cx - rc)), min(s + d, math.ceil(cx + rc))
        if y1 <= y0 or x1 <= x0:
            return None
        dy = ((np.arange(y0, y1, dtype=np.float32) + (0.5 - cy)) / rc)[:, None]
        dx = ((np.arange(x0, x1, dtype=np.float32) + (0.5 - cx)) / rc)[None, :]
        c, sn = math.cos(rotation), math.sin(rotation)
        uu, vv = c * dx + sn * dy, c * dy - sn * dx
        return y0, x0, _shape_mask(shape, uu, vv), uu, vv

    def _objects(self, rng: np.random.Generator) -> tuple:
        """The scene's objects, from the first two draws of ``rng``: ``(n, u, shapes, colors,
        disparities, radii, centres, sprite numbers)``; painting order is by disparity."""
        s, dmax, bgm = self.image_size, self.max_disparity, self._bg_max
        n = int(rng.integers(self.min_objects, self.max_objects + 1))
        u = rng.random((n, 16))  # one draw for every per-object number (fewer numpy calls)
        shapes = (u[:, 13] * len(SHAPES)).astype(np.intp)
        colors = (u[:, 14] * len(COLORS)).astype(np.intp)
        disps = bgm + 1 + (u[:, 15] * (dmax - bgm)).astype(np.intp)
        lo, hi = np.array([_MAIN_RADIUS] + [_OTHER_RADIUS] * (n - 1)).T
        radii = s * (lo + (hi - lo) * u[:, 0])
        centers = s * (0.1 + 0.8 * u[:, 1:3])
        sprite_u = u[:, 4:].copy()
        sprite_u[:, [0, 4]] *= 2 * math.pi  # rotation, stripe direction
        sprite_u[:, 5] *= 2 * math.pi  # texture phase
        return n, u, shapes, colors, disps, radii, centers, sprite_u

    def identities(self) -> np.ndarray:
        """The (N,) int ``identity`` of every example, without rendering the scenes: only the
        objects' left-view masks are drawn, to find the largest visible one (the pk sampler's
        fast path; equal to ``[self[i]['identity'] for i in range(N)]``; ~3x faster), cached."""
        if getattr(self, "_identities", None) is not None:
            return self._identities.copy()
        out = np.empty(self.num_examples, np.int64)
        s = self.image_size
        for index in range(self.num_examples):
            rng = np.random.default_rng([self.seed, self._stream, index])
            n, _, shapes, colors, disps, radii, centers, sprite_u = self._objects(rng)
            instances = np.zeros((s, s), np.intp)
            order = np.argsort(disps, kind="stable")
            for k, i in enumerate(order.tolist(), start=1):
                window = self._window(int(shapes[i]), int(disps[i]), float(radii[i]),
                                      float(centers[i, 0]), float(centers[i, 1]),
                                      float(sprite_u[i, 0]))
                if window is None:
                    continue
                y0, x0, mask = window[:3]
                lx1 = min(x0 + mask.shape[1], s)
                if lx1 > x0:
                    np.copyto(instances[y0:y0 + mask.shape[0], x0:lx1], k,
                              where=mask[:, :lx1 - x0])
            counts = np.bincount(instances.ravel(), minlength=n + 1)[1:]
            visible = np.flatnonzero(counts)
            if len(visible):
                main = int(order[visible[np.argmax(counts[visible])]])
            else:
                main = 0
            out[index] = shapes[main] * len(COLORS) + colors[main]
        self._identities = out
        return out.copy()

    def _sprite(self, shape: int, color: np.ndarray, d: int, radius: float, cy: float, cx: float,
                u: list[float]) -> tuple[int, int, np.ndarray, np.ndarray] | None:
        """Rasterizes one object inside its bounding window, clipped to the rows [0, S) and the
        left-view columns [0, S + d) that either view can show.

        Returns ``(y0, x0, mask (h, w) bool, rgb (3, h, w) uint8)`` or None if nothing is left.
        """
        window = self._window(shape, d, radius, cy, cx, u[0])
        if window is None:
            return None
        y0, x0, mask, uu, vv = window
        y1, x1 = y0 + mask.shape[0], x0 + mask.shape[1]
        texture, amp, freq = int(u[1] * _NUM_TEXTURES), 0.1 + 0.2 * u[2], math.pi * (1.5 + 3 * u[3])
        if texture == 1:  # stripes
            tex = 1 + amp * np.sin(freq * (uu * math.cos(u[4]) + vv * math.sin(u[4])) + u[5])
        elif texture == 2:  # checker
            tex = 1 + amp * np.sign(np.sin(freq * uu + u[5]) * np.sin(freq * vv + u[5]))
        elif texture == 3:  # radial
            tex = 1 + amp * (2 * np.sqrt(uu * uu + vv * vv) - 1)
        else:  # flat
            tex = np.ones_like(uu)
        rgb = tex * color
        if self.noise:
            rgb += self._noise(y1 - y0, x1 - x0, u[6], u[7])
        return y0, x0, mask, np.clip(rgb + 0.5, 0, 255).astype(np.uint8)

    def _generate(self, rng: np.random.Generator) -> Example:
        s, bgm = self.image_size, self._bg_max
        n, u, shapes, colors, disps, radii, centers, sprite_u = self._objects(rng)
        rgbs = (_PALETTE[colors] * (0.7 + 0.4 * u[:, 3:4])
                + rng.normal(0.0, 12.0, (n, 3))).astype(np.float32)[:, :, None, None]

        background = self._background(rng)
        lo_bg, hi_bg = np.sort(rng.integers(0, bgm + 1, 2))
        bg_disp = np.rint(lo_bg + (hi_bg - lo_bg) * (self._yy[:, 0] / s)).astype(np.int64)
        # Images are built channels-first (faster masked copies) and transposed at the end.
        image = background[:, :, :s].copy()
        image_right = np.empty_like(image)
        for v in range(int(lo_bg), int(hi_bg) + 1):  # bg_disp is sorted: one band per value
            r0, r1 = np.searchsorted(bg_disp, [v, v + 1]).tolist()
            image_right[:, r0:r1] = background[:, r0:r1, v:v + s]
        disparity = np.repeat(bg_disp.astype(np.float32)[:, None], s, axis=1)
        disparity_right = disparity.copy()
        instances = np.zeros((s, s), np.intp)  # intp: fastest for bincount and table lookups

        # Painter's order: far (small disparity) first; the stable sort keeps ties in the same
        # order in both views, which keeps equal-depth overlaps consistent.
        order = np.argsort(disps, kind="stable")
        radii_l, centers_l, sprite_l = radii.tolist(), centers.tolist(), sprite_u.tolist()
        windows = []
        for k, i in enumerate(order.tolist(), start=1):
            d = int(disps[i])
            sprite = self._sprite(int(shapes[i]), rgbs[i], d, radii_l[i], centers_l[i][0],
                                  centers_l[i][1], sprite_l[i])
            if sprite is None:
                windows.append(None)
                continue
            y0, x0, mask, rgb = sprite
            h, w = mask.shape
            y1, x1 = y0 + h, x0 + w
            lx1 = min(x1, s)  # left view shows left columns [0, S)
            if lx1 > x0:
                m = mask[:, :lx1 - x0]
                np.copyto(image[:, y0:y1, x0:lx1], rgb[:, :, :lx1 - x0], where=m)
                np.copyto(disparity[y0:y1, x0:lx1], d, where=m)
                np.copyto(instances[y0:y1, x0:lx1], k, where=m)
            windows.append((y0, y1, x0, lx1))
            rx0 = max(x0, d)  # right view shows left columns [d, S + d)
            if x1 > rx0:
                m = mask[:, rx0 - x0:]
                np.copyto(image_right[:, y0:y1, rx0 - d:x1 - d], rgb[:, :, rx0 - x0:], where=m)
                np.copyto(disparity_right[y0:y1, rx0 - d:x1 - d], d, where=m)

        counts = np.bincount(instances.ravel(), minlength=n + 1)[1:]
        visible = np.flatnonzero(counts)
        boxes = np.zeros((len(visible), 4), np.float32)
        for j, k0 in enumerate(visible.tolist()):
            y0, y1, x0, x1 = windows[k0]
            hit = instances[y0:y1, x0:x1] == k0 + 1
            rows, cols = hit.any(axis=1), hit.any(axis=0)
            boxes[j] = (y0 + rows.argmax(), x0 + cols.argmax(),
                        y1 - rows[::-1].argmax(), x1 - cols[::-1].argmax())
        shapes_p, colors_p = shapes[order], colors[order]
        remap = np.zeros(n + 1, np.int32)
        remap[visible + 1] = np.arange(1, len(visible) + 1, dtype=np.int32)
        classes = np.concatenate([[0], shapes_p + 1]).astype(np.int32)
        if len(visible):
            main = int(visible[np.argmax(counts[visible])])
            label_shape, label_color = int(shapes_p[main]), int(colors_p[main])
        else:  # only possible for tiny images: fall back to the designated main object
            label_shape, label_color = int(shapes[0]), int(colors[0])
        return {
            "image": np.ascontiguousarray(image.transpose(1, 2, 0)),
            "label": np.int32(label_shape),
            "boxes": boxes,
            "box_classes": shapes_p[visible].astype(np.int32),
            "mask": classes[instances],
            "instance_mask": remap[instances],
            "image_right": np.ascontiguousarray(image_right.transpose(1, 2, 0)),
            "disparity": disparity,
            "disparity_right": disparity_right,
            "identity": np.int32(label_shape * len(COLORS) + label_color),
        }


def from_config(config: Any, split: str) -> ProceduralScenes:
    """Builds the procedural source of base split ``split`` from the ``data`` ConfigDict.

    ``train`` holds ``data.procedural.num_train`` examples; ``test`` (also ``eval`` /
    ``validation``) holds ``data.procedural.num_eval`` from a disjoint random stream.
    Raises ``DataError`` for another split name or a missing ``procedural`` block.
    """
    p = getattr(config, "procedural", None)
    if p is None:
        raise DataError("data config has no 'procedural' block; start from "
                        "jaxvision.data.config.data_config() which holds the defaults.")
    if split not in SPLIT_STREAMS:
        raise DataError(f"procedural data has no split {split!r}; allowed splits: "
                        f"{', '.join(SPLIT_STREAMS)} ('eval' and 'validation' are 'test'). "
                        "Set data.train_split / data.eval_split accordingly.")
    num = p.num_train if split == "train" else p.num_eval
    return ProceduralScenes(image_size=int(p.image_size), num_examples=int(num),
                            min_objects=int(p.min_objects), max_objects=int(p.max_objects),
                            max_disparity=float(p.max_disparity), noise=float(p.noise),
                            seed=int(p.seed), split=split)
