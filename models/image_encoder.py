"""Image side of Inter-MAE's inter-modal branch: rendered views -> timm encoder ->
``inv_head`` -> NT-Xent against the projected point features.

The released ``Inter_MAE.forward`` built, in every forward pass, a throw-away ResNet-50 wrapper
(``models/ResNet.py``) and at once overwrote it with a ViT wrapper (``models/ViT.py``: timm 0.4.5's
randomly initialised ``vit_small_patch16_224`` plus that wrapper's own ``inv_head``), so the image
side was never trained or saved. It ran the wrapper once per view (a batch of B images each, so
``inv_head``'s BatchNorm normalises over B) and averaged the V outputs. Here the encoder and
``inv_head`` are registered sub-modules; ``per_view`` (default true) keeps the per-view batches,
and ``fresh_encoder_every_step`` restores the fresh random encoder of the release.
"""
from __future__ import annotations

import os
import sys
from typing import Mapping, Optional, Sequence, Tuple

import timm
import torch
import torch.nn.functional as F
from timm.data import resolve_model_data_config
from torch import Tensor, nn

from utils.checkpoint import NoWeightsError, Remapped, load_weights
from utils.schema import ConfigError, Schema, origin_of

from .build import signature_schema
from utils.logger import print_log

PROJ_DIM = 256  # width of pro_head's output, which inv_head must match


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.1) -> Tensor:
    """NT-Xent (SimCLR) between paired embeddings ``z1`` (B, D) and ``z2`` (B, D).

    The 2B embeddings are L2-normalised; for each of them the positive is its partner and the
    negatives are the other 2B-2 embeddings (both modalities); cross-entropy over the
    cosine similarities / ``temperature``, averaged over all 2B anchors (both directions).
    Computed in fp32. Returns a scalar.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"nt_xent expects two (B, D) tensors of the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    B = z1.shape[0]
    if B < 2:
        raise ValueError("nt_xent needs a batch of at least 2 pairs (no negatives otherwise)")
    z = F.normalize(torch.cat([z1, z2], dim=0).float(), dim=1)
    sim = z @ z.t() / temperature
    sim = sim.masked_fill(torch.eye(2 * B, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(B, 2 * B), torch.arange(0, B)]).to(z.device)
    return F.cross_entropy(sim, targets)


def build_inv_head(in_dim: int, out_dim: int = PROJ_DIM) -> nn.Sequential:
    """``inv_head`` (CrossPoint's): Linear(F,512,no bias)-BN-ReLU-Linear(512,out,no bias)."""
    return nn.Sequential(nn.Linear(in_dim, 512, bias=False), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
                         nn.Linear(512, out_dim, bias=False))


def create_encoder(name: str, model_kwargs: Optional[Mapping] = None) -> nn.Module:
    """A timm model without its classifier (``num_classes=0``): images (N,3,H,W) -> (N, num_features)."""
    try:
        return timm.create_model(name, pretrained=False, num_classes=0, **dict(model_kwargs or {}))
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise ConfigError(f"model.image_branch.model: '{name}' is not a timm model name "
                              f"(timm.list_models() lists them)") from None
        raise


def _classifier_prefixes(model: nn.Module) -> Tuple[str, ...]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or ()
    if isinstance(names, str):
        names = (names,)
    return tuple(f"{n}." for n in names)


def timm_filter_fn(state: Mapping[str, Tensor], model: nn.Module) -> Remapped:
    """The checkpoint remap of a timm encoder: its architecture's ``checkpoint_filter_fn`` (converts
    released formats, resamples position embeddings), then the classifier's tensors dropped (the
    encoder is built with ``num_classes=0``)."""
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state = filter_fn(state, model)
    prefixes = _classifier_prefixes(model)
    kept = {k: v for k, v in state.items() if not (prefixes and k.startswith(prefixes))}
    dropped = len(state) - len(kept)
    return Remapped(kept, note=f"dropped {dropped} classifier tensors" if dropped else "")


def load_encoder_weights(model: nn.Module, path: str) -> str:
    """Load a local weights file into a timm encoder; returns a one-line report.

    ``.npz``: timm's big_vision / JAX loader (``model.load_pretrained``, ViTs). ``.safetensors``
    and ``.pth``/``.pt``/``.bin``: a state dict (or a dict holding one, see
    :func:`utils.checkpoint.state_dict_of`), passed through the timm architecture's
    ``checkpoint_filter_fn`` (converts released formats, resamples position embeddings). Classifier
    weights are dropped (the encoder has none); every other key must match exactly.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model.image_branch.pretrained: weights file '{path}' does not exist "
                                f"(expected a local .pth / .safetensors / .npz file; nothing is downloaded)")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npz":
        if not hasattr(model, "load_pretrained"):
            raise ConfigError(f"model.image_branch.pretrained: '{path}' is an .npz file, which timm loads only for "
                              f"ViT-style models; {type(model).__name__} has no npz loader")
        model.load_pretrained(path)
        return f"loaded {path} with timm's npz loader"
    if ext not in (".safetensors", ".pth", ".pt", ".bin"):
        raise ConfigError(f"model.image_branch.pretrained: '{path}' has extension '{ext}'; "
                          f"expected .pth, .pt, .bin, .safetensors or .npz")
    try:
        # the one reader (weights-only: a refused pickle is one line naming the file and the global)
        report = load_weights(model, path, remap=timm_filter_fn)
    except (NoWeightsError, AttributeError):  # not a dict of tensors
        raise ConfigError(f"model.image_branch.pretrained: '{path}' does not hold a state dict of tensors") from None
    return f"image encoder weights from {path}: {report.summary()}" + (f"; {report.note}" if report.note else "")


class ImageBranch(nn.Module):
    """Rendered views (B, V, 3, H, W) in [0, 1] (or cached encoder features (B, V, F)) -> (B, 256).

    Args:
        model: timm model name; built with ``pretrained=False, num_classes=0``.
        model_kwargs: extra ``timm.create_model`` arguments (e.g. ``img_size``, ``depth``).
        pretrained: local weights file for the encoder, or None (random initialisation).
        trainable: train the encoder (True) or freeze it (False: no gradients, always eval mode).
        normalize: normalise images with the encoder's ``mean``/``std`` (from the timm model's
            pretrained config unless given: 0.5/0.5 for ``vit_small_patch16_224``). The release fed
            the [0, 1] tensors unnormalised (``normalize: false``).
        weight: factor of the NT-Xent loss (released 1e-4).
        temperature: NT-Xent temperature (released 0.1).
        fresh_encoder_every_step: released behaviour: a new random encoder and ``inv_head`` every
            call, never registered, trained or saved (ablations only).
        per_view: run encoder and ``inv_head`` on each view's batch of B images separately (the
            released loop over views: BatchNorm statistics over B, per view) and average the V
            embeddings; false: one batch of all B*V images.
    """

    def __init__(self, model: str = "vit_small_patch16_224", model_kwargs: Optional[Mapping] = None,
                 pretrained: Optional[str] = None, trainable: bool = True, normalize: bool = True,
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 weight: float = 1e-4, temperature: float = 0.1, fresh_encoder_every_step: bool = False,
                 per_view: bool = True, logger=None):
        super().__init__()
        self.model_name = model
        self.model_kwargs = dict(model_kwargs or {})
        self.trainable = bool(trainable)
        self.normalize = bool(normalize)
        self.weight = float(weight)
        self.temperature = float(temperature)
        self.fresh_encoder_every_step = bool(fresh_encoder_every_step)
        self.per_view = bool(per_view)
        if self.fresh_encoder_every_step and pretrained:
            raise ConfigError("model.image_branch: fresh_encoder_every_step builds random encoders; "
                              "it cannot be combined with 'pretrained'")
        encoder = create_encoder(model, self.model_kwargs)
        self.num_features = int(encoder.num_features)
        data_cfg = resolve_model_data_config(encoder)
        size = getattr(getattr(encoder, "patch_embed", None), "img_size", None) or data_cfg["input_size"][1:]
        self.input_size: Tuple[int, int] = (int(size[0]), int(size[1]))
        self.register_buffer("mean", torch.tensor(list(mean or data_cfg["mean"]), dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(list(std or data_cfg["std"]), dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        if self.fresh_encoder_every_step:
            # Not registered: the released code rebuilt encoder and inv_head in every forward pass.
            self.encoder = None
            self.inv_head = None
            return
        if pretrained:
            print_log(load_encoder_weights(encoder, pretrained), logger=logger)
        self.encoder = encoder
        if not self.trainable:
            self.encoder.requires_grad_(False)
            self.encoder.eval()
        self.inv_head = build_inv_head(self.num_features)

    @classmethod
    def from_config(cls, cfg: Mapping, logger=None) -> "ImageBranch":
        """Build from a config's ``model.image_branch`` section (keys: IMAGE_BRANCH_KEYS)."""
        IMAGE_BRANCH_SCHEMA.check(cfg, "model.image_branch")
        kwargs = {k: cfg[k] for k in IMAGE_BRANCH_KEYS if k in cfg and cfg[k] is not None and k != "enabled"}
        if "model_kwargs" in kwargs and not isinstance(kwargs["model_kwargs"], Mapping):
            raise ConfigError("model.image_branch.model_kwargs must be a mapping", origin_of(cfg))
        for key in ("mean", "std"):
            if key in kwargs and len(kwargs[key]) != 3:
                raise ConfigError(f"model.image_branch.{key} must have 3 values (RGB)", origin_of(cfg))
        return cls(**kwargs, logger=logger)

    def train(self, mode: bool = True) -> "ImageBranch":
        super().train(mode)
        if self.encoder is not None and not self.trainable:
            self.encoder.eval()
        return self

    def build_fresh(self, device: torch.device) -> Tuple[nn.Module, nn.Module]:
        """A new random encoder and inv_head on ``device`` (``fresh_encoder_every_step``)."""
        encoder = create_encoder(self.model_name, self.model_kwargs).to(device)
        inv_head = build_inv_head(self.num_features).to(device).train(self.training)
        return encoder, inv_head

    def preprocess(self, imgs: Tensor) -> Tensor:
        """(N, 3, H, W) in [0, 1] -> resized to the encoder's input size and normalised."""
        imgs = imgs.float()
        if tuple(imgs.shape[-2:]) != self.input_size:
            imgs = F.interpolate(imgs, size=self.input_size, mode="bilinear", align_corners=False, antialias=True)
        if self.normalize:
            imgs = (imgs - self.mean) / self.std
        return imgs

    def encode(self, imgs: Tensor, encoder: Optional[nn.Module] = None) -> Tensor:
        """Encoder features of every view, before ``inv_head``: (B, V, 3, H, W) -> (B, V, F)."""
        if imgs.dim() != 5 or imgs.shape[2] != 3:
            raise ValueError(f"image branch expects images (B, V, 3, H, W), got {tuple(imgs.shape)}")
        encoder = encoder if encoder is not None else self.encoder
        B, V = imgs.shape[:2]
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.trainable and encoder is self.encoder):
            if self.per_view:  # one batch of B images per view, as the released loop
                return torch.stack([encoder(self.preprocess(imgs[:, v])) for v in range(V)], dim=1)
            feats = encoder(self.preprocess(imgs.flatten(0, 1)))
        return feats.reshape(B, V, -1)

    def project(self, feats: Tensor, inv_head: Optional[nn.Module] = None) -> Tensor:
        """(B, V, F) encoder features -> (B, 256): ``inv_head`` of every view, mean over views
        (``per_view``: ``inv_head`` on each view's batch of B separately, as released)."""
        inv_head = inv_head if inv_head is not None else self.inv_head
        B, V, Fd = feats.shape
        if self.per_view:
            return torch.stack([inv_head(feats[:, v]) for v in range(V)], dim=0).mean(dim=0)
        return inv_head(feats.reshape(B * V, Fd)).reshape(B, V, -1).mean(dim=1)

    def forward(self, imgs_or_feats: Tensor) -> Tensor:
        """Images (B, V, 3, H, W) or cached encoder features (B, V, F) -> image embedding (B, 256)."""
        if self.fresh_encoder_every_step:
            if imgs_or_feats.dim() != 5:
                raise ValueError("fresh_encoder_every_step needs images (B, V, 3, H, W), not cached features")
            encoder, inv_head = self.build_fresh(imgs_or_feats.device)
            return self.project(self.encode(imgs_or_feats, encoder), inv_head)
        if imgs_or_feats.dim() == 5:
            return self.project(self.encode(imgs_or_feats))
        if imgs_or_feats.dim() == 3:
            if self.trainable:
                raise ValueError("cached image features need a frozen encoder (model.image_branch.trainable: false)")
            if imgs_or_feats.shape[-1] != self.num_features:
                raise ValueError(f"cached image features are {imgs_or_feats.shape[-1]} wide but the encoder "
                                 f"'{self.model_name}' gives {self.num_features}; rebuild the cache")
            return self.project(imgs_or_feats.to(self.inv_head[0].weight.dtype))
        raise ValueError(f"image branch expects images (B, V, 3, H, W) or features (B, V, F), got {tuple(imgs_or_feats.shape)}")

    def raw_loss(self, point_feats: Tensor, imgs_or_feats: Tensor) -> Tensor:
        """NT-Xent (unweighted) between point features (B, 256) and the image embedding (B, 256) of
        views (B, V, 3, H, W) or cached features (B, V, F). Scalar."""
        if point_feats.shape[0] != imgs_or_feats.shape[0]:
            raise ValueError(f"batch sizes differ: {point_feats.shape[0]} point clouds, {imgs_or_feats.shape[0]} image sets")
        return nt_xent(point_feats, self(imgs_or_feats), self.temperature)

    def loss(self, point_feats: Tensor, imgs_or_feats: Tensor) -> Tensor:
        """``weight`` * :meth:`raw_loss`: the contrastive term of the training loss. Scalar."""
        return self.weight * self.raw_loss(point_feats, imgs_or_feats)


# ``model.image_branch``: ``enabled`` and the constructor's arguments (``logger`` aside).
IMAGE_BRANCH_SCHEMA = Schema(optional=("enabled",) + signature_schema(ImageBranch.__init__, name=False).optional)
IMAGE_BRANCH_KEYS = IMAGE_BRANCH_SCHEMA.optional
