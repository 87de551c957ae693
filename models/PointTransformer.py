"""The fine-tuning classifier (``PointTransformer``), SPEC §4."""
from __future__ import annotations

from collections import OrderedDict
import torch
from timm.layers import trunc_normal_
from torch import Tensor, nn

from utils.checkpoint import CheckpointError, LoadReport, load_checkpoint_file, load_state_dict_checked, state_dict_of
from utils.config import check_keys
from utils.logger import print_log

from .build import MODELS
from .layers import Group, TransformerEncoder, build_patch_embed, init_weights, patch_embed_kind_of_state_dict, pos_embedding

# Parameters of a pre-trained encoder that a classifier takes over (after MAE_encoder. is removed).
BACKBONE_PREFIXES = ("encoder.", "pos_embed.", "blocks.", "norm.")


def backbone_state_dict(state_dict, source: str = "<checkpoint>") -> "OrderedDict[str, Tensor]":
    """Pre-training or fine-tuning weights -> encoder weights named as in the classifier.

    Pre-training checkpoints (Inter-MAE or Point-MAE) store the encoder under ``MAE_encoder.``;
    fine-tuned classifiers store it at the top level. Decoder, heads and the image branch are
    dropped.
    """
    out = OrderedDict()
    pretrain = any(k.startswith("MAE_encoder.") for k in state_dict)
    for key, value in state_dict.items():
        if pretrain:
            if key.startswith("MAE_encoder."):
                out[key[len("MAE_encoder."):]] = value
        elif key.startswith(BACKBONE_PREFIXES) or key in ("cls_token", "cls_pos"):
            out[key] = value
    if not out:
        raise CheckpointError(f"checkpoint '{source}' holds no point encoder weights (no 'MAE_encoder.*' or 'encoder.*' keys)")
    return out


@MODELS.register_module()
class PointTransformer(nn.Module):
    """Transformer classifier. ``pts`` (B, N, 3) -> logits (B, cls_dim)."""

    def __init__(self, config):
        super().__init__()
        check_keys(config, "model (PointTransformer)",
                   required=("NAME", "trans_dim", "depth", "drop_path_rate", "cls_dim", "num_heads", "group_size",
                             "num_group", "encoder_dims"),
                   optional=("patch_embed", "label_smoothing"))
        self.config = config
        self.trans_dim = config.trans_dim
        self.depth = config.depth
        self.cls_dim = config.cls_dim
        self.group_size = config.group_size
        self.num_group = config.num_group
        self.patch_embed_kind = config.get("patch_embed", "inter_mae")
        self.label_smoothing = float(config.get("label_smoothing", 0.0))

        self.group_divider = Group(num_group=self.num_group, group_size=self.group_size)
        self.encoder = build_patch_embed(self.patch_embed_kind, config.encoder_dims)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, self.trans_dim))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, self.trans_dim))
        self.pos_embed = pos_embedding(self.trans_dim)
        self.blocks = TransformerEncoder(self.trans_dim, self.depth, config.num_heads, drop_path_rate=config.drop_path_rate)
        self.norm = nn.LayerNorm(self.trans_dim)
        self.cls_head_finetune = nn.Sequential(
            nn.Linear(self.trans_dim * 2, 256), nn.BatchNorm1d(256), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(256, 256), nn.BatchNorm1d(256), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(256, self.cls_dim),
        )
        self.loss_ce = nn.CrossEntropyLoss(label_smoothing=self.label_smoothing)
        self.apply(init_weights)
        trunc_normal_(self.cls_token, std=0.02)
        trunc_normal_(self.cls_pos, std=0.02)

    def get_loss_acc(self, ret: Tensor, gt: Tensor):
        """Cross-entropy loss and accuracy in percent (released name)."""
        loss = self.loss_ce(ret.float(), gt.long())
        acc = (ret.argmax(-1) == gt).float().mean() * 100
        return loss, acc

    def load_model_from_ckpt(self, ckpt_path: str, strict: bool = True, logger=None) -> LoadReport:
        """Take over the encoder of a pre-training (Inter-MAE / Point-MAE) or fine-tuned checkpoint.

        The patch embedding kind must match the checkpoint's; a mismatch is an error. With
        ``strict``, every backbone tensor must be present and fit; the classification head stays
        freshly initialised. Returns what was loaded and logs a summary.
        """
        ckpt = load_checkpoint_file(ckpt_path)
        state = backbone_state_dict(state_dict_of(ckpt, ckpt_path), ckpt_path)
        kind = patch_embed_kind_of_state_dict(state)
        if kind is not None and kind != self.patch_embed_kind:
            raise CheckpointError(
                f"checkpoint '{ckpt_path}' uses the '{kind}' patch embedding but the model is built with "
                f"patch_embed: {self.patch_embed_kind}; set model.patch_embed: {kind} in the config")
        report = load_state_dict_checked(self, state, strict=strict, source=ckpt_path,
                                         ignore_missing=("cls_head_finetune.", "cls_token", "cls_pos"))
        print_log(f"[PointTransformer] from {ckpt_path}: {report.summary()}", logger=logger)
        return report

    def forward_features(self, pts: Tensor) -> Tensor:
        """(B, N, 3) -> (B, 2C): cls output ++ max over patch outputs."""
        neighborhood, center = self.group_divider(pts)
        tokens = self.encoder(neighborhood)  # B G C
        B = tokens.shape[0]
        x = torch.cat([self.cls_token.expand(B, -1, -1), tokens], dim=1)
        pos = torch.cat([self.cls_pos.expand(B, -1, -1), self.pos_embed(center)], dim=1)
        x = self.norm(self.blocks(x, pos))
        return torch.cat([x[:, 0], x[:, 1:].amax(dim=1)], dim=-1)

    def forward(self, pts: Tensor) -> Tensor:
        return self.cls_head_finetune(self.forward_features(pts))
