"""Synth seeding: every random choice is drawn from a generator seeded by ``(seed, identity)`` or ``(seed, sample key)``,
never by worker or arrival order; balanced style lists."""
from __future__ import annotations

import hashlib
from typing import Any, Sequence

import numpy as np

from maskkit.util.names import name_bytes


def _words(*parts: Any) -> list[int]:
    # os.fsencode: an identity folder whose name is not UTF-8 hashes as its bytes (for any valid
    # name these are its UTF-8 bytes, as before)
    h = hashlib.sha256(name_bytes("\x1f".join(str(p) for p in parts))).digest()
    return [int.from_bytes(h[i:i + 4], "little") for i in range(0, 32, 4)]


def _rng(seed: int, *parts: Any) -> np.random.Generator:
    """Generator seeded by (seed, parts) only -- never by worker or time."""
    return np.random.default_rng(np.random.SeedSequence(_words(int(seed), *parts)))


def render_seed(seed: int, key: str) -> int:
    """The 63-bit seed of a sample's render generator, ``default_rng(render_seed(seed, key))``;
    recorded as ``mask.seed`` so the mask can be redrawn from the source face."""
    return int.from_bytes(hashlib.sha256(f"{int(seed)}\x1frender\x1f{key}".encode("utf-8")).digest()[:8],
                          "little") >> 1


def sample_key(label: int, rel: str, face: int) -> str:
    """Stable sample key ``<label:06d>_<sha1(rel bytes)[:12]>_<face>`` (``[A-Za-z0-9_-]`` only).

    ``rel`` is hashed as ``os.fsencode(rel)``: the UTF-8 bytes of a valid name, the file system's
    own bytes for a name that is not UTF-8."""
    return f"{label:06d}_{hashlib.sha1(name_bytes(rel)).hexdigest()[:12]}_{face}"


def balanced_styles(m: int, styles: Sequence[str], rng: np.random.Generator) -> list[str]:
    """``m`` styles: ``m // K`` of each, the ``m % K`` extra ones distinct and random, shuffled."""
    k = len(styles)
    if m == 0 or k == 0:
        return []
    out = [s for s in styles for _ in range(m // k)]
    extra = rng.permutation(k)[: m % k]
    out += [styles[i] for i in sorted(extra)]
    rng.shuffle(out)
    return out
