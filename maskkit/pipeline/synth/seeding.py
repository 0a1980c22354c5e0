"""Synth seeding: every random choice is drawn from a generator seeded by ``(seed, identity)`` or ``(seed, sample key)``,
never by worker or arrival order; balanced style lists and the leftover-style rotation.

Styles over the whole set: an identity with ``m`` masked faces and ``K`` styles gives ``m // K``
to each style (:func:`balanced_styles`, shuffled by the identity's generator) and its
``r = m % K`` leftovers to ``r`` distinct styles taken in class order from a running offset
(:func:`leftover_styles`): the leftovers of all identities walk through the styles one after
another, so over the set every style's count is within 1 of every other's (when no render fails).
The offset after each identity is kept in the journal (:func:`next_style_offset`)."""
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


def leftover_styles(r: int, styles: Sequence[str], offset: int) -> list[str]:
    """The ``r`` (< K) leftover styles of one identity: ``styles[offset], styles[offset + 1], ...``
    cyclically, so consecutive identities continue where the previous one stopped."""
    k = len(styles)
    return [styles[(offset + t) % k] for t in range(r)] if k else []


def next_style_offset(offset: int, r: int, k: int) -> int:
    """The running offset after an identity that gave out ``r`` leftover styles (``k`` styles)."""
    return (offset + r) % k if k else 0
