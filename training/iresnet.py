"""IResNet backbones, structurally identical to insightface's ``arcface_torch`` ``iresnet.py``.

* stem: conv3x3(3 -> 64, stride 1) -> BN -> PReLU;
* :class:`IBasicBlock`: BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN, plus the
  shortcut (conv1x1(stride) -> BN when the shape changes);
* stages of [2,2,2,2] (r18), [3,4,6,3] (r34), [3,4,14,3] (r50), [3,13,30,3] (r100) blocks
  with 64/128/256/512 channels, each stage starting with a stride-2 block (112 -> 7);
* head (:class:`EmbeddingHead`): BN2d -> flatten -> dropout -> FC(512*7*7 -> 512) -> BN1d
  (insightface applies the dropout after the flatten, which is the same thing elementwise).

IResNet-50 has 43.59 M parameters and 6.31 GMACs at 112x112 (:func:`count_macs`).

``width`` multiplies every channel count (``width=0.25`` -> 16/32/64/128), a narrow network for
CPU tests; the embedding size is kept. This module imports only torch.

Example::

    >>> net = iresnet("r18", width=0.25)
    >>> net(torch.zeros(2, 3, 112, 112)).shape
    torch.Size([2, 512])
"""
from __future__ import annotations

import torch
from torch import nn

from maskkit.training.config import BACKBONE_BLOCKS as LAYERS  # residual blocks per stage


BASE_CHANNELS = (64, 128, 256, 512)
"""Channels of the stem/stage 1, 2, 3, 4 at ``width=1`` (arcface_torch)."""


def stage_channels(width: float) -> list[int]:
    """Channels of the four stages at channel multiplier ``width`` (``round(c * width)``, at least 1)."""
    return [max(1, int(round(c * width))) for c in BASE_CHANNELS]


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


class Stem(nn.Sequential):
    """conv3x3(3 -> c) -> BN -> PReLU, stride 1."""

    def __init__(self, channels: int = 64, bn_eps: float = 1e-5) -> None:
        super().__init__(conv3x3(3, channels), nn.BatchNorm2d(channels, eps=bn_eps), nn.PReLU(channels))


class IBasicBlock(nn.Module):
    """Improved residual block: BN-conv3x3-BN-PReLU-conv3x3(stride)-BN + shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 bn_eps: float = 1e-5):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=bn_eps)
        self.conv1 = conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=bn_eps)
        self.prelu = nn.PReLU(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=bn_eps)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + identity


class EmbeddingHead(nn.Module):
    """BN2d -> flatten -> dropout -> FC(C*7*7 -> D) -> BN1d (insightface's output layer).

    The final BN1d has its scale fixed to 1 (frozen), as in arcface_torch. Used for the mu
    head and, with the same shape, for DUL's log sigma^2 head.
    """

    def __init__(self, channels: int, embedding_size: int = 512, dropout: float = 0.0, spatial: int = 49,
                 freeze_bn_scale: bool = True, bn_eps: float = 1e-5):
        super().__init__()
        self.bn2 = nn.BatchNorm2d(channels, eps=bn_eps)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(channels * spatial, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=bn_eps)
        nn.init.constant_(self.features.weight, 1.0)
        if freeze_bn_scale:
            self.features.weight.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        # the FC and BN1d run in fp32 even under autocast (as arcface_torch's fp16 mode)
        dev = x.device.type
        if dev in ("cuda", "cpu") and torch.is_autocast_enabled(dev):
            with torch.autocast(device_type=dev, enabled=False):
                return self.features(self.fc(x.float()))
        return self.features(self.fc(x))


class IResNet(nn.Module):
    """IResNet trunk + embedding head. ``forward(x) -> (N, embedding_size)``.

    The trunk is exposed as :meth:`units`, the ordered list ``[stem, layer1.0, layer1.1, ...]``
    used by the two-stream model to cut the network at a named split point.
    """

    def __init__(self, layers: tuple[int, ...], width: float = 1.0, embedding_size: int = 512,
                 dropout: float = 0.0, input_size: int = 112, bn_eps: float = 1e-5):
        super().__init__()
        chans = stage_channels(width)
        self.channels = chans
        self.inplanes = chans[0]
        self.bn_eps = bn_eps
        self.stem = Stem(chans[0], bn_eps)
        self.layer1 = self._make_layer(chans[0], layers[0], stride=2)
        self.layer2 = self._make_layer(chans[1], layers[1], stride=2)
        self.layer3 = self._make_layer(chans[2], layers[2], stride=2)
        self.layer4 = self._make_layer(chans[3], layers[3], stride=2)
        side = input_size // 16
        self.head = EmbeddingHead(chans[3], embedding_size, dropout, spatial=side * side, bn_eps=bn_eps)
        init_weights(self)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes, stride),
                                       nn.BatchNorm2d(planes, eps=self.bn_eps))
        mods = [IBasicBlock(self.inplanes, planes, stride, downsample, bn_eps=self.bn_eps)]
        self.inplanes = planes
        mods += [IBasicBlock(planes, planes, bn_eps=self.bn_eps) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def units(self) -> list[tuple[str, nn.Module]]:
        """Trunk modules in order, named ``stem``, ``layer1.0``, ... ``layer4.K``."""
        out: list[tuple[str, nn.Module]] = [("stem", self.stem)]
        for i in range(1, 5):
            layer = getattr(self, f"layer{i}")
            out += [(f"layer{i}.{j}", blk) for j, blk in enumerate(layer)]
        return out

    def forward_trunk(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_trunk(x))


def init_weights(module: nn.Module) -> None:
    """arcface_torch initialisation: conv ~ N(0, 0.1), BN weight 1 / bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0, 0.1)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


def iresnet(name: str = "r50", width: float = 1.0, embedding_size: int = 512, dropout: float = 0.0,
            input_size: int = 112, bn_eps: float = 1e-5) -> IResNet:
    """Build ``r18``/``r34``/``r50``/``r100`` (``iresnet("r50")`` = 43.59 M parameters).

    ``bn_eps``: the epsilon of every BatchNorm (1e-5 as arcface_torch; MagFace's IResNet uses 2e-5).
    """
    if name not in LAYERS:
        raise ValueError(f"unknown IResNet {name!r}; choose from {sorted(LAYERS)}")
    return IResNet(LAYERS[name], width=width, embedding_size=embedding_size, dropout=dropout,
                   input_size=input_size, bn_eps=bn_eps)


def count_parameters(module: nn.Module) -> int:
    """All parameters (trainable or not), as insightface reports them."""
    return sum(p.numel() for p in module.parameters())


def count_macs(module: nn.Module, input_size: int = 112, forward=None) -> int:
    """Multiply-accumulates of one forward pass of one image (convs + linears; BN/PReLU ignored).

    Runs a forward on the ``meta`` device, so it is instant and allocates nothing. ``forward``
    (optional): ``forward(net, x)`` runs the pass on the meta copy ``net`` (default ``net(x)``);
    only the modules it calls are counted.
    """
    import copy

    net = copy.deepcopy(module).to("meta").eval()
    total = 0

    def conv_hook(m: nn.Conv2d, inp, out) -> None:
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total += k * out.shape[1] * out.shape[2] * out.shape[3]

    def lin_hook(m: nn.Linear, inp, out) -> None:
        nonlocal total
        total += m.in_features * m.out_features

    hooks = []
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(lin_hook))
    with torch.no_grad():
        x = torch.empty(1, 3, input_size, input_size, device="meta")
        out = net(x) if forward is None else forward(net, x)
    del out
    for h in hooks:
        h.remove()
    return total
