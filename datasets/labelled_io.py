"""Point files with a part label per point (the files of a :class:`~datasets.PartSegFolder.PartSegFolder`).

:func:`read_labelled_file` reads one file into ``(points (N, 3) float64, labels (N,) int64)``:

* ``.ply`` (ascii / binary, a point cloud or the labelled vertices of a mesh): the vertex ``x, y,
  z`` and an integer vertex property, ``label_key`` when given, else the first of
  :data:`LABEL_PROPERTIES` present (case-insensitive; CloudCompare writes its scalar fields as
  ``scalar_<Name>``). None found: the error lists the properties the file has.
* ``.xyz`` / ``.txt`` / ``.pts`` / ``.csv``: rows ``x y z [...] label`` (whitespace, comma or
  semicolon separated; ``#`` comments and one header line tolerated), the label in column
  ``label_column`` (0-based; default -1, the last).
* ``.npy``: an (N, 4+) array, the label in column ``label_column``.
* ``.npz``: arrays ``points`` (N, 3+) and ``labels`` (N,) (or ``label_key``), else one (N, 4+)
  array as ``.npy``.

The readers of the classification folder do the work (:mod:`datasets.io`: the PLY parser, the
regular-file check, the ``.npy`` / ``.npz`` header checks against :mod:`utils.limits` before an
array is read; never a pickle). Every failure is a :class:`~datasets.io.BadFileError` naming the
file with a short reason, so that a folder's bad files are reported together, grouped by reason.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np

from .io import (BadFileError, _check_limits, _first_bad_row, _open_regular, _strip_path, check_file, read_npy_checked,
                 read_ply_vertex)
from .safe_io import npz_member_header

__all__ = ["read_labelled_file", "write_labelled_ply", "part_counts", "LABELLED_EXTS", "LABEL_PROPERTIES", "LABEL_ARRAYS", "label_source"]

LABELLED_EXTS = (".ply", ".xyz", ".txt", ".pts", ".csv", ".npy", ".npz")
TEXT_EXTS = (".xyz", ".txt", ".pts", ".csv")
# The PLY vertex property read as the label when ``label_key`` is not set: the first present.
LABEL_PROPERTIES = ("label", "labels", "part", "part_id", "class", "segment", "seg", "scalar_label",
                    "scalar_labels", "scalar_part", "scalar_class", "scalar_classification", "classification")
LABEL_ARRAYS = ("labels", "label", "seg", "parts", "part")  # .npz member holding the labels
LABEL_LIMIT = 1 << 30  # a label id beyond this is not a part id (and would not fit the bincounts)


def label_source(label_key: Optional[str], label_column: int) -> str:
    """The label settings in words, for messages and cache keys."""
    return f"label_key={label_key or 'auto'}, label_column={label_column}"


def _integer_labels(path: str, values: np.ndarray, where: str) -> np.ndarray:
    """(N,) int64 labels of ``values`` (any numeric dtype holding whole numbers), else a BadFileError
    naming the first row that is not a whole number in [-2^30, 2^30]."""
    values = np.asarray(values).reshape(-1)
    if values.dtype.kind == "b":
        values = values.astype(np.int64)
    if values.dtype.kind not in "iuf":
        raise BadFileError(path, f"labels ({where}) are {values.dtype}, expected integers")
    if values.dtype.kind == "f":
        ok = np.isfinite(values) & (np.abs(values) <= LABEL_LIMIT)
        ok[ok] = values[ok] == np.round(values[ok])
        if not ok.all():
            i = int(np.argmin(ok))
            raise BadFileError(path, f"label not an integer at row {i} ({float(values[i])!r}, {where})")
    elif values.size and (values.max() > LABEL_LIMIT or (values.dtype.kind == "i" and values.min() < -LABEL_LIMIT)):
        i = int(np.argmax(np.abs(values.astype(np.float64))))
        raise BadFileError(path, f"label out of range at row {i} ({int(values[i])}, {where})")
    return values.astype(np.int64)


def _column(path: str, table: np.ndarray, column: int, what: str) -> np.ndarray:
    """Column ``column`` of an (N, C) table as the labels; it must not be one of x, y, z."""
    n_cols = table.shape[1]
    index = column if column >= 0 else n_cols + column
    if not 3 <= index < n_cols:
        raise BadFileError(path, f"label column {column} is not a column after x y z ({what} has {n_cols} columns; "
                                 f"label_column counts from 0, -1 is the last)")
    return _integer_labels(path, table[:, index], f"column {index}")


def _read_ply(path: str, label_key: Optional[str]) -> Tuple[np.ndarray, np.ndarray]:
    try:
        props = read_ply_vertex(path)
    except ValueError as e:
        raise BadFileError(path, _strip_path(str(e), path)) from None
    missing = [k for k in ("x", "y", "z") if k not in props]
    if missing:
        raise BadFileError(path, f"PLY vertex element lacks properties {missing}; expected x, y, z")
    lower = {name.lower(): name for name in props}
    if label_key is not None:
        key = label_key if label_key in props else lower.get(label_key.lower())
        if key is None:
            raise BadFileError(path, f"no vertex property '{label_key}' (label_key); it has {', '.join(props)}")
    else:
        key = next((lower[c] for c in LABEL_PROPERTIES if c in lower), None)
        if key is None:
            raise BadFileError(path, f"no label property (set dataset.label_key; looked for "
                                     f"{', '.join(LABEL_PROPERTIES[:4])}, ...): the vertex has {', '.join(props)}")
    xyz = np.stack([props["x"], props["y"], props["z"]], axis=1).astype(np.float64)
    return xyz, _integer_labels(path, props[key], f"property '{key}'")


def _text_rows(path: str) -> List[Tuple[int, List[str]]]:
    """(line number, values) of the data rows of a text file (blank lines, ``#`` comments and one
    header line of words skipped)."""
    with _open_regular(path) as f:
        text = f.read().decode("utf-8", errors="replace")
    rows = [(n, ln.replace(",", " ").replace(";", " ").split()) for n, ln in enumerate(text.splitlines(), 1)
            if ln.strip() and not ln.lstrip().startswith("#")]
    if rows:
        try:
            [float(v) for v in rows[0][1]]
        except ValueError:
            rows = rows[1:]  # a header line such as 'x y z label'
    return rows


def _read_text(path: str, label_column: int) -> Tuple[np.ndarray, np.ndarray]:
    rows = _text_rows(path)
    if not rows:
        raise BadFileError(path, "no point rows (empty, or only a header / comments)")
    width = len(rows[0][1])
    if width < 4:
        raise BadFileError(path, f"row {rows[0][0]} has {width} value(s), expected x y z and a label")
    for n, values in rows:
        if len(values) != width:
            raise BadFileError(path, f"row {n} has {len(values)} values where the first row has {width} (points and "
                                     f"labels disagree)")
    try:
        table = np.array([values for _, values in rows], dtype=np.float64)
    except ValueError:
        for n, values in rows:
            try:
                [float(v) for v in values]
            except ValueError:
                raise BadFileError(path, f"row {n} is not numbers ({' '.join(values)[:40]!r})") from None
        raise
    return table[:, :3], _column(path, table, label_column, "the file")


def _table(path: str, arr: np.ndarray, what: str) -> np.ndarray:
    if arr.dtype.kind not in "biuf" or arr.ndim != 2 or arr.shape[1] < 4:
        raise BadFileError(path, f"{what} is {arr.dtype} {arr.shape}, expected a numeric (N, 4+) array (x y z ... "
                                 f"label) or .npz arrays 'points' and 'labels'")
    return arr


def _read_npy(path: str, label_column: int) -> Tuple[np.ndarray, np.ndarray]:
    arr = _table(path, read_npy_checked(path), "the array")
    return arr[:, :3].astype(np.float64), _column(path, arr, label_column, "the array")


def _read_npz(path: str, label_key: Optional[str], label_column: int) -> Tuple[np.ndarray, np.ndarray]:
    import zipfile

    from utils.limits import LimitError

    def member(zf, name: str) -> np.ndarray:
        try:
            shape, dtype, nbytes, stored = npz_member_header(zf, name + ".npy")
        except LimitError as e:
            raise BadFileError(path, str(e)) from None
        except ValueError as e:
            raise BadFileError(path, f"array '{name}': {e}") from None
        _check_limits(path, f"array '{name}' {shape} {dtype}", nbytes, stored)
        with zf.open(name + ".npy") as m:
            return np.lib.format.read_array(m, allow_pickle=False)

    with _open_regular(path) as f, zipfile.ZipFile(f) as zf:
        names = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
        if not names:
            raise BadFileError(path, "empty .npz (no arrays)")
        wanted = (label_key,) if label_key else LABEL_ARRAYS
        label_name = next((n for n in wanted if n in names), None)
        if label_key and label_name is None:
            raise BadFileError(path, f"no array '{label_key}' (label_key); it has {', '.join(names)}")
        if label_name is not None:
            if "points" not in names:
                raise BadFileError(path, f"array '{label_name}' but no array 'points' (it has {', '.join(names)})")
            points, labels = member(zf, "points"), member(zf, label_name)
            if points.dtype.kind not in "biuf" or points.ndim != 2 or points.shape[1] < 3:
                raise BadFileError(path, f"array 'points' is {points.dtype} {points.shape}, expected (N, 3+)")
            if labels.ndim not in (1, 2) or (labels.ndim == 2 and labels.shape[1] != 1):
                raise BadFileError(path, f"array '{label_name}' is {labels.shape}, expected (N,) labels")
            if labels.shape[0] != points.shape[0]:
                raise BadFileError(path, f"points and labels disagree: {points.shape[0]} points, {labels.shape[0]} "
                                         f"labels in '{label_name}'")
            return points[:, :3].astype(np.float64), _integer_labels(path, labels, f"array '{label_name}'")
        tables = [n for n in (["points"] if "points" in names else names)]
        for name in tables:
            arr = member(zf, name)
            if arr.ndim == 2 and arr.shape[1] >= 4 and arr.dtype.kind in "biuf":
                return arr[:, :3].astype(np.float64), _column(path, arr, label_column, f"array '{name}'")
    raise BadFileError(path, f"no labels: expected arrays 'points' and 'labels', or one (N, 4+) array with the label "
                             f"in a column (it has {', '.join(names)})")


def read_labelled_file(path: str, label_key: Optional[str] = None,
                       label_column: int = -1) -> Tuple[np.ndarray, np.ndarray]:
    """(points (N, 3) float64, labels (N,) int64) of a labelled point file (module docstring).

    Raises :class:`BadFileError` naming the file: unknown extension, not a regular file, empty,
    unreadable, no label property / column / array, points and labels of different lengths, a
    label that is not an integer, a non-finite coordinate."""
    ext = check_file(path, LABELLED_EXTS)
    try:
        if ext == ".ply":
            points, labels = _read_ply(path, label_key)
        elif ext in TEXT_EXTS:
            points, labels = _read_text(path, int(label_column))
        elif ext == ".npy":
            points, labels = _read_npy(path, int(label_column))
        else:
            points, labels = _read_npz(path, label_key, int(label_column))
    except BadFileError:
        raise
    except OSError as e:
        raise BadFileError(path, f"unreadable ({e.strerror or e})") from None
    except Exception as e:  # a truncated .npy, a damaged zip, ...
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
        raise BadFileError(path, f"unreadable ({type(e).__name__}: {first[:120]})") from None
    if points.shape[0] == 0:
        raise BadFileError(path, "empty (no points)")
    bad = _first_bad_row(points)
    if bad is not None:
        raise BadFileError(path, f"non-finite value at row {bad} ({points[bad].tolist()})")
    return points, labels


def part_counts(labels: np.ndarray) -> Dict[int, int]:
    """{label: points} of one file's labels."""
    values, counts = np.unique(labels, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


def write_labelled_ply(path: str, points: np.ndarray, labels: np.ndarray, colors: Optional[np.ndarray] = None,
                       label_name: str = "label", label_type: str = "int", binary: bool = True) -> None:
    """Write points with a per-vertex label (and optional uchar ``red green blue``) as PLY vertices,
    atomically. ``points`` (N, 3), ``labels`` (N,) ints, ``colors`` (N, 3) in 0..255;
    ``label_type`` a PLY scalar type (``int``, ``uchar``, ``float``, ...)."""
    from utils.checkpoint import atomic_write

    from .io import PLY_TYPES

    points = np.asarray(points, dtype=np.float32)
    n = points.shape[0]
    if points.ndim != 2 or points.shape[1] != 3 or np.shape(labels) != (n,):
        raise ValueError(f"write_labelled_ply('{path}'): expected points (N, 3) and labels (N,), got "
                         f"{points.shape} and {np.shape(labels)}")
    fields = [("x", "f4"), ("y", "f4"), ("z", "f4")]
    if colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    fields.append((label_name, PLY_TYPES[label_type]))
    table = np.empty(n, dtype=[(name, "<" + code) for name, code in fields])
    for i, axis in enumerate("xyz"):
        table[axis] = points[:, i]
    if colors is not None:
        colors = np.asarray(colors)
        for i, channel in enumerate(("red", "green", "blue")):
            table[channel] = colors[:, i]
    table[label_name] = np.asarray(labels)
    types = {"f4": "float", "u1": "uchar"}
    header = ["ply", f"format {'binary_little_endian' if binary else 'ascii'} 1.0", f"element vertex {n}"]
    header += [f"property {types.get(code, label_type)} {name}" for name, code in fields] + ["end_header"]

    def write(f):
        f.write(("\n".join(header) + "\n").encode("ascii"))
        if binary:
            f.write(table.tobytes())
        else:
            formats = ["%.6f"] * 3 + (["%d"] * 3 if colors is not None else []) + \
                      (["%.6g"] if label_type in ("float", "float32", "double", "float64") else ["%d"])
            np.savetxt(f, np.stack([table[name].astype(np.float64) for name, _ in fields], 1), fmt=formats)

    atomic_write(path, write)
