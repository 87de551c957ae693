"""Frozen pre-trained point features for your own point clouds.

The feature of a cloud is the one of the frozen-feature protocols (linear SVM, t-SNE):
``max_mean_pool`` (``[max, mean]`` over the G patch tokens, width 2C) of the unmasked encoder's
``patch_tokens``, after the preparation used in training and testing: the cloud is centred and
scaled into the unit sphere (``datasets.common.pc_normalize``), then reduced to ``npoints`` by
farthest point sampling (``extensions.pointops.fps``, as at test time).

    from engine.features import load_point_encoder
    encoder = load_point_encoder("experiments/pretrain/NAME/ckpt-last.pth")   # config.yaml beside it
    feats = encoder.extract(points)      # points (B, N, 3), N >= npoints -> (B, 2C) on the CPU

Checkpoints: pre-training (``MAE_encoder.*``), fine-tuned classifier or segmenter, or a
``.safetensors`` export (``tools/export_weights.py``, whole model or ``--encoder_only``). The encoder
sizes (width, depth, heads, G, K) come from the run's config: ``config=`` (a YAML path or a dict),
else the JSON beside a ``.safetensors`` file, else ``config.yaml`` beside the checkpoint (written
by every run). The patch embedding follows the checkpoint. Files: every format of
:mod:`datasets.io` (the reader of folder datasets and ``tools/predict.py``): ``.ply``, ``.xyz`` /
``.txt`` / ``.pts`` / ``.csv``, ``.npy`` / ``.npz`` (every point), meshes ``.off`` / ``.obj`` /
``.stl`` (and ``.ply`` with faces; ``max(2048, npoints)`` seeded samples on the surface).
``tools/extract_features.py`` is the command.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from easydict import EasyDict
from torch import Tensor
from tqdm import tqdm

from datasets.common import pc_normalize
from datasets.io import (CLOUD_EXTS, BadFileError, TooFewPointsError, bad_files_message, list_cloud_files, read_cloud,
                         reason_kind)
from extensions.pointops import fps
from models.backbone import (PointEncoder, checkpoint_kind, encoder_state_dict, max_mean_pool, patch_embed_kind)
from utils.checkpoint import atomic_write, load_checkpoint_file, load_weights, state_dict_of
from utils.cli import InputError
from utils.config import ConfigError, cfg_from_yaml_file, origin_of
from utils.logger import print_log
from utils.misc import resolve_device

DEFAULT_NPOINTS = 1024
MESH_POINTS = 2048  # points sampled on a mesh's surface (at least npoints), as a folder dataset's N_POINTS
POINT_EXTS = CLOUD_EXTS  # every format datasets.io reads


class PointCloudFileError(InputError, ValueError):
    """A point-cloud file cannot be read or used; the message names the file."""


# ------------------------------------------------------------------------------------ config
def find_config(ckpt_path: str, ckpt: Optional[Mapping[str, Any]] = None,
                config: Union[None, str, os.PathLike, Mapping] = None) -> Tuple[EasyDict, str]:
    """(config, where it came from) for a checkpoint: ``config`` (YAML path or dict), else the
    ``config`` entry of ``ckpt`` (every checkpoint a run writes holds its config; for a
    ``.safetensors`` file, the JSON beside it), else its ``model_args`` (segmentation checkpoints of
    earlier versions), else ``config.yaml`` in the checkpoint's folder (checkpoints of earlier versions)."""
    if isinstance(config, Mapping):
        return EasyDict(config), "<config given as a dict>"
    if config is not None:
        return cfg_from_yaml_file(config), str(config)
    if ckpt is not None and isinstance(ckpt.get("config"), Mapping):
        where = (os.path.splitext(ckpt_path)[0] + ".json" if str(ckpt_path).endswith(".safetensors")
                 else f"the config saved in {ckpt_path}")
        return EasyDict(ckpt["config"]), where
    if ckpt is not None and isinstance(ckpt.get("model_args"), Mapping):  # segmentation checkpoints
        return EasyDict(model=dict(ckpt["model_args"])), f"'model_args' of {ckpt_path}"
    beside = os.path.join(os.path.dirname(os.path.abspath(ckpt_path)), "config.yaml")
    if os.path.isfile(beside):
        return cfg_from_yaml_file(beside), beside
    raise ConfigError(f"no config for checkpoint '{ckpt_path}': looked for '{beside}' (written by every run)"
                      f"{' and the .json beside the .safetensors file' if str(ckpt_path).endswith('.safetensors') else ''}; "
                      f"give the run's config with --config")


def encoder_kwargs(config: Mapping, source: str = "<config>") -> dict:
    """``PointEncoder`` arguments of a run config (or of its ``model`` section): pre-training models
    (``transformer_config`` + ``num_group`` / ``group_size``) and classifiers (flat keys)."""
    model = config.get("model", config)
    source = origin_of(model) or source
    flat = model.get("transformer_config", model)

    def need(node: Mapping, key: str, where: str):
        if key not in node:
            raise ConfigError(f"missing key '{where}.{key}' (needed to build the point encoder)", source)
        return node[key]

    where = "model.transformer_config" if "transformer_config" in model else "model"
    trans_dim = int(need(flat, "trans_dim", where))
    default_embed = "point_mae" if model.get("NAME") == "Point_MAE" else "inter_mae"
    return dict(trans_dim=trans_dim, depth=int(need(flat, "depth", where)), num_heads=int(need(flat, "num_heads", where)),
                encoder_dims=int(flat.get("encoder_dims", trans_dim)), num_group=int(need(model, "num_group", "model")),
                group_size=int(need(model, "group_size", "model")), drop_path_rate=0.0,
                patch_embed=str(model.get("patch_embed", default_embed)))


# ----------------------------------------------------------------------------------- encoder
class PointFeatureExtractor:
    """A frozen point encoder: ``extract(points (B, N, 3)) -> (B, 2C)`` (also ``__call__``).

    ``extract`` normalises each cloud into the unit sphere, reduces it to ``npoints`` by FPS when
    it has more points (N < npoints is an error), and returns ``max_mean_pool(patch_tokens)`` as
    float32 on the CPU. ``features`` skips the preparation (points already normalised and sampled)
    and returns the tensor on the encoder's device.
    """

    def __init__(self, encoder: PointEncoder, device: torch.device, npoints: int = DEFAULT_NPOINTS,
                 source: str = "<encoder>"):
        self.encoder = encoder.to(device).eval()
        self.device = device
        self.npoints = int(npoints)
        self.source = source

    @property
    def dim(self) -> int:
        return 2 * self.encoder.trans_dim

    @torch.no_grad()
    def features(self, points: Tensor) -> Tensor:
        """Prepared points (B, n, 3) -> (B, 2C), on the encoder's device."""
        return max_mean_pool(self.encoder.patch_tokens(points.to(self.device, torch.float32)))

    def prepare(self, cloud: np.ndarray, name: str = "<points>") -> Tensor:
        """One cloud (N, >=3) -> normalised, FPS-sampled (npoints, 3) float32 tensor on the device."""
        cloud = np.asarray(cloud)
        if cloud.ndim != 2 or cloud.shape[1] < 3:
            raise PointCloudFileError(f"{name}: expected points of shape (N, 3) or (N, >3), got {cloud.shape}")
        xyz = cloud[:, :3].astype(np.float32)
        if not np.isfinite(xyz).all():
            raise PointCloudFileError(f"{name}: the points hold NaN or infinite coordinates")
        if xyz.shape[0] < self.npoints:
            raise PointCloudFileError(f"{name}: {xyz.shape[0]} points, fewer than npoints = {self.npoints} "
                                      f"(use a smaller --npoints or a denser cloud)")
        pts = torch.from_numpy(np.ascontiguousarray(pc_normalize(xyz))).to(self.device).unsqueeze(0)
        if pts.shape[1] > self.npoints:
            pts = fps(pts, self.npoints)
        return pts[0]

    def extract(self, points: Union[Tensor, np.ndarray, Sequence[np.ndarray]]) -> Tensor:
        """Clouds (B, N, 3) (a tensor, an array, or a list of (N_i, 3) arrays) -> features (B, 2C), float32, CPU."""
        if isinstance(points, Tensor):
            if points.dim() != 3 or points.shape[-1] < 3:
                raise ValueError(f"extract: expected points (B, N, 3), got shape {tuple(points.shape)}")
            points = points.detach().cpu().numpy()
        clouds = list(points)
        if not clouds:
            return torch.zeros(0, self.dim)
        batch = torch.stack([self.prepare(c, f"cloud {i}") for i, c in enumerate(clouds)])
        return self.features(batch).float().cpu()

    __call__ = extract


def load_point_encoder(ckpt_path: str, config: Union[None, str, os.PathLike, Mapping] = None,
                       device: Union[None, str, torch.device] = None, npoints: int = DEFAULT_NPOINTS,
                       logger=None, trust: bool = False) -> PointFeatureExtractor:
    """The frozen encoder of a checkpoint (pre-training, classifier, segmenter, or a ``.safetensors``
    export) as a :class:`PointFeatureExtractor`. ``device``: ``cuda``, ``cuda:N``, ``cpu`` or None
    (CUDA when present). The encoder loads strictly; the sizes come from the run's config (see
    :func:`find_config`). ``trust``: load a checkpoint holding other Python objects than tensors,
    plain types and NumPy arrays (``utils.checkpoint.load_checkpoint_file``; only files you trust)."""
    ckpt = load_checkpoint_file(ckpt_path, trust=trust)
    state = state_dict_of(ckpt, ckpt_path)
    weights = encoder_state_dict(state, ckpt_path)
    cfg, cfg_source = find_config(ckpt_path, ckpt, config)
    kwargs = encoder_kwargs(cfg, cfg_source)
    kwargs["patch_embed"] = patch_embed_kind(weights) or kwargs["patch_embed"]
    from engine.model_check import build_checked  # sizes checked on the meta device before allocating
    from utils.limits import check_count

    for key, name in (("depth", "depth"), ("num_group", "points"), ("group_size", "points")):
        check_count(int(kwargs[key]), name, f"{key} of {cfg_source}")
    encoder = build_checked({}, weights, ckpt_path, build=lambda _: PointEncoder(**kwargs))
    load_weights(encoder, ckpt, remap="auto", name=ckpt_path)  # its encoder_filter_fn: the encoder of any layout
    dev = resolve_device(None if device is None else str(device))
    print_log(f"[features] {checkpoint_kind(state)} checkpoint {ckpt_path}: encoder with {len(weights)} tensors "
              f"({kwargs['patch_embed']} patch embedding, width {kwargs['trans_dim']}, depth {kwargs['depth']}, "
              f"G={kwargs['num_group']} x K={kwargs['group_size']}; config {cfg_source}); device {dev}; "
              f"{npoints} points per cloud; feature width {2 * kwargs['trans_dim']}", logger=logger)
    return PointFeatureExtractor(encoder, dev, npoints, source=ckpt_path)


# ------------------------------------------------------------------------------------- files
def read_points(path: str, mesh_points: int = MESH_POINTS, seed: int = 0) -> np.ndarray:
    """(N, 3) float32 xyz of a file of any format :mod:`datasets.io` reads (:func:`datasets.io.read_cloud`):
    every point of a point file, ``mesh_points`` seeded samples on the surface of a mesh. Any
    failure raises :class:`PointCloudFileError` naming the file."""
    if not os.path.isfile(path):
        raise PointCloudFileError(f"'{path}' does not exist")
    try:
        return read_cloud(path, mesh_points, seed)
    except BadFileError as e:
        raise PointCloudFileError(str(e)) from None


def list_point_files(inputs: Union[str, os.PathLike, Iterable[str]]) -> List[Tuple[str, str]]:
    """(path, name) of every input (:func:`datasets.io.list_cloud_files`, files of other extensions
    under a folder left out): a file as given, the point-cloud and mesh files under a folder
    (recursive, sorted; name = path relative to that folder)."""
    items = inputs if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    return [(p, os.path.relpath(p, top) if top else p) for p, top in list_cloud_files(items, unknown="skip")]


def extract_files(extractor: PointFeatureExtractor, inputs: Iterable[str], batch_size: int = 32,
                  progress: bool = True) -> Tuple[np.ndarray, List[str]]:
    """(features (n, 2C) float32, names) of the point-cloud and mesh files ``inputs`` (files or
    folders), in order. Meshes give ``max(MESH_POINTS, npoints)`` surface samples before FPS. Every
    file is read; bad ones (unreadable, fewer than ``npoints`` points, ...) stop it with one line
    grouping them by reason (:func:`datasets.io.bad_files_message`), after all were read."""
    files = list_point_files(inputs)
    mesh_points = max(MESH_POINTS, extractor.npoints)
    feats: List[Tensor] = []
    names: List[str] = []
    batch: List[Tensor] = []
    bad: List[Tuple[str, str]] = []

    def flush():
        if batch:
            feats.append(extractor.features(torch.stack(batch)).float().cpu())
            batch.clear()

    for path, name in tqdm(files, desc="features", disable=not progress, dynamic_ncols=True):
        try:
            cloud = read_cloud(path, mesh_points)
            if cloud.shape[0] < extractor.npoints:
                raise TooFewPointsError(path, cloud.shape[0], extractor.npoints, "npoints")
        except BadFileError as e:
            bad.append((name, e.reason))
            continue
        if bad:  # the run stops at the end: only the reading goes on
            continue
        batch.append(extractor.prepare(cloud, f"'{path}'"))
        names.append(name)
        if len(batch) >= batch_size:
            flush()
    if bad:
        small = any(reason_kind(reason) == "too small" for _, reason in bad)
        raise PointCloudFileError(bad_files_message(
            f"{len(bad)} bad file{'s' if len(bad) != 1 else ''} of {len(files)}", bad,
            "use a smaller --npoints or denser clouds for the too-small ones" if small else "",
            tail="fix or remove them; nothing written"))
    flush()
    out = torch.cat(feats).numpy() if feats else np.zeros((0, extractor.dim), dtype=np.float32)
    return out.astype(np.float32), names


def names_path(out: str) -> str:
    """The JSON beside a ``.npy`` feature file that lists the names in row order."""
    return os.path.splitext(out)[0] + ".json"


def write_features(out: str, features: np.ndarray, names: Sequence[str], info: Optional[Mapping] = None) -> List[str]:
    """Write ``features`` atomically: ``.npy`` (plus ``<stem>.json``: ``{"names": [...], **info}``) or
    ``.h5`` / ``.hdf5`` (datasets ``features`` and ``names``; ``info`` as attributes). Returns the paths."""
    ext = os.path.splitext(out)[1].lower()
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    info = dict(info or {})
    if ext == ".npy":
        atomic_write(out, lambda f: np.save(f, np.asarray(features, dtype=np.float32)))
        text = json.dumps({"names": list(names), **info}, indent=1) + "\n"
        atomic_write(names_path(out), lambda f: f.write(text.encode("utf-8")))
        return [out, names_path(out)]
    if ext in (".h5", ".hdf5"):
        import h5py

        tmp = os.path.join(folder, f".tmp-{os.getpid()}-{os.path.basename(out)}")
        try:
            with h5py.File(tmp, "w") as f:
                f.create_dataset("features", data=np.asarray(features, dtype=np.float32))
                f.create_dataset("names", data=list(names), dtype=h5py.string_dtype("utf-8"))
                for key, value in info.items():
                    f.attrs[key] = value
            os.replace(tmp, out)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return [out]
    raise ValueError(f"--out '{out}': expected a .npy or .h5 file name")


__all__ = ["PointCloudFileError", "PointFeatureExtractor", "load_point_encoder", "find_config", "encoder_kwargs",
           "read_points", "list_point_files", "extract_files", "write_features", "names_path", "POINT_EXTS"]
