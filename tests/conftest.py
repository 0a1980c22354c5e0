"""Shared test fixtures: real faces from ../shared/data (skipped when absent) and
dependency-shipped faces (always available)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MASKKIT_SHARED_DATA", REPO.parent / "shared" / "data"))


def _need(sub: str) -> Path:
    p = SHARED_DATA / sub
    if not p.exists():
        pytest.skip(f"real-face data {p} is absent (set MASKKIT_SHARED_DATA to the shared/data folder)")
    return p


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _need("")


@pytest.fixture(scope="session")
def photos_dir() -> Path:
    return _need("photos")


@pytest.fixture(scope="session")
def lfw_johns() -> Path:
    return _need("lfw-johns")


@pytest.fixture(scope="session")
def celeb_aligned() -> Path:
    return _need("celeb-aligned")


@pytest.fixture(scope="session")
def real_masked() -> Path:
    return _need("real-masked")


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """scikit-image's astronaut (RGB uint8), a real face shipped in a dependency."""
    from skimage import data

    return data.astronaut()


@pytest.fixture(scope="session")
def grace_hopper() -> np.ndarray:
    """matplotlib's grace_hopper.jpg (RGB uint8), a real face shipped in a dependency."""
    import matplotlib.cbook as cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        return np.asarray(Image.open(f).convert("RGB"))
