"""Views of a shape for the image branch: rendered PNGs, on-the-fly projections, or cached features.

Dataset config keys (ShapeNetRender, ShapeNet):
    n_imgs       views per sample (0: points only)
    IMG_SOURCE   'rendered' (ShapeNetRendering PNGs), 'projected' (the sample's own points
                 rendered by datasets/render.py), or 'cached' (encoder features written by
                 tools/cache_image_features.py)
    IMG_SIZE     side of the returned images (default 224)
    IMG_ALPHA    'white' (default): RGBA renderings composited on white, bilinear resize in torch;
                 'drop': as released (``ShapeNetRenderDataset.__getitem__``: PIL ``convert('RGB')``,
                 alpha dropped so the background is whatever RGB the PNG stores under alpha 0,
                 then ``transforms.Resize`` (PIL bilinear) and ``ToTensor``). 'rendered' only.
    FEATURE_CACHE  the .npy written by tools/cache_image_features.py ('cached' only)
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .common import DatasetFormatError

N_RENDERED_VIEWS = 24
IMAGE_SOURCES = ("rendered", "projected", "cached")
VIEW_KEYS = ("n_imgs", "IMG_SOURCE", "IMG_SIZE", "IMG_ALPHA", "FEATURE_CACHE")
ALPHA_MODES = ("white", "drop")


def choose_views(n_imgs: int, n_views: int = N_RENDERED_VIEWS) -> np.ndarray:
    """``n_imgs`` distinct random view indices (NumPy RNG, seeded per loader worker)."""
    if n_imgs > n_views:
        raise ValueError(f"n_imgs={n_imgs} but only {n_views} views exist per shape")
    return np.random.choice(n_views, n_imgs, replace=False)


# What PIL raises for a damaged image: OSError (UnidentifiedImageError), ValueError, SyntaxError (a bad
# PNG chunk), EOFError (truncated), DecompressionBombError (an image declaring far more pixels).
IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
MAX_VIEW_PIXELS = 2048 * 2048  # a view is 137 x 137; more than this is refused before it is decoded


MAX_VIEW_BYTES = 64 * 2 ** 20  # a 137 x 137 view PNG is a few KB


class _open_view:
    """``Image.open`` of the bytes of a regular file (never a FIFO), refused before decoding when it
    declares more than :data:`MAX_VIEW_PIXELS` pixels. From memory: a chunk length of 2^31 in the
    file then reads what there is, where ``read(2^31)`` on the file allocated that much first."""

    def __init__(self, path: str):
        import io

        from .safe_io import open_regular

        with open_regular(path, "view image") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_VIEW_BYTES:
                raise ValueError(f"{size} bytes, more than {MAX_VIEW_BYTES}")
            self.file = io.BytesIO(f.read())
        try:
            self.img = Image.open(self.file)
            if self.img.width * self.img.height > MAX_VIEW_PIXELS:
                raise ValueError(f"it declares {self.img.width} x {self.img.height} pixels, more than "
                                 f"{MAX_VIEW_PIXELS}")
        except BaseException:
            self.file.close()
            raise

    def __enter__(self):
        return self.img

    def __exit__(self, *exc) -> None:
        self.img.close()
        self.file.close()


def load_rgba_on_white(path: str, size: int) -> torch.Tensor:
    """A view PNG -> (3, size, size) float in [0, 1], RGBA composited on white, bilinear resize."""
    try:
        with _open_view(path) as img:
            rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
    except IMAGE_ERRORS as e:
        raise DatasetFormatError(f"{path}: not a readable image ({str(e)[:200]}); expected a 137x137 RGBA PNG") from None
    rgb, alpha = rgba[..., :3], rgba[..., 3:]
    composite = torch.from_numpy(rgb * alpha + (1.0 - alpha)).permute(2, 0, 1)
    if composite.shape[-1] != size or composite.shape[-2] != size:
        composite = F.interpolate(composite[None], size=(size, size), mode="bilinear", align_corners=False)[0]
    return composite.clamp_(0.0, 1.0)


def load_rgb_alpha_dropped(path: str, size: int) -> torch.Tensor:
    """A view PNG -> (3, size, size) float in [0, 1] as the release reads it: PIL ``convert('RGB')``
    (alpha dropped, not composited), PIL bilinear resize to (size, size), ``ToTensor`` (/ 255)."""
    try:
        with _open_view(path) as img:
            rgb = img.convert("RGB")
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.BILINEAR)
            array = np.asarray(rgb, dtype=np.float32) / 255.0
    except IMAGE_ERRORS as e:
        raise DatasetFormatError(f"{path}: not a readable image ({str(e)[:200]}); expected a 137x137 RGBA PNG") from None
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def load_view(path: str, size: int, alpha: str = "white") -> torch.Tensor:
    """A view PNG -> (3, size, size) in [0, 1]: ``alpha`` 'white' (composited) or 'drop' (released)."""
    return load_rgb_alpha_dropped(path, size) if alpha == "drop" else load_rgba_on_white(path, size)


def rendered_view_paths(render_root: str, synset: str, model: str, views) -> List[str]:
    folder = os.path.join(render_root, synset, model, "rendering")
    return [os.path.join(folder, f"{int(v):02d}.png") for v in views]


def project_views(points: np.ndarray, views, size: int) -> torch.Tensor:
    """Render the sample's points from the given grid views, on white. (N,3) -> (V, 3, size, size)."""
    from .render import default_view_grid, render_views

    az, el = default_view_grid(N_RENDERED_VIEWS)
    idx = torch.as_tensor(np.asarray(views), dtype=torch.long)
    rgba = render_views(torch.from_numpy(np.ascontiguousarray(points[:, :3]))[None], None, az[idx], el[idx],
                        image_size=size, background="white")[0]  # V,4,H,W
    return rgba[:, :3].clamp(0.0, 1.0)


class FeatureCache:
    """Read-only access to a feature cache: ``<name>.npy`` (S, 24, F) float32 + ``<name>.json``."""

    def __init__(self, path: str):
        index_path = os.path.splitext(path)[0] + ".json"
        for p in (path, index_path):
            if not os.path.isfile(p):
                raise DatasetFormatError(f"feature cache file '{p}' does not exist; build it with "
                                         "python tools/cache_image_features.py")
        with open(index_path) as f:
            self.meta: Dict = json.load(f)
        self.path = path
        self.row = {name: i for i, name in enumerate(self.meta["shapes"])}
        self._array: Optional[np.ndarray] = None

    @property
    def array(self) -> np.ndarray:
        if self._array is None:  # opened lazily, once per loader worker
            self._array = np.load(self.path, mmap_mode="r")
        return self._array

    def features(self, synset: str, model: str, views) -> torch.Tensor:
        key = f"{synset}/{model}"
        if key not in self.row:
            raise DatasetFormatError(f"feature cache {self.path} has no entry for shape {key}; rebuild it")
        return torch.from_numpy(np.array(self.array[self.row[key], np.asarray(views)], dtype=np.float32))


def check_view_config(config, dataset: str, allowed_sources=IMAGE_SOURCES) -> None:
    source = config.get("IMG_SOURCE", "rendered")
    if source not in allowed_sources:
        raise DatasetFormatError(f"{dataset}: IMG_SOURCE must be one of {list(allowed_sources)}, got '{source}'")
    alpha = config.get("IMG_ALPHA", "white")
    if alpha not in ALPHA_MODES:
        raise DatasetFormatError(f"{dataset}: IMG_ALPHA must be one of {list(ALPHA_MODES)} ('white': composite RGBA "
                                 f"on white; 'drop': the released convert('RGB')), got '{alpha}'")
    if source == "cached" and not config.get("FEATURE_CACHE"):
        raise DatasetFormatError(f"{dataset}: IMG_SOURCE 'cached' needs FEATURE_CACHE (the .npy of "
                                 "tools/cache_image_features.py)")
