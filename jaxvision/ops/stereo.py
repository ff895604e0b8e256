"""Host-side (numpy) helpers for rectified stereo pairs.

Conventions (as in ``jaxvision/data/example.py``): disparities are in pixels, a left pixel
``(y, x)`` with disparity ``d`` shows the surface point that the right view shows at
``(y, x - d)``, and a right pixel ``(y, x)`` with disparity ``d_r`` matches left ``(y, x + d_r)``.
Negative or non-finite values mean "unknown" (``INVALID_DISPARITY``).
"""

from __future__ import annotations

import numpy as np

from jaxvision.data.example import disparity_valid


def left_right_consistency(disparity: np.ndarray, disparity_right: np.ndarray,
                           tol: float = 0.5) -> np.ndarray:
    """Returns an (H, W) bool mask of the left pixels that are visible in both views.

    A left pixel ``(y, x)`` with disparity ``d = disparity[y, x]`` passes when ``d`` is valid,
    its match column ``xr = round(x - d)`` (round half to even, as numpy's ``rint``) lies in
    ``[0, W)``, ``disparity_right[y, xr]`` is valid, and
    ``|disparity_right[y, xr] - d| <= tol``. Pixels failing the last test are occluded in the
    right view (the right view sees a nearer surface there); pixels whose match falls outside
    the image have no match at all.

    Args:
      disparity: (H, W) left-view disparity, pixels.
      disparity_right: (H, W) right-view disparity, pixels.
      tol: largest allowed disagreement between the two disparities, pixels (>= 0).
    """
    dl = np.asarray(disparity)
    dr = np.asarray(disparity_right)
    if dl.ndim != 2:
        raise ValueError(f"left_right_consistency: 'disparity' has shape {dl.shape}; expected "
                         "(H, W). Pass one example's map, not a batch (loop over the batch).")
    if dr.shape != dl.shape:
        raise ValueError(f"left_right_consistency: 'disparity_right' has shape {dr.shape} but "
                         f"'disparity' has shape {dl.shape}; both must be the same (H, W).")
    if not tol >= 0:
        raise ValueError(f"left_right_consistency: 'tol' is {tol}; expected a number >= 0 (pixels).")
    h, w = dl.shape
    valid = disparity_valid(dl)
    # Invalid pixels get a harmless placeholder column so the gather below stays in bounds.
    xr = np.rint(np.arange(w, dtype=np.float64)[None, :] - np.where(valid, dl, 0.0))
    inside = valid & (xr >= 0) & (xr < w)
    cols = np.where(inside, xr, 0).astype(np.intp)
    d_match = np.take_along_axis(dr, cols, axis=1)
    with np.errstate(invalid="ignore"):  # inf - inf on invalid pixels, masked out anyway
        ok = disparity_valid(d_match) & (np.abs(d_match.astype(np.float64) - dl) <= tol)
    return inside & ok
