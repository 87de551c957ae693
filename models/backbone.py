"""The point encoder every model is built on, its feature poolings and its checkpoint loading.

``PointEncoder`` is the stack grouping -> patch embedding (``encoder``) -> positional MLP
(``pos_embed``) -> transformer blocks (``blocks``) -> LayerNorm (``norm``). The pre-training encoder
(``MAE_encoder`` of ``Inter_MAE`` / ``Point_MAE``), the classifier (``PointTransformer``) and the
part segmenter (``PartSegTransformer``) subclass it, so the parameters keep the released names
(``encoder.*``, ``pos_embed.*``, ``blocks.blocks.N.*``, ``norm.*``) and a checkpoint of one loads into
the others through :func:`load_encoder`.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Literal, Mapping, Optional, Sequence, Tuple, get_args

import torch
from torch import Tensor, nn

from utils.checkpoint import CheckpointError, LoadReport, RemapError, Remapped, load_weights
from utils.schema import ConfigError
from utils.logger import print_log

from .layers import DEFAULT_EMBED_COMPUTE, Group, TransformerEncoder, build_patch_embed, pos_embedding

# Top-level names of a PointEncoder's parameters (classifier / segmenter) and their prefix inside a
# pre-training model.
ENCODER_PREFIXES = ("encoder.", "pos_embed.", "blocks.", "norm.")
PRETRAIN_PREFIX = "MAE_encoder."

# ------------------------------------------------------------------------------- initialisation
# ``model.init`` (segmentation: ``init`` of PartSegTransformer):
#   released      what the released code ends up with. Pre-training: trunc-normal(0.02) encoder
#                 (MaskTransformer._init_weights), xavier-uniform decoder Linears
#                 (TransformerDecoder._init_weights), PyTorch's default for the heads. Classifier
#                 and segmenter: PyTorch's default init everywhere (their _init_weights is defined
#                 but never applied), cls_token / cls_pos trunc-normal(0.02).
#   trunc_normal  the project's earlier choice: trunc-normal(0.02) Linears / Conv1ds, unit LayerNorm,
#                 applied to the whole classifier / segmenter and to the pre-training decoder.
InitMode = Literal["released", "trunc_normal"]
INIT_MODES = get_args(InitMode)
PatchEmbedName = Literal["inter_mae", "point_mae"]  # models.layers.PATCH_EMBEDS


def check_init(value, where: str = "model.init", source: Optional[str] = None) -> str:
    """``value`` if it is one of :data:`INIT_MODES`; else a ConfigError naming key, value and file."""
    if value not in INIT_MODES:
        raise ConfigError(f"{where}: '{value}' is not an initialisation; expected one of {list(INIT_MODES)} "
                          f"(released: as the released code; trunc_normal: trunc-normal 0.02 everywhere)", source)
    return value


# ----------------------------------------------------------------------------------- poolings
def max_mean_pool(tokens: Tensor) -> Tensor:
    """(B, L, C) -> (B, 2C): ``[max over L, mean over L]``, in this order.

    The global feature of frozen-feature protocols (linear SVM, t-SNE, feature extraction) and of
    the segmentation head (over its 3C concatenated block outputs).
    """
    return torch.cat([tokens.amax(dim=1), tokens.mean(dim=1)], dim=-1)


def first_max_pool(tokens: Tensor) -> Tensor:
    """(B, 1 + L, C) -> (B, 2C): ``[token 0, max over tokens 1..L]``, in this order.

    The classifier's head input (token 0 is the cls token) and the point side of the inter-modal
    loss (``pro_head`` over the decoded sequence), as released.
    """
    return torch.cat([tokens[:, 0], tokens[:, 1:].amax(dim=1)], dim=-1)


# ------------------------------------------------------------------------------------ encoder
class PointEncoder(nn.Module):
    """Patches of a cloud -> normalised transformer tokens.

    Args:
        trans_dim: token width C.
        depth, num_heads, drop_path_rate: the transformer (drop path linspace(0, rate, depth)).
        encoder_dims: output width of the patch embedding (equal to ``trans_dim`` in every released model).
        num_group, group_size: G patches of K points (FPS centres, kNN).
        patch_embed: ``inter_mae`` (bias-free convs + TransPooling) or ``point_mae`` (mini-PointNet).
        fps_backend: farthest point sampling on CUDA (``auto``, ``torch``, ``triton``, ``pointnet2_ops``).
        embed_compute: the patch embedding's arithmetic (``fast`` or ``exact``; same parameters).

    The last two change how, not what, the model computes; a run takes them from its settings
    (top-level config keys ``fps_backend`` / ``embed_compute``, see utils/settings.py).
    """

    def __init__(self, trans_dim: int = 384, depth: int = 12, num_heads: int = 6, drop_path_rate: float = 0.1,
                 encoder_dims: int = 384, num_group: int = 64, group_size: int = 32, patch_embed: str = "inter_mae",
                 fps_backend: str = "auto", embed_compute: str = DEFAULT_EMBED_COMPUTE):
        super().__init__()
        self.trans_dim = trans_dim
        self.patch_embed_kind = patch_embed
        self.group_divider = Group(num_group=num_group, group_size=group_size, fps_backend=fps_backend)
        self.encoder = build_patch_embed(patch_embed, encoder_dims, embed_compute)
        self.pos_embed = pos_embedding(trans_dim)
        self.blocks = TransformerEncoder(trans_dim, depth, num_heads, drop_path_rate=drop_path_rate)
        self.norm = nn.LayerNorm(trans_dim)

    # entries besides the encoder's that a checkpoint gives when it has them (checkpoint_filter_fn)
    checkpoint_extra_keys: Tuple[str, ...] = ()

    @staticmethod
    def checkpoint_filter_fn(state: Mapping[str, Tensor], model: "PointEncoder") -> "Remapped":
        """The encoder of any checkpoint under this model's names: :func:`encoder_filter_fn`."""
        return encoder_filter_fn(state, model)

    def transform(self, tokens: Tensor, pos: Tensor) -> Tensor:
        """Tokens and positional embeddings (B, L, C) -> normalised output of the last block (B, L, C)."""
        return self.norm(self.blocks(tokens, pos))

    def transform_layers(self, tokens: Tensor, pos: Tensor, layers: Sequence[int]) -> Tuple[Tensor, ...]:
        """Like :meth:`transform`, but the normalised outputs of the blocks ``layers`` (each (B, L, C))."""
        _, outputs = self.blocks(tokens, pos, return_layers=tuple(layers))
        return tuple(self.norm(out) for out in outputs)

    def load_model_from_ckpt(self, ckpt_path: str, strict: bool = True, logger=None, trust: bool = False) -> LoadReport:
        """Take over the encoder of a pre-training, classifier or segmentation checkpoint (released
        name); the head stays as initialised. See :func:`load_encoder`."""
        return load_encoder(self, ckpt_path, strict=strict, logger=logger, trust=trust)

    def patch_tokens(self, pts: Tensor) -> Tensor:
        """Points (B, N, 3) -> normalised tokens of all G patches (B, G, C), unmasked, no cls token."""
        neighborhood, center = self.group_divider(pts)
        return self.transform(self.encoder(neighborhood), self.pos_embed(center))


# -------------------------------------------------------------------------------- checkpoints
def checkpoint_kind(state: Mapping[str, Tensor]) -> str:
    """What a (prefix-cleaned) state dict holds: ``pretrain`` (``MAE_encoder.*``), ``classifier``
    (``cls_head_finetune.*``), ``segmentation`` (``label_conv.*``), ``encoder`` (bare encoder) or
    ``unknown``."""
    if any(k.startswith(PRETRAIN_PREFIX) for k in state):
        return "pretrain"
    if any(k.startswith("cls_head_finetune.") for k in state):
        return "classifier"
    if any(k.startswith("label_conv.") for k in state):
        return "segmentation"
    if any(k.startswith(ENCODER_PREFIXES) for k in state):
        return "encoder"
    return "unknown"


def encoder_state_dict(state: Mapping[str, Tensor], source: Optional[str] = None) -> "OrderedDict[str, Tensor]":
    """The ``PointEncoder`` weights of any checkpoint, named as in a classifier / segmenter.

    Pre-training checkpoints keep the encoder under ``MAE_encoder.``; classifiers and segmenters
    at the top level. Decoder, heads, tokens and the image branch are left out. None of them:
    CheckpointError naming ``source`` (without one: a RemapError, which ``load_weights`` names).
    """
    kind = checkpoint_kind(state)
    if kind == "pretrain":
        out = OrderedDict((k[len(PRETRAIN_PREFIX):], v) for k, v in state.items() if k.startswith(PRETRAIN_PREFIX))
    else:
        out = OrderedDict((k, v) for k, v in state.items() if k.startswith(ENCODER_PREFIXES))
    if not out:
        why = "holds no point encoder weights (no 'MAE_encoder.*' or 'encoder.*' keys)"
        if source is None:
            raise RemapError(why)
        raise CheckpointError(f"checkpoint '{source}' {why}")
    return out


def patch_embed_kind(state: Mapping[str, Tensor]) -> Optional[str]:
    """Which patch embedding an encoder state dict was trained with (None if it has none)."""
    if any(k.startswith("encoder.first_trans.") for k in state):
        return "inter_mae"
    if "encoder.first_conv.0.bias" in state:
        return "point_mae"
    return None


def encoder_filter_fn(state: Mapping[str, Tensor], model: "PointEncoder") -> Remapped:
    """The checkpoint remap of every :class:`PointEncoder` (``PointEncoder.checkpoint_filter_fn``):
    the encoder of any checkpoint (pre-training ``MAE_encoder.*``, classifier, segmenter, encoder
    export) under the model's names, plus the model's ``checkpoint_extra_keys`` the checkpoint has (a
    classifier's ``cls_token`` / ``cls_pos``); the model's other keys (its head) are ``new``. The
    patch embedding must be the model's."""
    encoder = encoder_state_dict(state)
    embed = patch_embed_kind(encoder)
    if embed is not None and embed != model.patch_embed_kind:
        raise RemapError(f"uses the '{embed}' patch embedding but the model is built with "
                         f"'{model.patch_embed_kind}'; set model.patch_embed: {embed} (segmentation: --patch_embed {embed})")
    wanted = OrderedDict(encoder)
    wanted.update((k, state[k]) for k in model.checkpoint_extra_keys if k in state)
    head = tuple(k for k in model.state_dict() if not k.startswith(ENCODER_PREFIXES))
    return Remapped(wanted, head, checkpoint_kind(state))


def load_encoder(model: PointEncoder, path: str, strict: bool = True, logger=None, trust: bool = False) -> LoadReport:
    """Load the encoder of any checkpoint (pre-training, classifier, segmenter) into ``model``:
    :func:`utils.checkpoint.load_weights` with :func:`encoder_filter_fn`, and one log line: what was
    loaded, what is new, what the checkpoint had that was not used.

    With ``strict`` every encoder tensor must be present; a tensor of another shape is always an
    error, with a table of the mis-shaped tensors and the config keys to change. The model's own
    head stays as initialised. ``trust``: full unpickling (``--trust_checkpoint``; see
    ``utils.checkpoint.load_checkpoint_file``).
    """
    report = load_weights(model, path, strict=strict, remap=encoder_filter_fn, trust=trust)
    new = sorted({k.split(".")[0] for k in report.new})
    embed = patch_embed_kind(dict.fromkeys(report.loaded))
    missing = f"; missing (--partial_load): {len(report.hard_missing)} tensors" if report.hard_missing else ""
    print_log(f"[{type(model).__name__}] {report.note} checkpoint {path}: loaded {len(report.loaded)} tensors into the "
              f"encoder ({embed or 'unknown'} patch embedding); new: {', '.join(new) or 'nothing'} "
              f"({len(report.new)} tensors){missing}; not used: {report.unused} checkpoint tensors",
              logger=logger)
    return report
