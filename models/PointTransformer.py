"""The fine-tuning classifier (``PointTransformer``, released ``models/Inter_MAE.py:PointTransformer``).

Initialisation (``model.init``): ``released`` (default) keeps PyTorch's default initialisation of
every layer, as the released classifier does (its ``_init_weights`` is applied only by
``load_model_from_ckpt(None)``, which the released runner never calls); ``cls_token`` and
``cls_pos`` are trunc-normal(0.02) in both modes. ``trunc_normal`` applies
:func:`models.layers.init_weights` to the whole classifier (the project's earlier choice).
"""
from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from torch import Tensor, nn

from typing import Optional

from utils.schema import ConfigError

from .backbone import InitMode, PatchEmbedName, PointEncoder, check_init, first_max_pool
from .build import MODELS, configurable
from .layers import DEFAULT_EMBED_COMPUTE, init_weights


@MODELS.register_module()
@configurable
class PointTransformer(PointEncoder):
    """Transformer classifier: a :class:`PointEncoder` run unmasked with a cls token, then
    ``cls_head_finetune`` on :func:`first_max_pool` (cls output ++ max over patch outputs).

    ``pts`` (B, N, 3) -> logits (B, cls_dim).
    """

    checkpoint_extra_keys = ("cls_token", "cls_pos")  # a fine-tuned classifier's, taken over with its encoder

    # cls_dim may be left out of the config when the training set names its classes (a folder
    # dataset): the fine-tuning job sets it from the number of classes before the model is built.
    def __init__(self, *, trans_dim: int, depth: int, drop_path_rate: float, num_heads: int, group_size: int,
                 num_group: int, encoder_dims: int, cls_dim: Optional[int] = None,
                 patch_embed: PatchEmbedName = "inter_mae", label_smoothing: float = 0.0, init: InitMode = "released",
                 fps_backend: str = "auto", embed_compute: str = DEFAULT_EMBED_COMPUTE):
        if cls_dim is None:
            raise ConfigError("model.cls_dim is not set: give the number of classes (or train on a dataset that "
                              "names its classes, which sets it)")
        super().__init__(trans_dim, depth, num_heads, drop_path_rate, encoder_dims, num_group, group_size, patch_embed,
                         fps_backend, embed_compute)
        self.init_mode = check_init(init, "model.init")
        self.depth = depth
        self.cls_dim = cls_dim
        self.group_size = group_size
        self.num_group = num_group
        self.label_smoothing = float(label_smoothing)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, self.trans_dim))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, self.trans_dim))
        self.cls_head_finetune = nn.Sequential(
            nn.Linear(self.trans_dim * 2, 256), nn.BatchNorm1d(256), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(256, 256), nn.BatchNorm1d(256), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(256, self.cls_dim),
        )
        self.loss_ce = nn.CrossEntropyLoss(label_smoothing=self.label_smoothing)
        if self.init_mode == "trunc_normal":
            self.apply(init_weights)
        trunc_normal_(self.cls_token, std=0.02)
        trunc_normal_(self.cls_pos, std=0.02)

    def get_loss_acc(self, ret: Tensor, gt: Tensor):
        """Cross-entropy loss and accuracy in percent (released name)."""
        loss = self.loss_ce(ret.float(), gt.long())
        acc = (ret.argmax(-1) == gt).float().mean() * 100
        return loss, acc

    def forward_features(self, pts: Tensor) -> Tensor:
        """(B, N, 3) -> (B, 2C): :func:`first_max_pool` of the encoded sequence (cls token first)."""
        neighborhood, center = self.group_divider(pts)
        tokens = self.encoder(neighborhood)  # B G C
        B = tokens.shape[0]
        x = torch.cat([self.cls_token.expand(B, -1, -1), tokens], dim=1)
        pos = torch.cat([self.cls_pos.expand(B, -1, -1), self.pos_embed(center)], dim=1)
        return first_max_pool(self.transform(x, pos))

    def forward(self, pts: Tensor) -> Tensor:
        return self.cls_head_finetune(self.forward_features(pts))
