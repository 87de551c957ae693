"""Plotting helpers shared by main_vis.py, tools/tsne.py and tools/plot_curves.py.

Figures are built as ``matplotlib.figure.Figure`` objects on an Agg canvas (no pyplot state, so
nothing stays open and no display is needed).
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text

# Fixed camera (elevation, azimuth) per ShapeNet synset, the table of the released Point-MAE
# visualisation; other categories use DEFAULT_VIEW.
CATEGORY_VIEWS: Dict[str, Tuple[float, float]] = {
    "02691156": (90, 135),   # airplane
    "04379243": (30, 30),    # table
    "03642806": (30, -45),   # laptop
    "03467517": (0, 90),     # guitar
    "03261776": (0, 75),     # earphone
    "03001627": (30, -45),   # chair
}
DEFAULT_VIEW: Tuple[float, float] = (30, 45)


def view_for_category(taxonomy_id: str) -> Tuple[float, float]:
    """ShapeNet synset id -> (elevation, azimuth) in degrees."""
    return CATEGORY_VIEWS.get(str(taxonomy_id), DEFAULT_VIEW)


def new_figure(width: float, height: float, dpi: int = 100) -> Figure:
    """A Figure attached to an Agg canvas, independent of pyplot."""
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def plain_text(texts):
    """Draw matplotlib Text objects (one or an iterable; e.g. what ``set_xticklabels`` returns) as
    plain text: a ``$`` in a name from a file is a dollar sign, not mathtext, and never TeX.
    Returns ``texts``."""
    for text in [texts] if isinstance(texts, Text) else list(texts):
        text.set_usetex(False)
        text.set_parse_math(False)
    return texts


def save_figure(fig: Figure, path: str, dpi: Optional[int] = None) -> str:
    """Write ``fig`` as an image (format from the suffix), creating the folder; returns ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", facecolor="white")
    fig.clear()
    return path


def cloud_limits(clouds: Sequence[np.ndarray]) -> Tuple[np.ndarray, float]:
    """(centre (3,), half-width) of a cube that holds all ``clouds`` (each (N, 3))."""
    pts = np.concatenate([np.asarray(c, dtype=np.float64).reshape(-1, 3) for c in clouds if len(c)], axis=0)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    return (lo + hi) / 2, max(float((hi - lo).max()) / 2, 1e-6)


def plot_cloud(ax, xyz: np.ndarray, view: Tuple[float, float], limits: Tuple[np.ndarray, float],
               title: str = "", point_size: Optional[float] = None, cmap: str = "jet",
               colors: Optional[np.ndarray] = None) -> None:
    """Scatter an (N, 3) cloud on a 3-D axis. The data's y axis is up (ShapeNet convention) and
    sets the colour (height) unless ``colors`` (N, 3 or 4) is given; the axis box is a cube fixed by
    ``limits`` so panels compare."""
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    if point_size is None:
        point_size = float(np.clip(2048 / max(len(xyz), 1), 1.0, 6.0))
    centre, half = limits
    height_lo, height_hi = centre[1] - half, centre[1] + half
    if colors is not None:
        ax.scatter(xyz[:, 0], xyz[:, 2], xyz[:, 1], c=np.asarray(colors), s=point_size, linewidths=0, depthshade=False)
    else:
        ax.scatter(xyz[:, 0], xyz[:, 2], xyz[:, 1], c=xyz[:, 1], cmap=matplotlib.colormaps[cmap],
                   vmin=height_lo, vmax=height_hi, s=point_size, linewidths=0, depthshade=False)
    ax.set_xlim(centre[0] - half, centre[0] + half)
    ax.set_ylim(centre[2] - half, centre[2] + half)
    ax.set_zlim(height_lo, height_hi)
    ax.set_box_aspect((1, 1, 1), zoom=1.3)
    ax.view_init(elev=view[0], azim=view[1])
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=10)


def plot_cloud_rows(path: str, rows: List[Sequence[np.ndarray]], titles: Sequence[str], views: Sequence[Tuple[float, float]],
                    row_labels: Optional[Sequence[str]] = None, panel_size: float = 3.0, dpi: int = 100,
                    colors: Optional[List[Sequence[Optional[np.ndarray]]]] = None) -> str:
    """One row per sample, one panel per cloud of the row (e.g. input | visible | reconstruction),
    all panels of a row in the row's view and on the scale of the row's first cloud; ``colors``
    (same nesting as ``rows``, (N, 3|4) arrays or None) replaces the height colouring. Writes
    ``path``; returns it."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig = new_figure(panel_size * n_cols, panel_size * n_rows, dpi=dpi)
    for i, clouds in enumerate(rows):
        limits = cloud_limits(clouds[:1])
        for j, cloud in enumerate(clouds):
            ax = fig.add_subplot(n_rows, n_cols, i * n_cols + j + 1, projection="3d")
            title = titles[j] if i == 0 else ""
            plot_cloud(ax, cloud, views[i], limits, title=title, colors=None if colors is None else colors[i][j])
            if j == 0 and row_labels is not None:
                ax.text2D(0.0, 0.5, row_labels[i], transform=ax.transAxes, rotation=90, va="center", ha="right", fontsize=8)
    fig.subplots_adjust(left=0.03, right=0.99, bottom=0.01, top=0.95, wspace=0.0, hspace=0.02)
    return save_figure(fig, path)


def class_colours(n: int) -> np.ndarray:
    """``n`` distinguishable RGBA colours (tab10 / tab20 / tab20+tab20b+tab20c, then hsv)."""
    if n <= 10:
        return matplotlib.colormaps["tab10"](np.arange(n))
    if n <= 20:
        return matplotlib.colormaps["tab20"](np.arange(n))
    table = np.concatenate([matplotlib.colormaps[name](np.arange(20)) for name in ("tab20", "tab20b", "tab20c")])
    if n <= len(table):
        return table[:n]
    return matplotlib.colormaps["hsv"](np.linspace(0, 1, n, endpoint=False))
