"""Small real-face sets for the training tests: an unmasked shard set made by ``maskkit synth
--ratio 0`` (every sample carries its 68 landmarks) and a verification ``.bin`` of other faces.

Faces: ``../shared/data/celeb-aligned`` when present (ArcFace-aligned crops, ``--aligned``), else
crops of scikit-image's astronaut and matplotlib's Grace Hopper at several margins (detected and
aligned by synth; two real faces, so identities beyond two reuse them under new names).
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from conftest import SHARED_DATA

CELEB = SHARED_DATA / "celeb-aligned"


def _shipped_faces() -> dict[str, np.ndarray]:
    from PIL import Image
    import matplotlib.cbook as cbook
    from skimage import data

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        hopper = np.asarray(Image.open(f).convert("RGB"))
    # (photo, face box y0, x0, y1, x1)
    return {"astronaut": (data.astronaut(), (30, 170, 190, 330)), "grace_hopper": (hopper, (90, 160, 330, 400))}


def face_tree(dst: Path, sizes: list[int], skip_ids: int = 0) -> tuple[Path, bool]:
    """Identity folders with ``sizes[i]`` images each under ``dst``; returns ``(dst, aligned)``.

    celeb-aligned: identities ``skip_ids, skip_ids + 1, ...`` in name order, symlinked (aligned
    crops). Otherwise: crops of the two shipped faces at different margins (``aligned`` False)."""
    dst.mkdir(parents=True, exist_ok=True)
    if CELEB.exists():
        ids = sorted(p for p in CELEB.iterdir() if p.is_dir())[skip_ids:skip_ids + len(sizes)]
        for d, n in zip(ids, sizes):
            (dst / d.name).mkdir()
            for f in sorted(d.iterdir())[:n]:
                (dst / d.name / f.name).symlink_to(f)
        return dst, True
    faces = list(_shipped_faces().items())
    for i, n in enumerate(sizes):
        name, (img, (y0, x0, y1, x1)) = faces[(i + skip_ids) % 2]
        (dst / f"{name}_{i}").mkdir()
        for j in range(n):
            m = 40 + 12 * j + 5 * i  # a different margin: a different crop (and a different alignment)
            crop = img[max(0, y0 - m):y1 + m, max(0, x0 - m):x1 + m]
            cv2.imwrite(str(dst / f"{name}_{i}" / f"{j:03d}.jpg"), np.ascontiguousarray(crop[:, :, ::-1]))
    return dst, False


def plain_set(tmp: Path, sizes: list[int], shard_samples: int = 8) -> Path:
    """An unmasked shard set (``synth --ratio 0``) of real faces, identity ``i`` with ``sizes[i]``
    images (fewer if synth rejects one: the manifest says what was kept)."""
    from maskkit.pipeline.synth import SynthConfig, run_synth

    src, aligned = face_tree(tmp / "faces", sizes)
    out = tmp / "plain"
    run_synth(SynthConfig(src=src, out=out, ratio=0.0, aligned=aligned, shard_samples=shard_samples, jobs=1,
                          progress=False))
    return out


def verification_bin(path: Path, n_pairs: int = 20, skip_ids: int = 10) -> Path:
    """A ``.bin`` of ``n_pairs`` pairs (half same, half different) of faces the training sets do
    not use (celeb-aligned identities from ``skip_ids`` on; else flipped shipped faces)."""
    from maskkit.training.eval.evalsets import write_bin

    rng = np.random.default_rng(0)
    if CELEB.exists():
        ids = sorted(p for p in CELEB.iterdir() if p.is_dir())[skip_ids:skip_ids + 2]
        faces = [[cv2.imread(str(f))[:, :, ::-1].copy() for f in sorted(d.iterdir())[:n_pairs]] for d in ids]
    else:
        faces = []
        for img, (y0, x0, y1, x1) in _shipped_faces().values():
            one = []
            for j in range(n_pairs):
                dy, dx = rng.integers(-6, 7, 2)
                crop = img[max(0, y0 + dy):y1 + dy, max(0, x0 + dx):x1 + dx]
                one.append(cv2.resize(np.ascontiguousarray(crop[:, ::-1]), (112, 112), interpolation=cv2.INTER_AREA))
            faces.append(one)
    images, issame = [], []
    for p in range(n_pairs):
        a = faces[p % 2][p // 2]
        if p % 4 < 2:  # same identity
            b = faces[p % 2][(p // 2 + 3) % len(faces[p % 2])]
        else:
            b = faces[1 - p % 2][p // 2]
        images += [a, b]
        issame.append(p % 4 < 2)
    write_bin(path, images, issame)
    return path


def log_records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
