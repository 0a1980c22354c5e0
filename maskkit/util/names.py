"""File names that are not valid UTF-8: a display form for every text output, the exact bytes for keys.

A POSIX file name is a byte string. Python hands it over as ``str`` with every byte that is not
valid UTF-8 turned into a lone surrogate (PEP 383, ``surrogateescape``): a Latin-1 ``café.jpg``
(``b"caf\\xe9.jpg"``) arrives as ``"caf\\udce9.jpg"``. Such a ``str`` opens the file, but writing
it to a UTF-8 text file raises ``UnicodeEncodeError``. So every name that leaves maskkit in text
(manifests, failures, shard JSON, reports, the console) goes through this module:

* :func:`display_name` -- the UTF-8 display form: the name's bytes decoded with
  ``errors="replace"`` (each bad byte becomes U+FFFD); identical to the name when it is valid.
* :func:`name_fields` -- ``{"src": display}`` plus ``{"src_bytes": base64 of the bytes}`` only
  when the name is not valid UTF-8 (docs/FORMAT.md, "Names that are not UTF-8"); the exact
  name comes back with :func:`name_from_fields`.
* :func:`name_bytes` -- ``os.fsencode(name)``, what keys and seeds hash; for a valid name
  these are its UTF-8 bytes, so keys and seeds of valid names are unchanged.
* :func:`unique_display_names` -- display forms made unique for a set of names (class lists,
  identity names): two different byte names may display alike.
"""
from __future__ import annotations

import base64
import hashlib
import os
from collections import Counter
from typing import Iterable

__all__ = ["name_bytes", "is_utf8", "display_name", "name_b64", "name_fields", "name_from_fields",
           "unique_display_names", "safe_text", "text_safe"]


def name_bytes(name: str | bytes) -> bytes:
    """The exact bytes of a file name (``os.fsencode``; UTF-8 with ``surrogateescape`` on POSIX)."""
    return os.fsencode(name)


def is_utf8(name: str | bytes) -> bool:
    """True when the name's bytes are valid UTF-8 (it can be written to a text file as is)."""
    try:
        name_bytes(name).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def display_name(name: str | bytes) -> str:
    """Valid-UTF-8 display form: the bytes decoded with ``errors="replace"`` (bad bytes -> U+FFFD)."""
    return name_bytes(name).decode("utf-8", "replace")


def name_b64(name: str | bytes) -> str | None:
    """Standard base64 of the name's bytes when they are not valid UTF-8, else ``None``."""
    if is_utf8(name):
        return None
    return base64.b64encode(name_bytes(name)).decode("ascii")


def name_fields(name: str | bytes, key: str = "src") -> dict:
    """``{key: display}``, plus ``{key + "_bytes": base64}`` when the name is not valid UTF-8.

    Example:
        >>> name_fields("p/caf\\udce9.jpg")
        {'src': 'p/caf\\ufffd.jpg', 'src_bytes': 'cC9jYWbpLmpwZw=='}
        >>> name_fields("p/ok.jpg")
        {'src': 'p/ok.jpg'}
    """
    out = {key: display_name(name)}
    b = name_b64(name)
    if b is not None:
        out[key + "_bytes"] = b
    return out


def name_from_fields(record: dict, key: str = "src") -> str | None:
    """The exact name (``str``, surrogate-escaped where needed) from a record written with
    :func:`name_fields`; ``None`` when ``key`` is absent."""
    b = record.get(key + "_bytes")
    if isinstance(b, str) and b:
        return os.fsdecode(base64.b64decode(b))
    v = record.get(key)
    return v if isinstance(v, str) else None


def unique_display_names(names: Iterable[str]) -> dict[str, str]:
    """A display form for each distinct name, unique within the set.

    Valid UTF-8 names display as themselves. A name that is not valid UTF-8 displays as
    :func:`display_name`; when that equals another name's display form, it gets
    ``"~" + sha1(bytes)[:8]`` appended (deterministic, independent of the other names' order).
    """
    names = list(dict.fromkeys(names))
    valid = {n for n in names if is_utf8(n)}
    out = {n: n for n in valid}
    taken = {n for n in valid}
    bad = sorted((n for n in names if n not in valid), key=name_bytes)
    disp = {n: display_name(n) for n in bad}
    counts = Counter(disp.values())
    clash = {d for d, c in counts.items() if c > 1 or d in taken}
    for n in bad:
        d = disp[n]
        if d in clash:
            d = f"{d}~{hashlib.sha1(name_bytes(n)).hexdigest()[:8]}"
        out[n] = d
        taken.add(d)
    return out


def safe_text(s: str) -> str:
    """``s`` itself when it encodes as UTF-8; else with every lone surrogate replaced (escaped
    bytes decoded as :func:`display_name` does, any other surrogate as U+FFFD)."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        pass
    try:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return s.encode("utf-8", "replace").decode("utf-8")


def text_safe(obj):
    """A copy of a JSON-like value (dicts, lists, strings) whose strings are all valid UTF-8
    (:func:`safe_text`): a last guard so that a stray file name in a message never breaks a
    UTF-8 text output. Names meant to be kept exactly go through :func:`name_fields` first."""
    if isinstance(obj, str):
        return safe_text(obj)
    if isinstance(obj, dict):
        return {safe_text(k) if isinstance(k, str) else k: text_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [text_safe(v) for v in obj]
    return obj
