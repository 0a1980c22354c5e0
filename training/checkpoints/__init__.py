"""Foreign weights in and maskkit's weights out: arcface_torch and MagFace IResNets, as data.

A user's own model comes in (``maskkit train --init``, ``maskkit eval/embed/export --model``) and
maskkit's go out (``maskkit export --format arcface-torch``) through one canonical form: the
**arcface_torch key layout** of the IResNet. The package holds one concern per module:

==================  ============================================================================
``layout``          the layout as data (keys and shapes per :class:`Arch`), the key maps to and
                    from maskkit's modules, :func:`infer_arch` and :func:`check_layout`
``read``            reading a file (:func:`load_file`, :func:`read_weights` ->
                    :class:`SourceWeights`), the preprocessing that travels with the weights,
                    where a model's eval records go (:func:`eval_home`)
``identify``        what a file holds: the state_dict inside its containers, the wrappers
                    around its keys (``module.``, ``_orig_mod.``...), the layout that is left
``finetune``        ``--init``: the config the weights fix and loading them into a FaceModel
``write``           ``backbone.pth`` out (:func:`write_arcface_torch`)
==================  ============================================================================

Every public name is importable from here (``from maskkit.training.checkpoints import
read_weights``), as before the split.
"""
from maskkit.training.checkpoints.finetune import (
    ARCH_KEYS,
    InitReport,
    apply_init_config,
    check_init_config,
    init_model,
    pretrained_names,
)
from maskkit.training.checkpoints.identify import (
    CONTAINER_KEYS,
    WRAPPER_PREFIXES,
    identify,
    strip_wrappers,
)
from maskkit.training.checkpoints.layout import (
    ARCFACE_TORCH_PREPROCESS,
    BLOCK,
    BN_KEYS,
    DOWNSAMPLE,
    HEAD,
    LAYOUTS,
    MAGFACE_BACKBONE,
    MAGFACE_CLASSIFIERS,
    MAGFACE_PREPROCESS,
    PREPROCESS_KEYS,
    STEM,
    Arch,
    WeightsError,
    arcface_to_facemodel_key,
    arcface_to_iresnet_key,
    arcface_torch_layout,
    check_layout,
    facemodel_to_arcface_key,
    infer_arch,
    iresnet_to_arcface_key,
    model_depth,
    split_index_of,
    unit_names,
)
from maskkit.training.checkpoints.read import (
    SourceWeights,
    eval_home,
    load_file,
    maskkit_run_of,
    read_weights,
    sha256_file,
)
from maskkit.training.checkpoints.write import (
    model_arch,
    preprocess_note,
    to_arcface_torch_state,
    write_arcface_torch,
)

__all__ = [
    "ARCH_KEYS", "InitReport", "apply_init_config", "check_init_config", "init_model", "pretrained_names",
    "CONTAINER_KEYS", "WRAPPER_PREFIXES", "identify", "strip_wrappers",
    "ARCFACE_TORCH_PREPROCESS", "BLOCK", "BN_KEYS", "DOWNSAMPLE", "HEAD", "LAYOUTS", "MAGFACE_BACKBONE",
    "MAGFACE_CLASSIFIERS", "MAGFACE_PREPROCESS", "PREPROCESS_KEYS", "STEM", "Arch", "WeightsError",
    "arcface_to_facemodel_key", "arcface_to_iresnet_key", "arcface_torch_layout", "check_layout",
    "facemodel_to_arcface_key", "infer_arch", "iresnet_to_arcface_key", "model_depth", "split_index_of",
    "unit_names", "SourceWeights", "eval_home", "load_file", "maskkit_run_of", "read_weights", "sha256_file",
    "model_arch", "preprocess_note", "to_arcface_torch_state", "write_arcface_torch",
]
