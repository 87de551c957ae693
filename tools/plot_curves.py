"""Training curves from an experiment's TensorBoard event files, or from its per-epoch
``metrics.jsonl``, as one PNG (no TensorBoard needed).

    python tools/plot_curves.py experiments/<config stem>/TFBoard/<exp_name> --out curves.png
    python tools/plot_curves.py experiments/<config stem>/<exp_name>/metrics.jsonl --out curves.png

Every ``*tfevents*`` file under the folder is read (``train/`` and ``test/`` writers; tags are
prefixed by the sub-folder). Panels: losses, learning rate, accuracy / metrics, with per-iteration
(``.../Batch/...``) and per-epoch series on separate panels. Per-iteration series other than the
learning rate are drawn raw (faint) and smoothed (TensorBoard's debiased exponential moving
average, ``--smooth``). When a run was resumed, the value written last for a step wins.

The event files are TFRecord files: records of ``uint64 length, uint32 masked CRC-32C of the
length, data, uint32 masked CRC-32C of the data``, each ``data`` a serialised ``Event`` proto
(parsed with tensorboardX's ``event_pb2``).
"""
from __future__ import annotations

import json
import math
import os
import re
import struct
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: the checkout's packages first

import numpy as np
from tensorboardX.crc32c import crc32c
from tensorboardX.proto import event_pb2

from utils.cli import run_main
from utils.vis import new_figure, save_figure
from utils.logger import print_log
from utils.parser import new_parser

Series = Tuple[np.ndarray, np.ndarray]  # (steps, values)


class EventFileError(ValueError):
    """An event file is corrupt (bad length checksum, bad data checksum, unparsable record)."""


def masked_crc32c(data: bytes) -> int:
    """TFRecord checksum: CRC-32C rotated right by 15 bits plus 0xa282ead8 (mod 2**32)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_records(path: str, check_data_crc: bool = False) -> Iterator[bytes]:
    """The records of a TFRecord file. The length checksum is always verified, the data checksum
    with ``check_data_crc`` (pure-Python CRC, slow on big files). A truncated last record (a
    writer still running or killed) ends the iteration with a warning."""
    with open(path, "rb") as f:
        offset = 0
        while True:
            header = f.read(12)
            if not header:
                return
            if len(header) < 12:
                print_log(f"{path}: truncated record header at byte {offset}; stopping there", logger="plot_curves")
                return
            (length,) = struct.unpack("<Q", header[:8])
            (length_crc,) = struct.unpack("<I", header[8:])
            if masked_crc32c(header[:8]) != length_crc:
                raise EventFileError(f"{path}: bad length checksum of the record at byte {offset}; "
                                     f"not a TFRecord/tfevents file or corrupt")
            data = f.read(length)
            footer = f.read(4)
            if len(data) < length or len(footer) < 4:
                print_log(f"{path}: truncated record at byte {offset}; stopping there", logger="plot_curves")
                return
            if check_data_crc and masked_crc32c(data) != struct.unpack("<I", footer)[0]:
                raise EventFileError(f"{path}: bad data checksum of the record at byte {offset}")
            offset += 12 + length + 4
            yield data


def read_scalars(path: str, check_data_crc: bool = False) -> Dict[str, List[Tuple[float, int, float]]]:
    """Scalar summaries of one event file: tag -> [(wall_time, step, value)] in file order."""
    out: Dict[str, List[Tuple[float, int, float]]] = {}
    for i, record in enumerate(read_records(path, check_data_crc)):
        event = event_pb2.Event()
        try:
            event.ParseFromString(record)
        except Exception as e:  # protobuf DecodeError
            raise EventFileError(f"{path}: record {i} is not an Event proto ({e})") from None
        if not event.HasField("summary"):
            continue
        for value in event.summary.value:
            kind = value.WhichOneof("value")
            if kind == "simple_value":
                v = float(value.simple_value)
            elif kind == "tensor" and len(value.tensor.float_val) == 1:
                v = float(value.tensor.float_val[0])
            elif kind == "tensor" and len(value.tensor.double_val) == 1:
                v = float(value.tensor.double_val[0])
            else:
                continue
            out.setdefault(value.tag, []).append((event.wall_time, int(event.step), v))
    return out


def find_event_files(logdir: str) -> List[str]:
    files = []
    for folder, _, names in os.walk(logdir):
        files += [os.path.join(folder, n) for n in names if "tfevents" in n]
    return sorted(files)


def resolve_logdir(path: str) -> str:
    """An experiment folder ``experiments/<cfg>/<exp>`` is mapped to ``experiments/<cfg>/TFBoard/<exp>``."""
    if os.path.isdir(path) and find_event_files(path):
        return path
    norm = os.path.normpath(path)
    alt = os.path.join(os.path.dirname(norm), "TFBoard", os.path.basename(norm))
    if os.path.isdir(alt) and find_event_files(alt):
        return alt
    if not os.path.isdir(path):
        raise FileNotFoundError(f"'{path}' is not a folder; expected experiments/<config stem>/TFBoard/<exp_name>")
    raise FileNotFoundError(f"no TensorBoard event files (*tfevents*) under '{path}' (nor under '{alt}')")


def load_run(logdir: str, check_data_crc: bool = False) -> Dict[str, Series]:
    """All scalars under ``logdir``: '<sub-folder>/<tag>' -> (steps, values) sorted by step; for a
    step written more than once (resumed runs) the latest write wins."""
    merged: Dict[str, List[Tuple[float, int, float]]] = {}
    for path in find_event_files(logdir):
        rel = os.path.relpath(os.path.dirname(path), logdir)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        for tag, points in read_scalars(path, check_data_crc).items():
            merged.setdefault(prefix + tag, []).extend(points)
    out: Dict[str, Series] = {}
    for tag, points in merged.items():
        latest: Dict[int, Tuple[float, float]] = {}
        for order, (wall, step, value) in enumerate(points):
            key = (wall, order)
            if step not in latest or key >= latest[step][0]:
                latest[step] = (key, value)
        steps = np.array(sorted(latest), dtype=np.int64)
        out[tag] = (steps, np.array([latest[s][1] for s in steps], dtype=np.float64))
    return out


def load_metrics_file(path: str) -> Dict[str, Series]:
    """The per-epoch series of a run's ``metrics.jsonl``: 'metrics/<key>' -> (epochs, values) for
    every number but the wall time (null values are left out)."""
    points: Dict[str, List[Tuple[int, float]]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                record = json.loads(line)
                epoch = int(record["epoch"])
            except (ValueError, KeyError, TypeError):
                raise EventFileError(f"{path}: line {n} is not a JSON object with an 'epoch'") from None
            for key, value in record.items():
                if key not in ("epoch", "wall_time") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    points.setdefault(f"metrics/{key}", []).append((epoch, float(value)))
    return {tag: (np.array([e for e, _ in pts], dtype=np.int64), np.array([v for _, v in pts], dtype=np.float64))
            for tag, pts in points.items()}


def panel_of(tag: str) -> Tuple[str, str]:
    """(quantity, x unit) of a tag, decided by its last path component: 'Learning rate',
    'Accuracy / metrics', 'Losses' or 'Other' (e.g. ``Loss/Epoch/samples_per_s``); unit
    'iteration' for ``.../Batch/...`` series, else 'epoch'."""
    unit = "iteration" if "/batch/" in f"/{tag.lower()}/" else "epoch"
    parts = tag.lower().split("/")
    words = [w for w in re.split(r"[_\-. ]+", parts[-1]) if w]
    if parts[-1] in ("lr", "learning_rate", "learningrate") or (words and words[-1] == "lr"):
        return "Learning rate", unit
    if any("acc" in w or "iou" in w or w == "svm" for w in words):
        return "Accuracy / metrics", unit
    if any("loss" in w for w in words):
        return "Losses", unit
    if any(p.startswith("metric") for p in parts[:-1]):
        return "Accuracy / metrics", unit
    return "Other", unit


def ema(values: np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard's debiased exponential moving average."""
    if weight <= 0 or len(values) == 0:
        return values
    out = np.empty_like(values)
    last, num = 0.0, 0
    for i, v in enumerate(values):
        num += 1
        last = last * weight + (1 - weight) * v
        out[i] = last / (1 - weight ** num)
    return out


PANEL_ORDER = ("Losses", "Learning rate", "Accuracy / metrics", "Other")


def plot_run(scalars: Dict[str, Series], out: str, title: str = "", smooth: float = 0.6) -> str:
    """One panel per (quantity, x unit) present; returns ``out``."""
    if not scalars:
        raise ValueError("no scalar summaries to plot")
    panels: Dict[Tuple[str, str], List[str]] = {}
    for tag in sorted(scalars):
        panels.setdefault(panel_of(tag), []).append(tag)
    keys = sorted(panels, key=lambda k: (PANEL_ORDER.index(k[0]), k[1] != "iteration"))
    ncols = 2 if len(keys) > 1 else 1
    nrows = math.ceil(len(keys) / ncols)
    fig = new_figure(6.5 * ncols, 4.0 * nrows)
    for i, key in enumerate(keys):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        quantity, unit = key
        positive = True
        for j, tag in enumerate(panels[key]):
            steps, values = scalars[tag]
            colour = f"C{j % 10}"
            if unit == "iteration" and quantity != "Learning rate" and smooth > 0 and len(values) > 20:
                ax.plot(steps, values, color=colour, alpha=0.25, linewidth=0.8)
                ax.plot(steps, ema(values, smooth), color=colour, linewidth=1.5, label=tag)
            else:
                ax.plot(steps, values, color=colour, linewidth=1.5, marker="o" if len(values) <= 30 else None,
                        markersize=3, label=tag)
            positive = positive and bool(np.all(values > 0))
        if quantity in ("Losses", "Learning rate") and positive:
            lo = min(scalars[t][1].min() for t in panels[key])
            hi = max(scalars[t][1].max() for t in panels[key])
            if hi / lo > 20:
                ax.set_yscale("log")
        ax.set_title(f"{quantity} (per {unit})", fontsize=10)
        ax.set_xlabel(unit)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, out, dpi=110)


def summarise(scalars: Dict[str, Series]) -> List[str]:
    lines = []
    for tag in sorted(scalars):
        steps, values = scalars[tag]
        lines.append(f"{tag}: {len(values)} points, last {values[-1]:.6g} at step {steps[-1]}, "
                     f"min {values.min():.6g}, max {values.max():.6g}")
    return lines


def build_parser():
    p = new_parser("Plot an experiment's TensorBoard scalars to a PNG")
    p.add_argument("logdir", help="experiments/<config stem>/TFBoard/<exp_name> (or experiments/<config stem>/<exp_name>), "
                                  "or a run's metrics.jsonl")
    p.add_argument("--out", default=None, help="output PNG (default: <logdir>/curves.png)")
    p.add_argument("--smooth", type=float, default=0.6, help="EMA weight for per-iteration series (0: off)")
    p.add_argument("--check_crc", action="store_true", help="also verify every record's data checksum (slow)")
    return p


def main(argv=None) -> str:
    p = build_parser()
    args = p.parse_args(argv)
    if not 0 <= args.smooth < 1:
        p.error(f"--smooth must be in [0, 1), got {args.smooth}")
    try:
        if os.path.isfile(args.logdir):
            logdir = os.path.dirname(os.path.abspath(args.logdir))
            scalars = load_metrics_file(args.logdir)
        else:
            logdir = resolve_logdir(args.logdir)
            scalars = load_run(logdir, args.check_crc)
        if not scalars:
            raise EventFileError(f"'{args.logdir}' holds no scalars")
        for line in summarise(scalars):
            print_log(line, logger="plot_curves")
        out = plot_run(scalars, args.out or os.path.join(logdir, "curves.png"), title=os.path.normpath(logdir),
                       smooth=args.smooth)
    except (FileNotFoundError, EventFileError) as e:
        raise SystemExit(f"plot_curves.py: {e}") from None
    print_log(f"Training curves: {out}", logger="plot_curves")
    return out


if __name__ == "__main__":
    run_main(main)
