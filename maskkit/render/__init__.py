"""Fit a drawn mask template to a face and composite it: the ``mask`` stage of the pipeline.

Modules, one concern each (everything below is importable from ``maskkit.render``):

* :mod:`~maskkit.render.anchors` -- landmarks -> mask anchors: :func:`check_landmarks`
  (:class:`CannotFit` with a reason token), :func:`anchor_points` (the jaw contour, nose bridge
  and chin; on turned heads the far side follows the front profile and the top edge keeps clear
  of the eyes), :func:`yaw_estimate`;
* :mod:`~maskkit.render.templates` -- :data:`STYLES`, colours and palettes, :class:`Template`
  (drawn RGBA + tint, premultiplied pyramid);
* :mod:`~maskkit.render.renderer` -- :class:`MaskRenderer` (seeded parameters, per-triangle
  premultiplied warp, sharpness match, shading by the face's own lighting, compositing) and
  :class:`MaskResult`;
* :mod:`~maskkit.render.coverage` -- :func:`coverage_check` against the fitted landmarks.

Example:
    >>> renderer = MaskRenderer()                                             # doctest: +SKIP
    >>> res = renderer.render(rgb, lm68, "surgical", np.random.default_rng(0))  # doctest: +SKIP
    >>> res.image.shape, res.alpha.dtype, res.params["style"]                 # doctest: +SKIP
    ((112, 112, 3), dtype('float32'), 'surgical')
"""
from __future__ import annotations

import functools

from typing import Optional

import numpy as np

from .anchors import (DEFAULT_FIT, ENVELOPE_MARGIN, EYE_CLEAR, FIT_JITTER, JAW_SHORTFALL, N_ANCHORS, N_BOUNDARY,
                      N_INTERIOR, CannotFit, anchor_points, check_landmarks, yaw_estimate)
from .coverage import CLEAR_IDX, COVER_IDX, coverage_check
from .renderer import MaskRenderer, MaskResult
from .templates import COLOURS, PALETTES, STYLES, TEXTURES, Template, templates_dir

__all__ = [
    "STYLES",
    "COLOURS",
    "PALETTES",
    "TEXTURES",
    "CannotFit",
    "MaskResult",
    "Template",
    "MaskRenderer",
    "render_mask",
    "anchor_points",
    "check_landmarks",
    "templates_dir",
    "DEFAULT_FIT",
    "FIT_JITTER",
    "JAW_SHORTFALL",
    "EYE_CLEAR",
    "ENVELOPE_MARGIN",
    "N_ANCHORS",
    "N_BOUNDARY",
    "N_INTERIOR",
    "COVER_IDX",
    "CLEAR_IDX",
    "coverage_check",
    "yaw_estimate",
    "default_renderer",
]

@functools.lru_cache(maxsize=1)
def default_renderer() -> MaskRenderer:
    """The renderer with the shipped templates, built once per process (a worker's model)."""
    return MaskRenderer()


def render_mask(
    rgb: np.ndarray,
    landmarks68: np.ndarray,
    style: str,
    rng: Optional[np.random.Generator] = None,
    renderer: Optional[MaskRenderer] = None,
) -> MaskResult:
    """Convenience wrapper: render with ``renderer`` or :func:`default_renderer`."""
    renderer = renderer if renderer is not None else default_renderer()
    return renderer.render(rgb, landmarks68, style, rng)
