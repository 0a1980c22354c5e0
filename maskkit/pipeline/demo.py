"""The demo tree and contact sheet for ``maskkit demo`` (faces shipped in dependencies).

Builds a two-identity tree from scikit-image's ``astronaut`` (Eileen Collins) and matplotlib's
``grace_hopper.jpg`` with deterministic photometric, crop, scale, flip and rotation variants,
then runs ``maskkit align`` (aligned crops), ``maskkit synth --ratio 0.5 --paired`` (shards) and
draws a contact sheet. Nothing is downloaded; runs in well under a minute on one core.

Layout written::

    demo/src/<identity>/<variant>.jpg     the identity tree (inputs)
    demo/aligned/<identity>/<variant>.jpg  maskkit align output (+ manifest.jsonl, failures.jsonl)
    demo/shards/                          maskkit synth output (train-*.tar, manifest.json, ...)
    demo/preview.png                      styles x faces contact sheet
"""
from __future__ import annotations

from pathlib import Path

import click
import numpy as np

#: Variant names written for each identity.
VARIANTS = ("original", "bright", "dark_gamma", "low_contrast", "crop_tight", "crop_loose",
            "scale_small", "scale_large", "flip", "rotate")


def _variants(rgb: np.ndarray, box: tuple[float, float, float, float]) -> dict[str, np.ndarray]:
    """Deterministic variants of one photo; ``box`` is its face box (for the crops)."""
    import cv2

    f = rgb.astype(np.float32)
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = box
    cx, cy, s = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0)

    def crop(k: float) -> np.ndarray:
        a, b = int(max(0, cx - k * s / 2)), int(max(0, cy - k * s / 2))
        c, d = int(min(w, cx + k * s / 2)), int(min(h, cy + k * s / 2))
        return rgb[b:d, a:c]

    rot = cv2.getRotationMatrix2D((cx, cy), 8.0, 1.0)
    out = {
        "original": rgb,
        "bright": f * 1.2 + 20,
        "dark_gamma": 255.0 * (f / 255.0) ** 1.6,
        "low_contrast": (f - 128) * 0.6 + 128,
        "crop_tight": crop(1.8),
        "crop_loose": crop(3.0),
        "scale_small": cv2.resize(rgb, (int(w * 0.6), int(h * 0.6)), interpolation=cv2.INTER_AREA),
        "scale_large": cv2.resize(rgb, (int(w * 1.4), int(h * 1.4)), interpolation=cv2.INTER_CUBIC),
        "flip": rgb[:, ::-1],
        "rotate": cv2.warpAffine(rgb, rot, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT),
    }
    return {k: np.ascontiguousarray(np.clip(v, 0, 255).astype(np.uint8)) for k, v in out.items()}


def build_demo_tree(src: Path) -> int:
    """Write ``src/<identity>/<variant>.jpg`` for both shipped faces; returns the file count."""
    from maskkit.face.detect import make_detector, select_faces
    from maskkit.io.image_io import encode_jpeg
    from maskkit.pipeline.preview import demo_images

    det = make_detector("hog")
    n = 0
    for ident, rgb in demo_images().items():
        faces = select_faces(det.detect(rgb), "largest", rgb.shape)
        if not faces:  # pragma: no cover - both shipped photos hold a clear frontal face
            raise click.ClickException(f"no face found in the shipped {ident} image")
        d = src / ident
        d.mkdir(parents=True, exist_ok=True)
        for name, img in _variants(rgb, faces[0].box).items():
            (d / f"{name}.jpg").write_bytes(encode_jpeg(img, quality=92))
            n += 1
    return n


def write_sheet(src: Path, shards: Path, path: Path, cell: int = 160) -> int:
    """Contact sheet of what synth wrote: per masked sample, the source photo, its plain twin,
    the masked face and the mask coverage. Uses ``maskkit.pipeline.preview.contact_sheet``. Returns rows."""
    import cv2
    from PIL import Image

    from maskkit.io.image_io import decode_image, load_image
    from maskkit.io.shards import read_samples
    from maskkit.pipeline.preview import contact_sheet

    samples = {s["key"]: s for s in read_samples(shards)}
    rows = []
    for s in samples.values():
        meta = s["json"]
        if not meta["masked"]:
            continue
        photo = load_image(src / meta["src"])
        h, w = photo.shape[:2]
        k = cell / max(h, w)
        thumb = np.full((cell, cell, 3), 255, np.uint8)
        small = cv2.resize(photo, (max(1, int(w * k)), max(1, int(h * k))), interpolation=cv2.INTER_AREA)
        thumb[: small.shape[0], : small.shape[1]] = small
        big = lambda a: cv2.resize(a, (cell, cell), interpolation=cv2.INTER_CUBIC)  # noqa: E731
        plain = decode_image(samples[meta["twin"]]["jpg"]) if meta.get("twin") in samples else None
        cov = decode_image(s["mask.png"]) if s.get("mask.png") else np.zeros((112, 112, 3), np.uint8)
        masked = decode_image(s["jpg"])
        rows.append([thumb, big(plain if plain is not None else masked), big(masked), big(cov)])
    if not rows:
        raise ValueError(f"no masked samples in {shards}")
    sheet = contact_sheet(rows, ["source photo", "aligned (plain twin)", "aligned + synthetic mask", "mask coverage"])
    Image.fromarray(sheet).save(path, format="PNG")
    return len(rows)
