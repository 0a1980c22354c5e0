"""``maskkit export-rec``: a shard folder (``docs/FORMAT.md``) written as an insightface
``train.rec`` / ``train.idx`` / ``property`` set, with maskkit's sidecar (the format:
:mod:`maskkit.io.recordio`)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from maskkit.io.recordio import IRHeader, RecordWriter, pack_header, sidecar_path
from maskkit.util.outcome import OutputFull

__all__ = ["export_rec"]


def export_rec(shards_dir: str | os.PathLike, out_dir: str | os.PathLike, prefix: str = "train",
               only: str = "all", verify: bool = True) -> dict:
    """Write a shard dataset as insightface ``train.rec``, ``train.idx`` and ``property``.

    Images are records ``1..N`` in class order (``maskkit synth`` writes shards in class order,
    so this is one streaming pass; other orders take one pass per class), then one identity
    record per class with its image range, and record 0 the header record. The JPEG bytes are
    copied unchanged; ``id2`` is 1 for a synthetically masked face.

    Args:
        shards_dir: a finished shard folder (with ``manifest.json``).
        out_dir: output folder (created).
        prefix: file name prefix (``train`` gives ``train.rec`` / ``train.idx``).
        only: ``"all"`` samples, only the ``"plain"`` ones (e.g. to mask the set again with
            ``maskkit synth --src train.rec --aligned`` without drawing a second mask on a masked
            face), or only the ``"masked"`` ones.
        verify: first check the set against its manifest as ``maskkit stats`` does
            (:func:`maskkit.io.shard_verify.verify`: shard sizes, sha256, counts, labels against
            ``classes``, unlisted shards...; one extra sequential read of the shards); nothing is
            written when anything differs.

    Returns:
        ``{"images", "classes", "rec", "idx", "property", "bytes"}``.

    Raises:
        FileNotFoundError: no ``manifest.json``.
        ManifestError: a damaged manifest (:func:`maskkit.io.shards.read_manifest`), or a sample
            whose label lies outside its ``classes``.
        maskkit.io.shard_verify.ShardMismatchError: ``verify`` and the set differs from its manifest
            (anything ``maskkit stats`` reports as a MISMATCH).
        maskkit.util.outcome.OutputFull: an output file could not be written (no space, quota,
            read-only...); it names the file (``PREFIX.rec``, ...). Nothing is written then: the
            partial ``*.tmp`` files are removed (on any other error or Ctrl-C too), and an
            earlier export at the same names is left as it was.
    """
    from maskkit.io.shard_verify import ShardMismatchError
    from maskkit.io.shard_verify import verify as verify_set
    from maskkit.io.shards import ManifestError, read_manifest, read_samples

    if only not in ("all", "plain", "masked"):
        raise ValueError(f"only must be 'all', 'plain' or 'masked', not {only!r}")
    man = read_manifest(shards_dir)  # FileNotFoundError / ManifestError: one line naming the file
    if verify and not (rep := verify_set(shards_dir)).ok:
        raise ShardMismatchError(shards_dir, rep.problems)

    def keep(sample: dict) -> bool:
        return only == "all" or bool(sample["json"].get("masked")) == (only == "masked")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    classes = man["classes"]
    h, w = man.get("image_size", [112, 112])
    # first pass: labels only (the JPEG members are skipped unread)
    samples = [s for s in read_samples(shards_dir, members=("json",)) if keep(s)]
    for s in samples:  # (verify checks this too; --no-verify must still not index past the classes)
        lab = s["json"].get("label")
        if not isinstance(lab, int) or isinstance(lab, bool) or not 0 <= lab < len(classes):
            raise ManifestError(f"{Path(shards_dir) / 'manifest.json'}: sample {s['key']} ({s['shard']}) has "
                                f"label {lab!r}, but 'classes' lists {len(classes)} classes: the manifest does "
                                "not belong to these shards")
    labels = [s["json"]["label"] for s in samples]
    del samples
    n = len(labels)
    counts = [0] * len(classes)
    for lab in labels:
        counts[lab] += 1
    rec_p, idx_p = out / f"{prefix}.rec", out / f"{prefix}.idx"
    prop, side = out / "property", sidecar_path(rec_p)
    finals = (rec_p, idx_p, prop, side)
    tmps = tuple(q.with_name(q.name + ".tmp") for q in finals)  # renamed into place once all are written
    sorted_stream = all(a <= b for a, b in zip(labels, labels[1:]))
    passes = [None] if sorted_stream else list(range(len(classes)))
    n_masked = 0

    def writing(step, *args):
        """A write of the export: an ``OSError`` (a full disk, ...) becomes ``OutputFull`` naming the
        output file it was for (an ``OSError`` of reading the shards stays one)."""
        try:
            return step(*args)
        except OSError as exc:
            tmp = Path(exc.filename) if exc.filename else tmps[0]
            raise OutputFull.of(exc, finals[tmps.index(tmp)] if tmp in tmps else tmp) from None

    try:
        wr = writing(RecordWriter, tmps[0], tmps[1])
        try:
            writing(wr.write, 0, pack_header(IRHeader(2, (n + 1, n + 1 + len(classes)), 0, 0), b""))
            key = 1
            for cls in passes:
                for s in read_samples(shards_dir):
                    lab = s["json"]["label"]
                    if (cls is not None and lab != cls) or not keep(s):
                        continue
                    if key == 1:  # the first face: property's H,W must be the images' size
                        _check_size(s, (h, w), shards_dir)
                    masked = int(bool(s["json"].get("masked")))
                    n_masked += masked
                    writing(wr.write, key, pack_header(IRHeader(0, float(lab), key, masked), s["jpg"]))
                    key += 1
            start = 1
            for lab, c in enumerate(counts):
                writing(wr.write, n + 1 + lab, pack_header(IRHeader(2, (start, start + c), n + 1 + lab, 0), b""))
                start += c
        except BaseException:
            try:
                wr.close()
            except OSError:  # the disk is full: the first error is the one to report
                pass
            raise
        writing(wr.close)
        writing(tmps[2].write_text, f"{len(classes)},{h},{w}\n", "ascii")
        writing(tmps[3].write_text, json.dumps({"tool": "maskkit", "id2": "1 = face synthetically masked by maskkit",
                                                "only": only, "images": n, "masked": n_masked,
                                                "classes": classes}, indent=1) + "\n", "utf-8")
    except BaseException:  # a full disk, Ctrl-C, a bad shard: no partial file is left behind
        for t in tmps:
            try:
                t.unlink(missing_ok=True)
            except OSError:  # pragma: no cover - the error being raised is the one to report
                pass
        raise
    for t, final in zip(tmps, finals):
        os.replace(t, final)
    return {"images": n, "classes": len(classes), "rec": str(rec_p), "idx": str(idx_p),
            "property": str(prop), "sidecar": str(side), "bytes": rec_p.stat().st_size}


def _check_size(sample: dict, size: tuple[int, int], shards_dir) -> None:
    """Raise ``ManifestError`` when ``sample``'s JPEG does not decode to the manifest's
    ``image_size`` (``property`` would state a size the images do not have)."""
    import cv2
    import numpy as np

    from maskkit.io.shards import ManifestError

    img = cv2.imdecode(np.frombuffer(sample["jpg"] or b"", np.uint8), cv2.IMREAD_COLOR)
    got = None if img is None else tuple(img.shape[:2])
    if got != tuple(size):
        what = "does not decode" if got is None else f"is {got[0]}x{got[1]}"
        raise ManifestError(f"{Path(shards_dir) / 'manifest.json'}: 'image_size' says {size[0]}x{size[1]}, but the "
                            f"image of sample {sample['key']} ({sample['shard']}) {what}")
