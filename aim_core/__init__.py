"""aim_core: AIM (autoregressive image models) in pure PyTorch — model, targets, orders, masks, probes.

Imports only torch, numpy and the standard library (timm is a reference in the tests, not an import: it costs
~2 s per process).
"""

from aim_core.dvae import DVAE, train_dvae
from aim_core.flex import ATTN_IMPLS
from aim_core.heads import HEADS
from aim_core.kmeans import assign_clusters, fit_kmeans, load_codebook, save_codebook
from aim_core.masks import ATTENTION_MODES, PRETRAIN_ATTENTION, loss_positions, may_attend, sample_prefix_len
from aim_core.model import AIM, LossOutput, build_model
from aim_core.orders import ORDERS, Order, make_order
from aim_core.patches import normalize_patches, patchify, unpatchify
from aim_core.presets import PRESETS, AIMConfig, resolve_config
from aim_core.probes import AttentiveProbe, LinearProbe
from aim_core.targets import TARGET_TYPES, TARGETS, build_target

__all__ = [
    "AIM",
    "AIMConfig",
    "ATTENTION_MODES",
    "ATTN_IMPLS",
    "AttentiveProbe",
    "DVAE",
    "HEADS",
    "LinearProbe",
    "LossOutput",
    "ORDERS",
    "Order",
    "PRESETS",
    "PRETRAIN_ATTENTION",
    "TARGETS",
    "TARGET_TYPES",
    "assign_clusters",
    "build_model",
    "build_target",
    "fit_kmeans",
    "load_codebook",
    "loss_positions",
    "make_order",
    "may_attend",
    "normalize_patches",
    "patchify",
    "resolve_config",
    "sample_prefix_len",
    "save_codebook",
    "train_dvae",
    "unpatchify",
]
