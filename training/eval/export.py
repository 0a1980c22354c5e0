"""ONNX export of a trained face model (μ and σ outputs, dynamic batch) and its check.

Graph (one graph for both streams)::

    inputs:  image   float32 (N, 3, 112, 112)  normalised by the model's preprocessing (maskkit
                                               and arcface_torch: RGB (x - 127.5) / 127.5; a
                                               MagFace-initialised model: BGR x / 255)
             masked  float32 (N,)              1.0 = masked-face branch, 0.0 = face branch
    outputs: mu      float32 (N, 512)          embedding (not normalised)
             sigma   float32 (N, 512)          σ = exp(logvar / 2)   (DUL methods only)

The branch choice is a **second input** rather than two graphs: one file serves mixed batches
and single-stream baselines take the same input (ignored there, so runtimes need no special
case). The two-stream start block is exported with ``routing="where"`` (both start blocks run
on the batch and ``Where`` selects per sample) instead of the training-time
``index_select``/``index_copy`` routing: identical outputs, static shapes, no ``NonZero`` op.
The extra cost is one start block (the stem plus one residual block, a few percent of the
network). ``masked > 0.5`` picks the masked branch.

Preprocessing stays outside the graph and is recorded in the model's metadata
(``metadata_props``: ``color``, ``scale``, ``mean``, ``std`` with the formula
``(x[color] * scale - mean) / std`` on 0..255 values, ``layout``, ``bn_eps``, ``method``,
``outputs``); :func:`onnx_embed` reads it back, so a MagFace model's file is never fed
arcface_torch's input. ``mean``/``std`` are one number when equal over the channels, else a JSON
list of three (files written before these keys have no ``scale``: it is 1).

Uses the TorchScript-based exporter (``dynamo=False``): the dynamo exporter needs the extra
``onnxscript`` package, which maskkit does not depend on.
"""
from __future__ import annotations

import contextlib
import copy
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: The lowest ONNX opset maskkit's graphs export at: the two-stream start block's ``Where``
#: routing needs opset 9 (measured with torch 2.13: opsets 5-8 fail on ``where``).
MIN_OPSET = 9


def opset_range() -> tuple[int, int]:
    """``(lowest, highest)`` ONNX opset :func:`export_onnx` accepts: :data:`MIN_OPSET` to the
    installed torch exporter's highest (``torch.onnx._constants.ONNX_MAX_OPSET``, 23 in torch
    2.13; 20 where that private constant is missing)."""
    try:
        from torch.onnx._constants import ONNX_MAX_OPSET as hi
    except ImportError:  # a torch that moved the constant: the TorchScript exporter's long-time top
        hi = 20
    return MIN_OPSET, int(hi)


def check_opset(opset: int) -> int:
    """``opset`` when :func:`export_onnx` can write it.

    Raises:
        ValueError: outside :func:`opset_range` (one line naming the range).
    """
    lo, hi = opset_range()
    if not lo <= int(opset) <= hi:
        raise ValueError(f"opset {opset} is not supported: use {lo}..{hi} (the installed torch exporter's "
                         f"range; maskkit's graphs need {MIN_OPSET} or more)")
    return int(opset)


@dataclass
class ExportCheck:
    """Agreement of onnxruntime with PyTorch on one batch."""

    batch_size: int
    max_abs_diff_mu: float
    max_abs_diff_sigma: float | None
    max_abs_mu: float = 0.0
    max_abs_sigma: float | None = None

    def relative(self) -> float:
        """Largest difference relative to the output scale (max |value|, at least 1)."""
        r = self.max_abs_diff_mu / max(1.0, self.max_abs_mu)
        if self.max_abs_diff_sigma is not None:
            r = max(r, self.max_abs_diff_sigma / max(1.0, self.max_abs_sigma or 0.0))
        return r


def _wrapper(module):
    import torch
    from torch import nn

    class _Export(nn.Module):
        def __init__(self, m: nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward(self, image: torch.Tensor, masked: torch.Tensor):
            mu, sigma = self.m(image, masked > 0.5)
            if not getattr(self.m, "two_stream", False):
                # keep the ``masked`` input in single-stream graphs (the exporter prunes unused
                # inputs) so every exported model takes the same feeds; adds exactly 0.
                mu = mu + (masked * 0.0).unsqueeze(1)
            if sigma is None:
                return (mu,)
            return mu, sigma

    return _Export(module)


@contextlib.contextmanager
def _exporter_errors(opset: int, path: Path):
    """An exporter failure at ``opset`` as one ``ValueError`` line (the exporter's first line and
    the supported range), and no partial file left at ``path``."""
    import torch

    try:
        yield
    except (torch.onnx.errors.OnnxExporterError, RuntimeError) as exc:
        path.unlink(missing_ok=True)
        lo, hi = opset_range()
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"ONNX export at opset {opset} failed: {first} (supported: {lo}..{hi})") from exc


def export_onnx(model, path: str | Path, opset: int = 17, image_size: tuple[int, int] | None = None) -> Path:
    """Export an ``InferenceModel`` (or its ``torch_module``) to ONNX.

    Args:
        model: ``maskkit.training.api.InferenceModel`` or an ``nn.Module`` with
            ``forward(x, masked) -> (mu, sigma | None)``.
        path: output ``.onnx`` file (weights embedded, no external data file).
        opset: ONNX opset, within :func:`opset_range` (default 17).
        image_size: (H, W) of the input (default: the config's ``image_size``, else 112x112).

    Returns:
        The written path.

    Raises:
        ValueError: ``opset`` outside :func:`opset_range`, or the exporter refused the graph at
            that opset (one line); nothing is left at ``path`` then.
    """
    check_opset(opset)
    import onnx
    import torch

    module = getattr(model, "torch_module", model)
    config = getattr(model, "config", {}) or {}
    image_size = tuple(image_size or config.get("image_size") or (112, 112))
    module = copy.deepcopy(module).cpu().eval()
    if hasattr(module, "routing"):
        module.routing = "where"
    has_sigma = bool(getattr(module, "dul", True))
    wrapped = _wrapper(module).eval()
    n = 2
    x = torch.zeros(n, 3, *image_size)
    m = torch.tensor([0.0, 1.0])
    outputs = ["mu", "sigma"] if has_sigma else ["mu"]
    dyn = {"image": {0: "batch"}, "masked": {0: "batch"}}
    dyn.update({o: {0: "batch"} for o in outputs})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad(), _exporter_errors(opset, path):
        warnings.simplefilter("ignore")  # the legacy-exporter deprecation notice
        torch.onnx.export(
            wrapped,
            (x, m),
            str(path),
            dynamo=False,
            input_names=["image", "masked"],
            output_names=outputs,
            dynamic_axes=dyn,
            opset_version=opset,
            do_constant_folding=True,
        )
    from maskkit.training.api import Preprocess

    pre = Preprocess.from_config(config)
    proto = onnx.load(str(path))
    meta = {
        "producer": "maskkit",
        "mean": _channels(pre.mean),
        "std": _channels(pre.std),
        "scale": repr(float(pre.scale)),
        "layout": "NCHW",
        "color": pre.color,
        "input_formula": "(x[color] * scale - mean) / std, x = uint8 0..255",
        "bn_eps": repr(float(config.get("bn_eps", 1e-5))),
        "image_size": json.dumps(list(image_size)),
        "method": str(config.get("method", "")),
        "backbone": str(config.get("backbone", "")),
        "two_stream": str(bool(getattr(module, "two_stream", False))),
        "outputs": ",".join(outputs),
        "masked_input": "float32 (N,), > 0.5 selects the masked-face branch",
    }
    for k, v in meta.items():
        p = proto.metadata_props.add()
        p.key, p.value = k, v
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


def _channels(v) -> str:
    v = [float(x) for x in v]
    return repr(v[0]) if len(set(v)) == 1 else json.dumps(v)


def onnx_preprocess(session) -> dict:
    """``{"color", "scale", "mean", "std"}`` from an exported model's metadata (older files: RGB,
    1, 127.5, 127.5 unless they say otherwise)."""
    meta = session.get_modelmeta().custom_metadata_map

    def three(text: str) -> np.ndarray:
        v = json.loads(text)
        return np.asarray([v] * 3 if isinstance(v, (int, float)) else v, np.float32).reshape(1, 3, 1, 1)

    return {"color": meta.get("color", "RGB"), "scale": float(meta.get("scale", "1.0")),
            "mean": three(meta.get("mean", "127.5")), "std": three(meta.get("std", "127.5"))}


def onnx_embed(session, images_uint8: np.ndarray, masked) -> tuple[np.ndarray, np.ndarray | None]:
    """Run an exported model in onnxruntime on uint8 NHWC RGB faces, preprocessed as the file's
    metadata says (:func:`onnx_preprocess`)."""
    pre = onnx_preprocess(session)
    x = np.asarray(images_uint8, np.float32).transpose(0, 3, 1, 2)
    if pre["color"] == "BGR":
        x = x[:, ::-1]
    if pre["scale"] != 1.0:
        x = x * np.float32(pre["scale"])
    x = (x - pre["mean"]) / pre["std"]
    m = np.asarray(masked, np.float32).reshape(-1)
    outs = session.run(None, {"image": np.ascontiguousarray(x), "masked": m})
    return outs[0], (outs[1] if len(outs) > 1 else None)


def verify_onnx(model, path: str | Path, images_uint8: np.ndarray, masked, batch_sizes=(1, 7)) -> list[ExportCheck]:
    """Compare onnxruntime with PyTorch on real faces at the given batch sizes.

    Each batch takes the first ``b`` images (cycled if fewer) with their branch flags.

    Returns:
        One :class:`ExportCheck` per batch size (max absolute differences of μ and σ).
    """
    import onnxruntime as ort
    import torch
    from maskkit.training.api import Preprocess

    module = getattr(model, "torch_module", model).cpu().eval()
    pre = getattr(model, "preprocess", None) or Preprocess()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images_uint8 = np.asarray(images_uint8)
    masked = np.asarray(masked, bool)
    checks = []
    for b in batch_sizes:
        idx = np.arange(b) % len(images_uint8)
        imgs, msk = images_uint8[idx], masked[idx]
        x = pre(torch.from_numpy(imgs))
        with torch.no_grad():
            mu_t, sig_t = module(x, torch.from_numpy(msk))
        mu_o, sig_o = onnx_embed(sess, imgs, msk)
        d_mu = float(np.max(np.abs(mu_t.numpy() - mu_o)))
        d_sig = None if sig_t is None else float(np.max(np.abs(sig_t.numpy() - sig_o)))
        checks.append(ExportCheck(b, d_mu, d_sig, float(np.abs(mu_t.numpy()).max()),
                                  None if sig_t is None else float(np.abs(sig_t.numpy()).max())))
    return checks
