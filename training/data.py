"""Training data: a deterministic, resumable WebDataset pipeline over maskkit shards.

Reads the shard format of ``docs/FORMAT.md`` (``manifest.json`` + ``<split>-%06d.tar``; each
sample ``KEY.jpg`` + ``KEY.json`` with ``label`` and ``masked``). A shard set whose samples
carry no ``masked`` key, or are all unmasked (``maskkit align --format shards``), is read with
``masked = False``.

**Streams.** The loader of one process (rank) with ``W`` workers reads ``S = world x W``
independent *slots* (``slot = rank x W + worker``). In epoch ``e``, cycle ``c``, all slots agree on
one shard permutation drawn from ``(seed, e, c)``; with at least ``S`` shards, slot ``k`` reads
shards ``perm[k::S]`` (shards split by rank and worker); with fewer shards, every slot reads all
of them and keeps every ``S``-th sample (sample-level split, for tiny sets). Each slot's samples
go through a WebDataset shuffle buffer seeded by ``(seed, e, c, slot)``, are decoded, augmented
with an RNG seeded by ``(seed, e, slot, index in the stream)`` and batched inside the worker. A
slot cycles (``c = 0, 1, ...``) until the epoch's step count is reached, so every rank yields the
same number of batches (``steps_per_epoch = num_samples // global batch``, DDP-safe) and an
epoch sees every sample about once.

**Order.** The DataLoader takes batches from its workers round-robin (in order), so batch ``b``
of an epoch is worker ``b % W``'s batch ``b // W``: the order is a pure function of
``(seed, epoch, world size, num_workers, batch size, shards)``. Inside a batch the unmasked
samples come first, then the masked ones (a stable grouping), so the two-stream model runs each
start block on a slice of the batch (:meth:`~maskkit.training.model.FaceModel.route`).

**Resume.** :meth:`ShardStream.set_epoch` takes the number of batches already consumed in the
epoch; each worker drops its share of them *before* decoding (the tar bytes are read, but not
decoded or augmented) and the stream continues exactly where it stopped. This makes resume
exact for the same world size, workers and batch size. With a changed world size (or workers)
the slots are partitioned differently: training continues at the same epoch and the same
number of samples into it (each new slot skips its share), which restores the position at
sample granularity but not the identical sample order.

**Failures.** A sample that cannot be read (a bad JPEG or JSON, a label outside the classes) is
logged and skipped; a shard that cannot be read on (a disk error, a truncated tar) is logged and
the stream goes on with the next one. Each is also recorded (``key`` or ``None``, ``shard``,
``reason``, ``detail``, ``lost``: the samples it cost this stream, for a shard the ones its
manifest lists beyond those read) and handed to the loop with the next batch of that worker
(``"failed"``), which counts them per epoch.

**Online masks.** With a ``masker`` (:class:`~maskkit.training.online_masks.OnlineMasks`), each
decoded face is offered to it before augmentation; it draws the epoch's planned mask (or leaves
the face as it is) and sets the sample's ``masked`` flag. A planned face the renderer could not
fit is recorded in the batch's ``"mask_failed"``.

**Augmentation.** RandomCrop: zero-pad by ``crop_pad`` pixels (default 4) and crop back to the
input size at a random offset (up to +-4 px, a small shift that keeps the alignment roughly in
place); horizontal flip with p = 0.5. Images stay uint8 NHWC in the loader; the engine
normalises on the device as ``(x - 127.5) / 127.5``.
"""
from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from maskkit.io.crop_template import MIN_SIDE, change_note
from maskkit.training.errors import TrainError

log = logging.getLogger(__name__)


@dataclass
class ShardSet:
    """A shard folder: tar URLs plus what the manifest says about them."""

    root: Path
    urls: list[str]
    num_samples: int
    num_masked: int
    classes: list[str]
    manifest: dict[str, Any]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def open_shards(root: str | Path, split: str = "train") -> ShardSet:
    """Read ``manifest.json`` of a shard folder; raises a clear error when it is not a dataset."""
    root = Path(root)
    mf = root / "manifest.json"
    if not mf.exists():
        hint = ""
        if root.is_dir() and (root / ".synth.lock").exists():
            hint = "; a synth run is writing (or was killed in) it: rerun that synth command to finish it"
        elif root.is_dir() and any(p.is_dir() or p.suffix.lower() in (".jpg", ".jpeg", ".png")
                                   for p in list(root.iterdir())[:200]):
            hint = (f"; for a folder of face images run `maskkit synth --src {root} --out shards/` (add "
                    "--aligned for 112x112 aligned crops) and train on shards/")
        raise FileNotFoundError(f"{root} has no manifest.json: not a maskkit shard folder, or an "
                                f"unfinished one (the manifest is written last){hint}")
    from maskkit.io.shards import read_manifest

    manifest = read_manifest(root)  # ManifestError (a ValueError): damaged, one line naming the file
    if manifest.get("format") != "maskkit-shards":
        raise ValueError(f"{mf}: format is {manifest.get('format')!r}, expected 'maskkit-shards'")
    if int(manifest.get("version", 0)) != 1:
        raise ValueError(f"{mf}: unsupported shard format version {manifest.get('version')!r} (reader: 1)")
    names = [s["name"] for s in manifest.get("shards", []) if str(s["name"]).startswith(split + "-")]
    if not names:
        names = sorted(p.name for p in root.glob(f"{split}-*.tar"))
    missing = [n for n in names if not (root / n).exists()]
    if missing:
        raise FileNotFoundError(f"{root}: shards listed in the manifest are missing: {missing[:5]}")
    if not names:
        raise ValueError(f"{root}: no '{split}-*.tar' shards")
    classes = list(manifest.get("classes") or [])
    if not classes:
        raise ValueError(f"{mf}: empty 'classes'")
    return ShardSet(root=root, urls=[str(root / n) for n in sorted(names)],
                    num_samples=int(manifest.get("num_samples", 0)), num_masked=int(manifest.get("num_masked", 0)),
                    classes=classes, manifest=manifest)


def check_crop_size(shards: ShardSet, image_size: tuple[int, int] = (112, 112)) -> str | None:
    """Refuse a set whose crops cannot train at ``image_size``; else what is done to them.

    The manifest's ``image_size`` (112x112 when an old manifest lacks it) says the crops' size and
    template. A side under :data:`~maskkit.io.crop_template.MIN_SIDE` (16 px, the floor of
    ``align``/``synth --size``; sets written before synth checked it can hold 7x7 crops) is
    refused: upsampling it x16 would train on blur.

    Returns:
        :func:`~maskkit.io.crop_template.change_note`: None when the crops are used as they are.

    Raises:
        TrainError: crops under the floor (one line naming the set and the floor).
        maskkit.io.crop_template.TemplateRefused: crops on a template that does not cover
            ``image_size``'s (e.g. 112x96 crops for the 112x112 input).
    """
    size = shards.manifest.get("image_size") or image_size
    h, w = int(size[0]), int(size[1])
    if min(h, w) < MIN_SIDE:
        raise TrainError(f"{shards.root}: its {w}x{h} crops are under the {MIN_SIDE} px floor of maskkit's crops "
                         f"(align/synth --size {MIN_SIDE}..4096); make the set again, e.g. `maskkit synth --size 112`")
    return change_note((h, w), tuple(image_size))


def augment(img: np.ndarray, rng: np.random.Generator, pad: int, hflip: bool) -> np.ndarray:
    """RandomCrop (zero padding ``pad``) + horizontal flip of one HxWx3 uint8 image."""
    h, w = img.shape[:2]
    if pad > 0:
        dy, dx = rng.integers(0, 2 * pad + 1, size=2)
        out = np.zeros_like(img)
        # source window [dy - pad, dy - pad + h) clipped to the image
        sy, sx = int(dy) - pad, int(dx) - pad
        y0, y1 = max(0, sy), min(h, sy + h)
        x0, x1 = max(0, sx), min(w, sx + w)
        out[y0 - sy:y1 - sy, x0 - sx:x1 - sx] = img[y0:y1, x0:x1]
        img = out
    if hflip and rng.random() < 0.5:
        img = img[:, ::-1]
    return np.ascontiguousarray(img)


def _worker() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def worker_skip(skip_batches: int, worker: int, num_workers: int) -> int:
    """How many of the first ``skip_batches`` round-robin batches came from ``worker``."""
    return max(0, (skip_batches - worker + num_workers - 1) // num_workers)


class ShardStream(torch.utils.data.IterableDataset):
    """Endless per-epoch stream of batches ``{"images": uint8 (B,H,W,3), "labels": int64 (B,),
    "masked": bool (B,), "keys": list[str], "worker": int, "stream_pos": int, "failed": list[dict],
    "mask_failed": list[dict]}`` for one rank (see module docstring).

    Call :meth:`set_epoch` before creating each epoch's DataLoader iterator.
    """

    def __init__(self, shards: ShardSet, batch_size: int, rank: int = 0, world: int = 1, seed: int = 0,
                 shuffle_buffer: int = 2000, crop_pad: int = 4, hflip: bool = True,
                 image_size: tuple[int, int] = (112, 112), augment: bool = True, masker: Any = None):
        super().__init__()
        self.shards, self.batch_size, self.rank, self.world = shards, batch_size, rank, world
        self.seed, self.shuffle_buffer, self.crop_pad, self.hflip = seed, shuffle_buffer, crop_pad, hflip
        self.image_size, self.do_augment = tuple(image_size), augment
        self.epoch, self.skip_batches, self.positions = 0, 0, None
        # the manifest's image_size says the crops' template; decode_crop brings each onto image_size's
        # (maskkit.io.crop_template), or the set is refused here; the note goes to the run's log
        self.template_note = check_crop_size(shards, self.image_size)
        self.masker = masker
        self._failed: list[dict] = []  # this worker's failures since its last batch
        self._mask_failed: list[dict] = []

    def set_epoch(self, epoch: int, skip_batches: int = 0, positions: list[int] | None = None) -> None:
        """Start epoch ``epoch`` after ``skip_batches`` batches already consumed.

        ``positions`` (one per worker: raw samples that worker had read, the ``"stream_pos"`` of
        its last batch) makes the skip exact even when bad samples were dropped; without it each
        worker skips ``its batches x batch_size`` raw samples.
        """
        self.epoch, self.skip_batches = int(epoch), int(skip_batches)
        self.positions = list(positions) if positions is not None else None

    # -- raw samples of one slot ---------------------------------------------------------------
    def _slot_samples(self, slot: int, nslots: int) -> Iterator[dict]:
        import webdataset as wds

        urls = self.shards.urls
        cycle = 0
        while True:
            perm = list(urls)
            random.Random(f"shards-{self.seed}-{self.epoch}-{cycle}").shuffle(perm)
            if len(perm) >= nslots:
                mine, keep = perm[slot::nslots], None
            else:
                mine, keep = perm, slot
            seen: dict[str, int] = {}  # samples read per shard URL in this pass
            broken: dict[str, str] = {}  # shard URL -> what failed, until its loss is known
            share = nslots if keep is not None else 1
            src = wds.DataPipeline(
                wds.SimpleShardList(mine),
                wds.tarfile_to_samples(handler=lambda exn: self._shard_error(exn, broken)),
            )
            stream: Iterator[dict] = _counted(iter(src), seen,
                                              lambda url: self._shard_lost(broken, seen, share, url))
            if keep is not None:
                stream = (s for i, s in enumerate(stream) if i % nslots == keep)
            stream = wds.shuffle(bufsize=self.shuffle_buffer, initial=self.shuffle_buffer,
                                 seed=f"buf-{self.seed}-{self.epoch}-{cycle}-{slot}")(stream)
            n = 0
            for s in stream:
                n += 1
                yield s
            if n == 0:
                raise RuntimeError(f"data slot {slot}/{nslots} got no samples from {len(mine)} shard(s) of "
                                   f"{self.shards.root}: fewer samples than ranks x workers?")
            cycle += 1

    def _shard_error(self, exn: Exception, broken: dict[str, str]) -> bool:
        """webdataset's handler for a shard that cannot be read on: note it and go on with the next
        shard. One failure is handed up through webdataset's layers (the tar reader, then the shard
        expander): it is noted once; :meth:`_shard_lost` records it once its loss is known."""
        expected = self._expected
        msg = str(exn.args[0]) if exn.args else str(exn)
        url = next((a for a in reversed(exn.args) if isinstance(a, str) and a in expected), None)
        if url is None:  # the tar reader's call names the file only in its message: "... @ <... name='PATH'>"
            m = re.search(r"name='([^']+)'", msg)
            url = m.group(1) if m and m.group(1) in expected else "?"
        broken.setdefault(url, f"{type(exn).__name__}: {msg.split(' @ <')[0]}"[:300])
        return True

    def _shard_lost(self, broken: dict[str, str], seen: dict[str, int], share: int, current: str | None) -> None:
        """Record each noted shard failure once the stream has moved past that shard (``current``:
        the URL of the sample now read, None at the end of the pass): the samples its manifest
        lists beyond those read (``share`` slots read every shard in the sample-level split)."""
        for url in [u for u in broken if u != current]:
            detail = broken.pop(url)
            lost = -(-max(0, self._expected.get(url, 0) - seen.get(url, 0)) // share)
            name = Path(url).name if url != "?" else "?"
            log.warning("shard %s could not be read on (%s): %d sample(s) lost", name, detail, lost)
            self._failed.append({"key": None, "shard": name, "reason": "shard_read_error", "detail": detail,
                                 "lost": lost})

    @property
    def _expected(self) -> dict[str, int]:
        """Samples per shard URL, as the manifest lists them (0 when it does not say)."""
        by_name = {str(r.get("name")): int(r.get("samples") or 0) for r in self.shards.manifest.get("shards", [])}
        return {u: by_name.get(Path(u).name, 0) for u in self.shards.urls}

    def _skip(self, sample: dict, reason: str, detail: str) -> None:
        key, url = sample.get("__key__", "?"), sample.get("__url__", "?")
        log.warning("skipping sample %s (%s): %s", key, url, detail)
        self._failed.append({"key": key, "shard": Path(str(url)).name, "reason": reason, "detail": detail[:300],
                             "lost": 1})

    def _decode(self, sample: dict, rng: np.random.Generator) -> tuple[np.ndarray, int, bool] | None:
        from maskkit.io.image_io import decode_crop

        try:
            meta = json.loads(sample["json"])
            data = sample.get("jpg", sample.get("jpeg", sample.get("png")))
            if data is None:
                raise KeyError("no jpg member")
            img = decode_crop(data, self.image_size)  # another size: brought onto this size's template
            label = int(meta["label"])
            masked = bool(meta.get("masked", False))
        except Exception as exc:  # a bad sample is logged and skipped, never silently dropped
            self._skip(sample, "read_error", f"{type(exc).__name__}: {exc}")
            return None
        if not 0 <= label < self.shards.num_classes:
            self._skip(sample, "bad_label", f"label {label} outside 0..{self.shards.num_classes - 1}")
            return None
        if self.masker is not None:
            img, masked, failure = self.masker(img, meta, sample["__key__"])
            if failure is not None:
                self._mask_failed.append(failure)
        if self.do_augment:
            img = augment(img, rng, self.crop_pad, self.hflip)
        return img, label, masked

    def __iter__(self) -> Iterator[dict]:
        phys, nw = _worker()
        # the DataLoader always starts its round-robin at worker 0: after skipping k batches,
        # physical worker w plays logical worker (w + k) % W, so batch k comes from k % W
        wid = (phys + self.skip_batches) % nw
        slot, nslots = self.rank * nw + wid, self.world * nw
        if self.positions is not None and len(self.positions) == nw:
            skip = int(self.positions[wid])
        else:
            skip = worker_skip(self.skip_batches, wid, nw) * self.batch_size
        imgs, labels, masks, keys = [], [], [], []
        self._failed, self._mask_failed = [], []
        for idx, sample in enumerate(self._slot_samples(slot, nslots)):
            if idx < skip:
                continue
            rng = np.random.default_rng([self.seed, self.epoch, slot, idx])
            out = self._decode(sample, rng)
            if out is None:
                continue
            imgs.append(out[0]), labels.append(out[1]), masks.append(out[2]), keys.append(sample["__key__"])
            if len(imgs) == self.batch_size:
                # grouped: unmasked samples first, then masked, each in stream order (the model then
                # routes the two streams by slicing; BatchNorm and the mean loss ignore the order)
                order = sorted(range(len(masks)), key=masks.__getitem__)
                yield {"images": torch.from_numpy(np.stack([imgs[j] for j in order])),
                       "labels": torch.tensor([labels[j] for j in order], dtype=torch.int64),
                       "masked": torch.tensor([masks[j] for j in order], dtype=torch.bool),
                       "keys": [keys[j] for j in order], "worker": wid, "stream_pos": idx + 1,
                       "failed": self._failed, "mask_failed": self._mask_failed}
                imgs, labels, masks, keys = [], [], [], []
                self._failed, self._mask_failed = [], []


def _counted(stream: Iterator[dict], seen: dict[str, int], moved) -> Iterator[dict]:
    """``stream`` unchanged, counting its samples per shard URL into ``seen`` and calling
    ``moved(url)`` before each sample (``moved(None)`` at the end)."""
    for s in stream:
        url = s.get("__url__", "?")
        seen[url] = seen.get(url, 0) + 1
        moved(url)
        yield s
    moved(None)


def make_loader(stream: ShardStream, num_workers: int, seed: int = 0) -> torch.utils.data.DataLoader:
    """DataLoader over a :class:`ShardStream` (batches are formed in the workers).

    It gets its own generator, so creating an iterator never consumes the global torch RNG
    (needed for exact resume).
    """
    g = torch.Generator()
    g.manual_seed(seed)
    kw: dict[str, Any] = {}
    if num_workers > 0:
        kw.update(prefetch_factor=4, persistent_workers=False)
    return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=num_workers, generator=g,
                                       pin_memory=torch.cuda.is_available(), **kw)


def write_shards(out: str | Path, samples: list[dict], classes: list[str], shard_samples: int = 1000,
                 split: str = "train", quality: int = 95, command: str = "") -> ShardSet:
    """Write in-memory faces as a FORMAT.md shard set (tests, benchmarks) with maskkit's writer.

    ``samples`` are dicts with ``key``, ``image`` (RGB uint8), ``label``, and optional
    ``masked``, ``style``, ``src``, ``landmarks5``. The shards go through
    :class:`maskkit.io.shards.ShardSink` (the writer of ``maskkit synth``: atomic, deterministic,
    sha256 per shard); the manifest is written last. No render parameters are known here, so
    masked samples carry ``"mask": None``.
    """
    from maskkit.io.image_io import encode_jpeg
    from maskkit.io.shards import FORMAT_NAME, FORMAT_VERSION, Sample, ShardSink
    from maskkit.util.files import write_bytes_atomic, write_json_atomic

    out = Path(out)
    per_class = {c: {"samples": 0, "masked": 0} for c in classes}
    styles: dict[str, int] = {}
    with ShardSink(out, shard_samples=shard_samples, split=split) as sink:
        for s in samples:
            label = int(s["label"])
            masked = bool(s.get("masked", False))
            meta = {"label": label, "identity": classes[label], "src": s.get("src", s["key"]),
                    "face": 0, "masked": masked, "style": s.get("style") if masked else None, "mask": None,
                    "landmarks5": s.get("landmarks5"), "landmarks68": None, "score": None, "twin": None}
            sink.add(Sample(s["key"], encode_jpeg(np.ascontiguousarray(s["image"]), quality), meta))
            per_class[classes[label]]["samples"] += 1
            per_class[classes[label]]["masked"] += int(masked)
            if masked and s.get("style"):
                styles[s["style"]] = styles.get(s["style"], 0) + 1
    n_masked = sum(pc["masked"] for pc in per_class.values())
    manifest = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "image_size": list(samples[0]["image"].shape[:2]),
                "template": "arcface", "classes": list(classes), "num_samples": len(samples),
                "num_masked": n_masked, "ratio": n_masked / max(1, len(samples)), "paired": False, "seed": 0,
                "styles": styles, "per_class": per_class, "shards": sink.shards,
                "inputs": {"files": len(samples), "ok": len(samples), "failed": 0},
                "created_by": "maskkit.training.data.write_shards", "command": command}
    write_bytes_atomic(out / "failures.jsonl", b"")
    write_json_atomic(out / "manifest.json", manifest)
    return open_shards(out, split)
