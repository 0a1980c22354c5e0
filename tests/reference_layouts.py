"""Reference checkpoint layouts, written as data from the reference source files (not generated
by maskkit.training.checkpoints, which the tests check against them).

Sources (read with the project's search tool; no code copied):

* insightface ``recognition/arcface_torch/backbones/iresnet.py`` at commit
  04a433f154de30ff8604d78f73f2b6af5822f71c: ``IResNet.__init__`` registers ``conv1``, ``bn1``,
  ``prelu``, ``layer1..4``, ``bn2``, ``dropout``, ``fc`` (``512 * fc_scale`` -> num_features,
  ``fc_scale = 7 * 7``), ``features`` (BatchNorm1d); ``IBasicBlock.__init__`` registers ``bn1``
  (inplanes), ``conv1`` (3x3 inplanes -> planes), ``bn2``, ``prelu``, ``conv2`` (3x3 planes ->
  planes, stride), ``bn3``, ``downsample`` (``Sequential(conv1x1, BatchNorm2d)`` when stride != 1
  or inplanes != planes: the first block of every stage, all four have stride 2);
  ``iresnet18/34/50/100`` use ``[2, 2, 2, 2]``, ``[3, 4, 6, 3]``, ``[3, 4, 14, 3]``,
  ``[3, 13, 30, 3]`` blocks with planes 64, 128, 256, 512.
* MagFace ``models/iresnet.py`` at commit 719001a07b3cb87811450d53062d5ae678a4908e: the same
  modules and names (plus a parameter-free ``avgpool``), BatchNorm eps 2e-05.
* MagFace ``run/trainer.py`` (commit 2952266cea5417c12ca24c73589a8d130cd2e9b3): the whole
  ``SoftmaxBuilder`` (``features`` = the IResNet, ``fc`` = ``MagLinear``) is wrapped in
  ``DataParallel`` and saved as ``{"epoch", "arch", "state_dict", "optimizer"}``, so the keys
  are ``module.features.<iresnet key>`` and ``module.fc.weight``; ``models/magface.py`` (commit
  719001a07b3c) gives ``MagLinear.weight`` the shape ``(in_features=embedding_size,
  out_features=num_classes)``.
* MagFace ``run/trainer_dist.py`` / ``models/magface_dist.py`` (commits 74891108621d /
  1647d2bf1b3c): only ``features`` is wrapped in DDP -> ``features.module.<iresnet key>``; the
  classifier is ``parallel_fc`` (``ParallelMagLinear.weight``: ``(out_features, inp_features)``).

A BatchNorm entry ``BN:c`` stands for its five state_dict entries ``weight``, ``bias``,
``running_mean``, ``running_var`` (shape ``(c,)``) and ``num_batches_tracked`` (shape ``()``).
"""
from __future__ import annotations

# arcface_torch iresnet18, width 1, num_features 512, 112x112 input: the whole state_dict in order.
ARCFACE_R18 = """
conv1.weight 64,3,3,3
bn1 BN:64
prelu.weight 64
layer1.0.bn1 BN:64
layer1.0.conv1.weight 64,64,3,3
layer1.0.bn2 BN:64
layer1.0.prelu.weight 64
layer1.0.conv2.weight 64,64,3,3
layer1.0.bn3 BN:64
layer1.0.downsample.0.weight 64,64,1,1
layer1.0.downsample.1 BN:64
layer1.1.bn1 BN:64
layer1.1.conv1.weight 64,64,3,3
layer1.1.bn2 BN:64
layer1.1.prelu.weight 64
layer1.1.conv2.weight 64,64,3,3
layer1.1.bn3 BN:64
layer2.0.bn1 BN:64
layer2.0.conv1.weight 128,64,3,3
layer2.0.bn2 BN:128
layer2.0.prelu.weight 128
layer2.0.conv2.weight 128,128,3,3
layer2.0.bn3 BN:128
layer2.0.downsample.0.weight 128,64,1,1
layer2.0.downsample.1 BN:128
layer2.1.bn1 BN:128
layer2.1.conv1.weight 128,128,3,3
layer2.1.bn2 BN:128
layer2.1.prelu.weight 128
layer2.1.conv2.weight 128,128,3,3
layer2.1.bn3 BN:128
layer3.0.bn1 BN:128
layer3.0.conv1.weight 256,128,3,3
layer3.0.bn2 BN:256
layer3.0.prelu.weight 256
layer3.0.conv2.weight 256,256,3,3
layer3.0.bn3 BN:256
layer3.0.downsample.0.weight 256,128,1,1
layer3.0.downsample.1 BN:256
layer3.1.bn1 BN:256
layer3.1.conv1.weight 256,256,3,3
layer3.1.bn2 BN:256
layer3.1.prelu.weight 256
layer3.1.conv2.weight 256,256,3,3
layer3.1.bn3 BN:256
layer4.0.bn1 BN:256
layer4.0.conv1.weight 512,256,3,3
layer4.0.bn2 BN:512
layer4.0.prelu.weight 512
layer4.0.conv2.weight 512,512,3,3
layer4.0.bn3 BN:512
layer4.0.downsample.0.weight 512,256,1,1
layer4.0.downsample.1 BN:512
layer4.1.bn1 BN:512
layer4.1.conv1.weight 512,512,3,3
layer4.1.bn2 BN:512
layer4.1.prelu.weight 512
layer4.1.conv2.weight 512,512,3,3
layer4.1.bn3 BN:512
bn2 BN:512
fc.weight 512,25088
fc.bias 512
features BN:512
"""

BLOCKS = {"r18": (2, 2, 2, 2), "r34": (3, 4, 6, 3), "r50": (3, 4, 14, 3), "r100": (3, 13, 30, 3)}
"""Blocks per stage of iresnet18 / 34 / 50 / 100 (arcface_torch and MagFace alike)."""

PARAMS_R50 = 43_590_848
"""Parameters of arcface_torch's iresnet50 (conv, BN affine, PReLU, fc; the frozen ``features``
scale included), as maskkit's test_model asserts for its own IResNet-50."""

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

MAGFACE_CLASSIFIER = {"module.": ("module.fc.weight", ("D", "C")), "dist": ("parallel_fc.weight", ("C", "D"))}
"""MagFace classifier entries beside the backbone: ``DataParallel`` trainer (``MagLinear``,
embedding x classes) and distributed trainer (``ParallelMagLinear``, classes x embedding)."""
MAGFACE_PREFIX = {"module.": "module.features.", "dist": "features.module."}


def parse(table: str) -> list[tuple[str, tuple[int, ...]]]:
    """The table's lines as ``[(key, shape)]``, BatchNorm entries expanded."""
    out = []
    for line in table.strip().splitlines():
        key, spec = line.split()
        if spec.startswith("BN:"):
            c = int(spec[3:])
            out += [(f"{key}.{k}", () if k == "num_batches_tracked" else (c,)) for k in BN]
        else:
            out.append((key, tuple(int(d) for d in spec.split(","))))
    return out


def arcface_layout(depth: str) -> list[tuple[str, tuple[int, ...]]]:
    """arcface_torch ``iresnet<depth>``'s state_dict entries: r18's table with each stage's
    blocks repeated per :data:`BLOCKS` (block 0 as r18's ``layerS.0``, the others as ``layerS.1``)."""
    r18 = parse(ARCFACE_R18)
    out = [(k, s) for k, s in r18 if not k.startswith("layer") and not k.startswith(("bn2.", "fc.", "features."))]
    for s, n in enumerate(BLOCKS[depth], start=1):
        for b in range(n):
            src = f"layer{s}.{0 if b == 0 else 1}."
            out += [(f"layer{s}.{b}." + k[len(src):], shape) for k, shape in r18 if k.startswith(src)]
    out += [(k, s) for k, s in r18 if k.startswith(("bn2.", "fc.", "features."))]
    return out


def magface_layout(depth: str, variant: str = "module.", classes: int = 1000) -> list[tuple[str, tuple[int, ...]]]:
    """A MagFace checkpoint's ``state_dict`` entries: the backbone under its prefix + the classifier."""
    prefix = MAGFACE_PREFIX[variant]
    key, dims = MAGFACE_CLASSIFIER[variant]
    sym = {"D": 512, "C": classes}
    return [(prefix + k, s) for k, s in arcface_layout(depth)] + [(key, tuple(sym[d] for d in dims))]
