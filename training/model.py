"""The MaskDUL face model: two-stream IResNet with a DUL (mu, sigma) head.

* **Two streams.** Faces and masked faces each pass their own *start block*, then share every
  remaining weight. The start block is the trunk up to and including ``split_point``
  (default ``"layer1.0"``: the stem conv-BN-PReLU plus the first residual block of stage 1, our
  reading of the paper's "start ResBlock"; ``"stem"`` and ``"layer1"`` or any ``"layerK.J"`` are
  options). Routing is per sample, inside one batch, without a Python loop over samples. When
  the batch is *grouped* (unmasked samples first, then masked ones: the training loader orders
  every batch so) each branch runs on a slice (a view, no copy) and the two outputs are
  concatenated; otherwise each branch runs on its ``index_select``-ed subset and the results are
  scattered back with ``index_copy``. Both give the same result; slicing is cheaper (CPU
  r18 w0.25 batch 8: MaskDUL/ArcFace step 1.05 against 1.18 with index routing).
  ``routing="where"`` runs both branches on the whole batch and selects with ``torch.where``
  (same result, twice the start-block compute, handy for some exporters).
  A branch whose subset is empty still runs on a zero-size batch, so every parameter stays
  in the autograd graph (DDP needs no ``find_unused_parameters``) and BatchNorm running
  statistics are untouched by it. Both branches start from identical weights (the masked one
  is a copy of the face one).
* **DUL head.** A mu head and a log sigma^2 head of the same shape (BN2d-dropout-FC-BN1d,
  :class:`~maskkit.training.iresnet.EmbeddingHead`). Training uses ``s = mu + eps * sigma``
  (:func:`reparameterize`), test time uses ``mu``. ``sigma = exp(logvar / 2)`` is the
  standard-deviation vector; ``||sigma||`` is its L2 norm.

  **Initial ||sigma|| of a fresh sigma head** (also when fine-tuning from a file that has none,
  ``maskkit train --init``): the head ends in a BatchNorm1d with scale fixed at 1 and bias 0, so in
  training mode each log sigma^2 component has batch mean 0 and variance 1; for Gaussian
  components ``E ||sigma||^2 = D e^{1/2}``, i.e. ``||sigma|| ~ sqrt(D) e^{1/4}`` = 29.05 for D = 512
  (measured: 28.99 +- 0.80 over a batch of 64, r18 width 0.25). In eval mode before any training
  step the BatchNorm's running statistics are still (0, 1) and ``||sigma||`` has no meaning.
* **Single stream** (baselines): one start block for every sample; ``masked`` is ignored.

This module imports only torch.
"""
from __future__ import annotations

import copy
from typing import Union

import torch
from torch import nn

from maskkit.training.iresnet import EmbeddingHead, iresnet

Route = Union[int, tuple[torch.Tensor, torch.Tensor]]
"""A two-stream route (:meth:`FaceModel.route`): ``n_face`` (an int) for a grouped batch whose first
``n_face`` samples are unmasked and the rest masked, else ``(idx_face, idx_masked)`` index tensors."""


def resolve_split(names: list[str], split_point: str) -> int:
    """Index of the last branch-specific unit for ``split_point`` (``"layer1"`` = its last block)."""
    if split_point in names:
        return names.index(split_point)
    stage = [i for i, n in enumerate(names) if n.startswith(split_point + ".")]
    if stage:
        return stage[-1]
    raise ValueError(f"unknown split_point {split_point!r}; use 'stem', 'layerK' or one of {names}")


class FaceModel(nn.Module):
    """IResNet trunk with optional two-stream start blocks and optional DUL head.

    Args:
        backbone: ``r18`` / ``r34`` / ``r50`` / ``r100``.
        width: channel multiplier (1.0 = insightface).
        embedding_size: feature dimension (512).
        dropout: head dropout (0.4 in the paper).
        two_stream: separate face / masked-face start blocks.
        split_point: last branch-specific unit (see module docstring).
        dul: add the log sigma^2 head.
        input_size: side of the square input (112; the head's FC takes ``C x (input_size // 16)^2``).
        bn_eps: epsilon of every BatchNorm (1e-5; 2e-5 for a MagFace-initialised model).

    ``encode(x, masked) -> (mu, logvar | None)`` is what training uses; ``forward(x, masked) ->
    (mu, sigma | None)`` is the inference / export signature.
    """

    def __init__(self, backbone: str = "r50", width: float = 1.0, embedding_size: int = 512, dropout: float = 0.0,
                 two_stream: bool = False, split_point: str = "layer1.0", dul: bool = False, input_size: int = 112,
                 bn_eps: float = 1e-5):
        super().__init__()
        net = iresnet(backbone, width=width, embedding_size=embedding_size, dropout=dropout, input_size=input_size,
                      bn_eps=bn_eps)
        units = net.units()
        names = [n for n, _ in units]
        k = resolve_split(names, split_point) if two_stream else 0
        self.split_point = split_point if two_stream else None
        self.branch_names = names[: k + 1]
        self.branch_face = nn.Sequential(*[m for _, m in units[: k + 1]])
        self.branch_masked = copy.deepcopy(self.branch_face) if two_stream else None
        self.trunk = nn.Sequential(*[m for _, m in units[k + 1:]])
        self.mu_head = net.head
        self.logvar_head = None
        if dul:
            side = input_size // 16
            self.logvar_head = EmbeddingHead(net.channels[3], embedding_size, dropout, spatial=side * side,
                                             bn_eps=bn_eps)
            nn.init.constant_(self.logvar_head.bn2.weight, 1)
            nn.init.constant_(self.logvar_head.bn2.bias, 0)
        self.routing = "index"
        self.embedding_size = embedding_size

    @property
    def two_stream(self) -> bool:
        return self.branch_masked is not None

    @property
    def dul(self) -> bool:
        return self.logvar_head is not None

    @staticmethod
    def route(masked: torch.Tensor, device: torch.device | None = None) -> Route:
        """The route of a batch, computed where ``masked`` lives (on the CPU flags of a loader
        batch this costs no device sync): ``n_face`` (int) when the batch is grouped (no masked
        sample before an unmasked one), else ``(idx_face, idx_masked)`` moved to ``device``."""
        masked = masked.to(torch.bool).reshape(-1)
        n_face = int(masked.numel() - masked.sum())
        if not bool(masked[:n_face].any()):
            return n_face
        idx_f, idx_m = torch.nonzero(~masked).squeeze(1), torch.nonzero(masked).squeeze(1)
        if device is not None and idx_f.device != device:
            if device.type == "cuda":  # pinned: a truly asynchronous copy (pageable would sync the stream)
                idx_f, idx_m = idx_f.pin_memory(), idx_m.pin_memory()
            idx_f, idx_m = idx_f.to(device, non_blocking=True), idx_m.to(device, non_blocking=True)
        return idx_f, idx_m

    def start(self, x: torch.Tensor, masked: torch.Tensor | None, route: Route | None = None) -> torch.Tensor:
        """Run the start block(s), routing each sample by its ``masked`` flag.

        ``route`` (from :meth:`route`) may be given instead of / with ``masked`` to skip the
        ``nonzero`` (the engine computes it on the CPU, so no GPU sync happens in the forward).
        """
        if self.branch_masked is None or (masked is None and route is None):
            return self.branch_face(x)
        if masked is not None and masked.reshape(-1).shape[0] != x.shape[0]:
            raise ValueError(f"masked has {masked.reshape(-1).shape[0]} flags for a batch of {x.shape[0]}")
        if self.routing == "where" and masked is not None:
            yf, ym = self.branch_face(x), self.branch_masked(x)
            return torch.where(masked.to(x.device, torch.bool).view(-1, 1, 1, 1), ym, yf)
        if route is None:
            # CPU flags: indices computed on the CPU and copied (no device sync)
            route = self.route(masked, x.device)
        if isinstance(route, int):  # grouped batch: two views, one concatenation
            return torch.cat([self.branch_face(x[:route]), self.branch_masked(x[route:])])
        idx_f, idx_m = route
        # keep channels_last through the subset (index_select returns NCHW-contiguous)
        fmt = torch.channels_last if (x.dim() == 4 and not x.is_contiguous()
                                      and x.is_contiguous(memory_format=torch.channels_last)) else torch.contiguous_format
        yf = self.branch_face(x.index_select(0, idx_f).contiguous(memory_format=fmt))
        ym = self.branch_masked(x.index_select(0, idx_m).contiguous(memory_format=fmt))
        out = torch.empty((x.shape[0],) + tuple(yf.shape[1:]), dtype=yf.dtype, device=yf.device, memory_format=fmt)
        return out.index_copy(0, idx_f, yf).index_copy(0, idx_m, ym.to(yf.dtype))

    def encode(self, x: torch.Tensor, masked: torch.Tensor | None = None,
               route: Route | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(mu, logvar)``; ``logvar`` is None without the DUL head. Both fp32."""
        h = self.trunk(self.start(x, masked, route))
        mu = self.mu_head(h).float()
        logvar = self.logvar_head(h).float() if self.logvar_head is not None else None
        return mu, logvar

    def forward(self, x: torch.Tensor, masked: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(mu, sigma)`` with ``sigma = exp(logvar / 2)`` (None without the DUL head)."""
        mu, logvar = self.encode(x, masked)
        return mu, (torch.exp(0.5 * logvar) if logvar is not None else None)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``s = mu + eps * sigma``, ``eps ~ N(0, I)`` (DUL's sampling, used in training only)."""
    eps = torch.randn(mu.shape, dtype=mu.dtype, device=mu.device, generator=generator)
    return mu + eps * torch.exp(0.5 * logvar)


def build_model(cfg) -> FaceModel:
    """The model of a :class:`~maskkit.training.config.TrainConfig` (or its dict)."""
    if isinstance(cfg, dict):
        from maskkit.training.config import TrainConfig

        cfg = TrainConfig.from_dict(cfg, strict=False)  # a checkpoint from an older or newer maskkit
    return FaceModel(backbone=cfg.backbone, width=cfg.width, embedding_size=cfg.embedding_size,
                     dropout=cfg.dropout, two_stream=cfg.uses_two_stream, split_point=cfg.split_point,
                     dul=cfg.uses_dul, input_size=cfg.image_size[0], bn_eps=cfg.bn_eps)
