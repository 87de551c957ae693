"""Pre-training models: Inter-MAE, and the Point-MAE baseline it extends.

``Inter_MAE``: a masked patch autoencoder (``MAE_encoder`` sees the visible patches only; the
decoder sees the whole sequence: the encoded visible tokens followed by one learned mask token per
masked patch), a Chamfer reconstruction loss of the masked patches (predicted from the decoder's
mask-token outputs), and ``pro_head`` projecting the whole decoded sequence for the inter-modal
contrastive loss with the image branch (released ``models/Inter_MAE.py``).

Initialisation (``model.init``, see :data:`models.backbone.INIT_MODES`): ``released`` (default)
initialises the decoder's Linears xavier-uniform as the released ``TransformerDecoder._init_weights``
does; ``trunc_normal`` keeps the project's earlier trunc-normal(0.02) decoder.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, fields
from typing import Dict, Literal, Mapping, Optional, Union

import torch
from timm.layers import trunc_normal_
from torch import Tensor, nn

from extensions.chamfer_dist import ChamferDistanceL1, ChamferDistanceL2
from extensions.emd import EarthMoverDistance
from utils.checkpoint import Remapped
from utils.schema import ConfigError

from .backbone import InitMode, PatchEmbedName, PointEncoder, check_init, first_max_pool
from .build import MODELS, configurable
from .image_encoder import IMAGE_BRANCH_SCHEMA, ImageBranch
from .layers import DEFAULT_EMBED_COMPUTE, TransformerDecoder, init_weights, pos_embedding

LossName = Literal["cdl1", "cdl2", "emd"]


@dataclass
class PointMAETransformer:
    """``model.transformer_config`` of Point-MAE: the encoder (masking, widths, depth, heads, drop
    path) and the decoder (depth, heads; as wide as the encoder)."""

    mask_ratio: float
    mask_type: Literal["rand", "block"]
    trans_dim: int
    encoder_dims: int
    depth: int
    drop_path_rate: float
    num_heads: int
    decoder_depth: int
    decoder_num_heads: int


@dataclass
class InterMAETransformer(PointMAETransformer):
    """``model.transformer_config`` of Inter-MAE: Point-MAE's, with a decoder ``decoder_embed_dim``
    wide (released 256) behind ``decoder_embed``; ``embed_dim`` (released name) must equal ``trans_dim``."""

    embed_dim: Optional[int] = None
    decoder_embed_dim: int = 256


TRANSFORMER_KEYS = tuple(f.name for f in fields(PointMAETransformer))


def xavier_init_weights(m: nn.Module) -> None:
    """The released decoder's ``_init_weights``: xavier-uniform Linear weights, zero biases, unit
    LayerNorm (other modules untouched)."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.constant_(m.bias, 0)
    elif isinstance(m, nn.LayerNorm):
        nn.init.constant_(m.bias, 0)
        nn.init.constant_(m.weight, 1.0)


def random_mask(center: Tensor, ratio: float) -> Tensor:
    """Mask int(ratio*G) patches per sample uniformly at random. center (B, G, 3) -> (B, G) bool."""
    B, G, _ = center.shape
    num_mask = int(ratio * G)
    if num_mask == 0:
        return torch.zeros(B, G, dtype=torch.bool, device=center.device)
    rank = torch.rand(B, G, device=center.device).argsort(dim=1).argsort(dim=1)
    return rank < num_mask


def block_mask(center: Tensor, ratio: float) -> Tensor:
    """Mask the int(ratio*G) centres nearest to one random centre. (B, G, 3) -> (B, G) bool."""
    B, G, _ = center.shape
    num_mask = int(ratio * G)
    if num_mask == 0:
        return torch.zeros(B, G, dtype=torch.bool, device=center.device)
    seed = torch.randint(0, G, (B,), device=center.device)
    seed_xyz = center[torch.arange(B, device=center.device), seed].unsqueeze(1)  # B 1 3
    dist = (center.float() - seed_xyz.float()).norm(dim=-1)  # B G
    rank = dist.argsort(dim=1).argsort(dim=1)
    return rank < num_mask


class MaskTransformer(PointEncoder):
    """The pre-training encoder (``MAE_encoder``): a :class:`PointEncoder` that masks patches.

    ``neighborhood`` (B, G, K, 3), ``center`` (B, G, 3) -> visible tokens (B, G_vis, C) and the
    mask (B, G) bool (True = masked). Only visible patches enter the transformer.
    """

    def __init__(self, trans_dim: int = 384, depth: int = 12, num_heads: int = 6, drop_path_rate: float = 0.1,
                 mask_ratio: float = 0.6, mask_type: str = "rand", encoder_dims: int = 384,
                 patch_embed: str = "inter_mae", num_group: int = 64, group_size: int = 32,
                 fps_backend: str = "auto", embed_compute: str = DEFAULT_EMBED_COMPUTE):
        if mask_type not in ("rand", "block"):
            raise ValueError(f"mask_type must be 'rand' or 'block', got '{mask_type}'")
        super().__init__(trans_dim, depth, num_heads, drop_path_rate, encoder_dims, num_group, group_size, patch_embed,
                         fps_backend, embed_compute)
        self.mask_ratio = mask_ratio
        self.mask_type = mask_type
        self.apply(init_weights)

    def make_mask(self, center: Tensor, noaug: bool = False) -> Tensor:
        if noaug or self.mask_ratio == 0:
            return torch.zeros(center.shape[:2], dtype=torch.bool, device=center.device)
        fn = random_mask if self.mask_type == "rand" else block_mask
        return fn(center, self.mask_ratio)

    def forward(self, neighborhood: Tensor, center: Tensor, mask: Optional[Tensor] = None, noaug: bool = False):
        B, G = center.shape[:2]
        if mask is None:
            mask = self.make_mask(center, noaug)
        else:
            mask = mask.to(device=center.device, dtype=torch.bool)
            counts = mask.sum(dim=1)
            if mask.shape != (B, G) or (counts != counts[0]).any():
                raise ValueError(f"mask must be (B, G) = ({B}, {G}) with the same number of masked patches per sample")
        visible = ~mask
        # All patches are embedded, as released, so the BatchNorm statistics of the patch embedding
        # cover every patch; only the visible tokens enter the transformer.
        tokens = self.encoder(neighborhood)  # B G C
        x_vis = tokens[visible].reshape(B, -1, tokens.shape[-1])  # B Gv C
        pos = self.pos_embed(center[visible].reshape(B, -1, 3))
        return self.transform(x_vis, pos), mask


# The image side of a pre-training model: the frozen-feature tools (SVM, t-SNE, reconstructions)
# never use it, and a Point-MAE layout has none.
IMAGE_BRANCH_PREFIXES = ("image_branch.", "inv_head.", "pro_head.")


def point_side_filter_fn(state: Mapping[str, Tensor], model: nn.Module) -> Remapped:
    """The checkpoint remap of the pre-training models (``checkpoint_filter_fn``): the point side of
    any pre-training checkpoint (Inter-MAE with or without an image branch, Point-MAE), its image
    branch left out; the model's own image-branch tensors (if any) are ``new``."""
    point = OrderedDict((k, v) for k, v in state.items() if not k.startswith(IMAGE_BRANCH_PREFIXES))
    own_image = tuple(k for k in model.state_dict() if k.startswith(IMAGE_BRANCH_PREFIXES))
    return Remapped(point, own_image, f"{len(state) - len(point)} image-branch tensors")


def build_reconstruction_loss(name: str) -> nn.Module:
    losses = {"cdl1": ChamferDistanceL1, "cdl2": ChamferDistanceL2, "emd": EarthMoverDistance}
    if name not in losses:
        raise ValueError(f"model.loss must be one of {sorted(losses)}, got '{name}'")
    return losses[name]()


class _MaskedPointAutoencoder(nn.Module):
    """Shared body of Point-MAE and Inter-MAE pre-training.

    Subclasses set ``decoder_dim`` and build ``self.decoder_embed`` (or Identity) and the
    reconstruction head. ``fps_backend`` / ``embed_compute``: see :class:`models.backbone.PointEncoder`.
    """

    default_patch_embed = "inter_mae"
    transformer_type = PointMAETransformer
    checkpoint_filter_fn = staticmethod(point_side_filter_fn)

    def __init__(self, *, group_size: int, num_group: int, loss: LossName,
                 transformer_config: Union[PointMAETransformer, Mapping], patch_embed: Optional[PatchEmbedName] = None,
                 init: InitMode = "released", fps_backend: str = "auto", embed_compute: str = DEFAULT_EMBED_COMPUTE):
        super().__init__()
        tc = transformer_config
        if not isinstance(tc, self.transformer_type):
            tc = self.transformer_type(**tc)
        self.transformer_config = tc
        self.init_mode = check_init(init, "model.init")
        self.trans_dim = tc.trans_dim
        self.group_size = group_size
        self.num_group = num_group
        self.drop_path_rate = tc.drop_path_rate
        self.MAE_encoder = MaskTransformer(
            trans_dim=tc.trans_dim, depth=tc.depth, num_heads=tc.num_heads, drop_path_rate=tc.drop_path_rate,
            mask_ratio=tc.mask_ratio, mask_type=tc.mask_type, encoder_dims=tc.encoder_dims,
            patch_embed=patch_embed or self.default_patch_embed, num_group=self.num_group,
            group_size=self.group_size, fps_backend=fps_backend, embed_compute=embed_compute,
        )
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.trans_dim))
        self.decoder_dim = self._decoder_dim(tc)
        self.decoder_pos_embed = pos_embedding(self.decoder_dim)
        self.MAE_decoder = TransformerDecoder(
            embed_dim=self.decoder_dim, depth=tc.decoder_depth, num_heads=tc.decoder_num_heads,
            drop_path_rate=[r.item() for r in torch.linspace(0, self.drop_path_rate, tc.decoder_depth)],
        )
        if self.init_mode == "released":
            self.MAE_decoder.apply(xavier_init_weights)
        self.group_divider = self.MAE_encoder.group_divider
        self.loss_func = build_reconstruction_loss(loss)
        trunc_normal_(self.mask_token, std=0.02)
        self._build_heads()

    def _build_heads(self) -> None:
        """The reconstruction head (after every shared module, in the released order)."""

    def _decoder_dim(self, tc) -> int:
        raise NotImplementedError

    def _embed_for_decoder(self, x: Tensor) -> Tensor:
        return x

    def _predict_points(self, x_rec: Tensor) -> Tensor:
        """Masked tokens (B, M, Cd) -> predicted patch points (B, M, K, 3)."""
        raise NotImplementedError

    def encode_decode(self, pts: Tensor, mask: Optional[Tensor] = None, noaug: bool = False) -> Dict[str, Tensor]:
        """Group, mask, encode, decode.

        Args:
            pts: (B, N, 3) points.
            mask: optional (B, G) bool, True = masked (same count per sample); random if None.
        Returns a dict: ``neighborhood`` (B,G,K,3), ``center`` (B,G,3), ``mask`` (B,G),
        ``decoded`` (B,G,Cd) decoder output in the order visible-then-masked, ``rebuild``
        (B,M,K,3) predicted masked patches relative to their centres, ``target`` (B,M,K,3).
        """
        neighborhood, center = self.group_divider(pts)
        x_vis, mask = self.MAE_encoder(neighborhood, center, mask=mask, noaug=noaug)
        B, _, C = x_vis.shape
        center_vis = center[~mask].reshape(B, -1, 3)
        center_mask = center[mask].reshape(B, -1, 3)
        M = center_mask.shape[1]
        x_full = torch.cat([x_vis, self.mask_token.expand(B, M, -1).to(x_vis.dtype)], dim=1)
        pos_full = self.decoder_pos_embed(torch.cat([center_vis, center_mask], dim=1))
        decoded = self.MAE_decoder(self._embed_for_decoder(x_full), pos_full)  # B G Cd
        rebuild = self._predict_points(decoded[:, decoded.shape[1] - M:])  # B M K 3
        target = neighborhood[mask].reshape(B, M, self.group_size, 3)
        return {"neighborhood": neighborhood, "center": center, "mask": mask, "decoded": decoded,
                "rebuild": rebuild, "target": target}

    def reconstruction_loss(self, out: Dict[str, Tensor]) -> Tensor:
        """Chamfer (or EMD) per masked patch, averaged over patches. Computed in fp32."""
        K = self.group_size
        return self.loss_func(out["rebuild"].reshape(-1, K, 3).float(), out["target"].reshape(-1, K, 3).float())

    @torch.no_grad()
    def reconstruct(self, pts: Tensor, mask: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """For visualisation: patches in absolute coordinates.

        Returns ``visible`` (B, G_vis*K, 3), ``predicted`` (B, M*K, 3) masked patches as predicted,
        moved back to their centres, ``reconstruction`` (B, G*K, 3) = visible + predicted,
        ``center`` (B, G, 3) and ``mask`` (B, G).
        """
        out = self.encode_decode(pts, mask=mask)
        B, G = out["mask"].shape
        K = self.group_size
        mask = out["mask"]
        vis = (out["neighborhood"][~mask].reshape(B, -1, K, 3) + out["center"][~mask].reshape(B, -1, 1, 3)).reshape(B, -1, 3)
        pred = (out["rebuild"].float() + out["center"][mask].reshape(B, -1, 1, 3)).reshape(B, -1, 3)
        return {"visible": vis, "predicted": pred, "reconstruction": torch.cat([vis, pred], dim=1),
                "center": out["center"], "mask": mask}


@MODELS.register_module()
@configurable
class Inter_MAE(_MaskedPointAutoencoder):
    """Inter-MAE pre-training model. ``pts`` (B, N, 3) [, ``imgs`` (B, V, 3, H, W) or cached image
    features (B, V, F)] -> losses.

    ``forward`` returns a dict of scalars: ``loss`` (what to back-propagate: ``loss_rec`` +
    ``loss_con_weighted``), ``loss_rec`` (the Chamfer / EMD reconstruction loss) and, with an
    image branch, ``loss_con_raw`` (the inter-modal NT-Xent loss) and ``loss_con_weighted``
    (``model.image_branch.weight`` times it). A batch without views (``imgs`` None, or V = 0)
    gives 0 for both, and, when gradients are on, a zero-weighted term of every trainable
    parameter of the image branch and ``pro_head``: under DDP each process then reduces the same
    gradients, whichever processes had views (their gradients average with the zeros).
    """

    transformer_type = InterMAETransformer
    config_sections = {"transformer_config": InterMAETransformer, "image_branch": IMAGE_BRANCH_SCHEMA}

    def __init__(self, *, group_size: int, num_group: int, loss: LossName,
                 transformer_config: Union[InterMAETransformer, Mapping], patch_embed: Optional[PatchEmbedName] = None,
                 init: InitMode = "released", image_branch: Optional[Mapping] = None, fps_backend: str = "auto",
                 embed_compute: str = DEFAULT_EMBED_COMPUTE):
        super().__init__(group_size=group_size, num_group=num_group, loss=loss, transformer_config=transformer_config,
                         patch_embed=patch_embed, init=init, fps_backend=fps_backend, embed_compute=embed_compute)
        tc = self.transformer_config
        embed_dim = tc.trans_dim if tc.embed_dim is None else tc.embed_dim
        if embed_dim != tc.trans_dim:
            raise ConfigError(f"model.transformer_config.embed_dim ({embed_dim}) must equal trans_dim ({tc.trans_dim})")
        self.decoder_embed = nn.Linear(embed_dim, self.decoder_dim)
        self.pre_head = nn.Sequential(nn.Conv1d(self.decoder_dim, 3 * self.group_size, 1))
        self.pro_head = nn.Sequential(
            nn.Linear(2 * self.decoder_dim, 256, bias=False), nn.BatchNorm1d(256), nn.ReLU(inplace=True),
            nn.Linear(256, 256, bias=False),
        )
        # The image branch (views -> timm encoder -> inv_head) and its weighted NT-Xent loss.
        branch_cfg = image_branch
        self.image_branch = None
        if branch_cfg is not None and branch_cfg.get("enabled", True):
            self.image_branch = ImageBranch.from_config(branch_cfg)

    def _decoder_dim(self, tc) -> int:
        return tc.decoder_embed_dim

    def _embed_for_decoder(self, x: Tensor) -> Tensor:
        return self.decoder_embed(x)

    def _predict_points(self, x_rec: Tensor) -> Tensor:
        B, M, _ = x_rec.shape
        return self.pre_head(x_rec.transpose(1, 2)).transpose(1, 2).reshape(B, M, self.group_size, 3)

    def point_features(self, decoded: Tensor) -> Tensor:
        """Decoded sequence (B, G, Cd) -> projected point feature (B, 256): ``pro_head`` of
        :func:`first_max_pool` (first token ++ max of the rest)."""
        return self.pro_head(first_max_pool(decoded))

    def idle_contrastive_term(self, like: Tensor) -> Tensor:
        """0 (a scalar of ``like``'s device) times the sum of every trainable parameter of the image
        branch and ``pro_head``: keeps them in the autograd graph (with zero gradients) for a batch
        without views, when gradients are on; a plain 0 otherwise."""
        zero = like.new_zeros((), dtype=torch.float32)
        if not torch.is_grad_enabled():
            return zero
        params = [p for m in (self.image_branch, self.pro_head) for p in m.parameters() if p.requires_grad]
        return zero + 0.0 * sum(p.float().sum() for p in params) if params else zero

    def forward(self, pts: Tensor, imgs: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Dict[str, Tensor]:
        """``pts`` (B, N, 3), ``imgs`` views (B, V, 3, H, W) / cached features (B, V, F) or None,
        ``mask`` (B, G) bool or None (random) -> the loss dict of the class docstring."""
        out = self.encode_decode(pts, mask=mask)
        loss_rec = self.reconstruction_loss(out)
        if self.image_branch is None:
            if imgs is not None:
                raise RuntimeError("images were passed but the model has no image branch (model.image_branch)")
            return {"loss_rec": loss_rec, "loss": loss_rec}
        if imgs is not None and imgs.shape[1] > 0:
            raw = self.image_branch.raw_loss(self.point_features(out["decoded"]), imgs)
            weighted = self.image_branch.weight * raw
        else:
            raw = weighted = self.idle_contrastive_term(loss_rec)
        return {"loss_rec": loss_rec, "loss_con_raw": raw, "loss_con_weighted": weighted, "loss": loss_rec + weighted}


@MODELS.register_module()
@configurable
class Point_MAE(_MaskedPointAutoencoder):
    """Point-MAE (ECCV 2022) pre-training baseline: decoder as wide as the encoder, no image branch.

    ``pts`` (B, N, 3) -> dict with ``loss`` = ``loss_rec``.
    """

    default_patch_embed = "point_mae"
    config_sections = {"transformer_config": PointMAETransformer}

    def _build_heads(self) -> None:
        self.increase_dim = nn.Sequential(nn.Conv1d(self.trans_dim, 3 * self.group_size, 1))

    def _decoder_dim(self, tc) -> int:
        return tc.trans_dim

    def _predict_points(self, x_rec: Tensor) -> Tensor:
        B, M, _ = x_rec.shape
        return self.increase_dim(x_rec.transpose(1, 2)).transpose(1, 2).reshape(B, M, self.group_size, 3)

    def forward(self, pts: Tensor, imgs: Optional[Tensor] = None, mask: Optional[Tensor] = None) -> Dict[str, Tensor]:
        if imgs is not None:
            raise RuntimeError("Point_MAE has no image branch; use Inter_MAE for inter-modal pre-training")
        loss_rec = self.reconstruction_loss(self.encode_decode(pts, mask=mask))
        return {"loss_rec": loss_rec, "loss": loss_rec}
