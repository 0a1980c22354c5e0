"""Judge a rendered mask against the landmarks it was fitted to: the lower nose, the mouth and the
chin covered, the eyes clear (:func:`coverage_check`)."""
from __future__ import annotations

from typing import Any, Dict

import numpy as np

__all__ = ["COVER_IDX", "CLEAR_IDX", "coverage_check"]


#: Landmarks the mask must cover (alpha >= 0.5): lower nose, mouth, chin.
COVER_IDX = tuple(range(31, 36)) + tuple(range(48, 68)) + (8,)
#: Landmarks the mask must leave clear (alpha < 0.1): the eyes.
CLEAR_IDX = tuple(range(36, 48))


def _sample(alpha: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Bilinear samples of ``alpha`` at ``pts`` (NaN for points outside the image)."""
    h, w = alpha.shape
    x, y = pts[:, 0], pts[:, 1]
    inside = (x >= 0) & (y >= 0) & (x <= w - 1) & (y <= h - 1)
    xc, yc = np.clip(x, 0, w - 1), np.clip(y, 0, h - 1)
    x0 = np.clip(np.floor(xc).astype(int), 0, max(w - 2, 0))
    y0 = np.clip(np.floor(yc).astype(int), 0, max(h - 2, 0))
    fx, fy = xc - x0, yc - y0
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    v = (alpha[y0, x0] * (1 - fx) * (1 - fy) + alpha[y0, x1] * fx * (1 - fy)
         + alpha[y1, x0] * (1 - fx) * fy + alpha[y1, x1] * fx * fy)
    return np.where(inside, v, np.nan)


def coverage_check(alpha: np.ndarray, landmarks68: np.ndarray, below_chin: float = 0.02) -> Dict[str, Any]:
    """Check a mask's placement against the face's landmarks.

    Rules: alpha >= 0.5 at the lower nose (31-35), the mouth (48-67) and the chin (8), and also
    ``below_chin * |lm8 - lm27|`` below the chin (the mask extends past it); alpha < 0.1 at the
    eyes (36-47). Points outside the image are not judged (reported in ``unjudged``).

    Returns:
        ``{"ok": bool, "uncovered": [idx...], "eyes_covered": [idx...], "below_chin": bool | None,
        "unjudged": int}``.
    """
    lm = np.asarray(landmarks68, dtype=np.float64)
    cov = _sample(alpha, lm[list(COVER_IDX)])
    clr = _sample(alpha, lm[list(CLEAR_IDX)])
    down = lm[8] - lm[27]
    past = lm[8] + down * below_chin
    bc = _sample(alpha, past[None])[0]
    uncovered = [i for i, a in zip(COVER_IDX, cov) if np.isfinite(a) and a < 0.5]
    eyes = [i for i, a in zip(CLEAR_IDX, clr) if np.isfinite(a) and a >= 0.1]
    below = None if not np.isfinite(bc) else bool(bc >= 0.5)
    unjudged = int((~np.isfinite(cov)).sum() + (~np.isfinite(clr)).sum() + (below is None))
    return {"ok": not uncovered and not eyes and below is not False, "uncovered": uncovered, "eyes_covered": eyes,
            "below_chin": below, "unjudged": unjudged}
