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
    demo/demo.json                        this demo's options, and "finished" once done

Outputs are claimed as every command claims them (:func:`claim_demo`): a folder that holds this
demo, finished, is "already complete" (nothing is redone) -- unless a shard is missing or not at
its listed size, an error that names it and points to ``--overwrite``, as ``maskkit synth`` says; this demo, unfinished, is continued
(align and synth resume); anything else a demo would write -- another demo's output, or any
file at these names -- is refused unless ``--overwrite``, which removes it first.
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


#: The demo's record in its output folder (:func:`claim_demo`).
DEMO_RECORD = "demo.json"
#: What a demo writes in its output folder (besides :data:`DEMO_RECORD`).
DEMO_OUTPUTS = ("src", "aligned", "shards", "preview.png")


class DemoError(RuntimeError):
    """The demo's output folder holds something it would replace (the CLI shows one line)."""


def demo_info(detector: str) -> dict:
    """What makes two demos the same run: the options that change their outputs."""
    from maskkit.pipeline.synth.config import ALGORITHM_VERSION

    return {"command": "maskkit demo", "detector": detector, "variants": list(VARIANTS),
            "synth_algorithm": ALGORITHM_VERSION}


def _complete(out: Path) -> bool:
    src = out / "src"
    n_src = len(list(src.rglob("*.jpg"))) if src.is_dir() else 0
    return (n_src == 2 * len(VARIANTS) and (out / "aligned" / "manifest.jsonl").is_file()
            and (out / "shards" / "manifest.json").is_file() and (out / "preview.png").is_file())


def claim_demo(out: Path, info: dict, overwrite: bool) -> bool:
    """Claim ``out`` for the demo ``info`` (:func:`demo_info`), as every command claims its outputs.

    Returns:
        True when ``out`` already holds this demo, finished, with all its outputs (the caller
        says "already complete" and does nothing). Otherwise False, after recording ``info``
        (unfinished) in :data:`DEMO_RECORD`: ``out`` is free, or holds this demo unfinished (it
        is continued), or held another demo's or anyone's files at the demo's names and
        ``overwrite`` removed them.

    Raises:
        DemoError: ``out`` holds files at the demo's names (:data:`DEMO_OUTPUTS`) that are not
            this demo's, and ``overwrite`` is false; or it holds this demo, finished, but a shard
            is missing or not at its listed size (the check ``maskkit synth`` makes,
            :func:`maskkit.pipeline.synth.journal.finished_set_damage`).
    """
    import json

    from maskkit.util.files import OutputExistsError, claim_folder, claim_outputs, write_atomic

    rec = out / DEMO_RECORD
    previous = None
    if rec.is_file():
        try:
            previous = json.loads(rec.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = {"unreadable": True}
    finished = previous.pop("finished", False) if isinstance(previous, dict) else False
    ours = previous == info
    if ours and not overwrite and finished and _complete(out):
        # the shards are checked as a finished `maskkit synth` checks them (a stat each)
        from maskkit.pipeline.synth.journal import finished_set_damage

        try:
            man = json.loads((out / "shards" / "manifest.json").read_text(encoding="utf-8"))
            damage = finished_set_damage(out / "shards", man)
        except (OSError, ValueError) as exc:
            damage = f"{out / 'shards' / 'manifest.json'} cannot be read ({exc}); pass --overwrite to rebuild the demo"
        if damage:
            raise DemoError(damage)
        return True
    if previous is None:  # a folder of somebody's files: refused, or with --overwrite written beside them
        try:
            claim_folder(out, lambda rel: rel.split("/", 1)[0] in (*DEMO_OUTPUTS, DEMO_RECORD), overwrite,
                         what="maskkit demo's output")
        except OutputExistsError as exc:
            raise DemoError(str(exc)) from exc
    if not ours or overwrite:
        present = [out / n for n in (*DEMO_OUTPUTS, DEMO_RECORD) if (out / n).exists() or (out / n).is_symlink()]
        what = "the output of a maskkit demo with other options" if previous is not None \
            else "files that maskkit demo writes"
        try:
            claim_outputs(present, overwrite, what, remove=True, where=out)
        except OutputExistsError as exc:
            raise DemoError(str(exc)) from exc
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(rec, (json.dumps({**info, "finished": False}, indent=1) + "\n").encode("utf-8"))
    return False


def finish_demo(out: Path, info: dict) -> None:
    """Mark the demo recorded in ``out`` as finished (a rerun is then "already complete")."""
    import json

    from maskkit.util.files import write_atomic

    write_atomic(out / DEMO_RECORD, (json.dumps({**info, "finished": True}, indent=1) + "\n").encode("utf-8"))


def build_demo_tree(src: Path) -> int:
    """Write ``src/<identity>/<variant>.jpg`` for both shipped faces; returns the file count.

    A file that already holds the same bytes is left as it is (a continued demo keeps its
    inputs, so align and synth find their own finished work)."""
    from maskkit.face.detect import make_detector
    from maskkit.face.selection import select_faces
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
            data, path = encode_jpeg(img, quality=92), d / f"{name}.jpg"
            if not (path.is_file() and path.read_bytes() == data):
                path.write_bytes(data)
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
