"""The readable images under a folder, for the benchmarks that look at every face in a set."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from maskkit.io.image_io import ImageError, load_image
from maskkit.io.sources import iter_sources


def readable_images(root: Path) -> Iterator[tuple[str, np.ndarray]]:
    """``(relative path, (H, W, 3) uint8 RGB)`` for every image under ``root`` that decodes
    (``maskkit.io.sources`` order; files that are no image or do not decode are passed over)."""
    for it in iter_sources(root):
        if it.error:
            continue
        try:
            yield it.rel, load_image(it.path)
        except ImageError:
            continue
