"""Your own labelled point clouds: a folder of files with a part label per point (``NAME: PartSegFolder``).

Layout (names starting with ``.`` skipped)::

    <DATA_PATH>/[train/ | test/]/[<category>/]/.../<file>     files at any depth
    <DATA_PATH>/labels.txt  or  <DATA_PATH>/parts.json          optional part names

* Files: see :mod:`datasets.labelled_io` (``.ply`` with a label vertex property, text with a
  label column, ``.npy`` (N, 4+), ``.npz`` ``points`` + ``labels``); ``label_key`` /
  ``label_column`` pick the label.
* Subsets: ``train/`` and ``test/`` when both exist, else a seeded split (``split_ratio`` of each
  category to test), written to ``split_file`` (``<run dir>/split.json``, :meth:`PartSegFolder.bind_run_dir`)
  and read from it when it exists, as :class:`~datasets.PointCloudFolder.PointCloudFolder`.
* Categories (``categories``: ``auto`` / ``true`` / ``false``): the first-level subfolders (below
  ``train/`` / ``test/``), as ShapeNetPart's object categories: the segmentation head takes the
  category as input and predicts only the parts found in that category's files. ``auto``: used
  when every file lies in such a subfolder and there are at least two; otherwise every file is
  one category, ``all``.
* Parts: ``labels.txt`` (one name per line, line i naming part i; or lines ``<id> <name>``) or
  ``parts.json`` (a list of names, or ``{"<id>": name}``) declare K parts; every label must then be
  in 0..K-1. Without them the labels found must be 0..K-1 themselves, and are named by their ids.

Every file is read once when the run starts (``main.py``: :meth:`PartSegFolder.prepare_entry`,
before the run folder exists; the points go into a cache as PointCloudFolder's, keyed on path,
size, mtime and the label settings): a file that cannot be read, has no labels, points and labels
of different lengths, a label that is not an integer, outside the declared parts or beyond the
0..K-1 of the folder, or fewer than ``min_points`` points, stops the run with one line grouping
the bad files by reason (:func:`datasets.PointCloudFolder.bad_files_error`).

Items: ``(points (npoints, 3) float32, category (1,) int64, labels (npoints,) int64)``, the batch of
the ShapeNetPart loader: a file's points (at most ``N_POINTS``, a seeded subset of larger files)
normalised into the unit sphere, then ``npoints`` of them drawn (with replacement when the file
has fewer), at random for ``subset: train``, seeded per file otherwise.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
from easydict import EasyDict
from torch.utils.data import Dataset

from utils.logger import library_logger, print_log
from utils.text import printable

from .build import DATASETS
from .common import DatasetFormatError, dataset_schema, pc_normalize
from .io import BadFileError, file_seed, walk_files
from .labelled_io import LABELLED_EXTS, label_source, part_counts, read_labelled_file
from .PointCloudFolder import (CACHE_FOLDER, DEFAULT_SPLIT_RATIO, SPLIT_DIRS, bad_files_error, check_folder_entry,
                               folder_stamp, has_split_dirs, resolve_cache_dir, stat_failure, subset_items,
                               user_cache_dir, write_atomic)

NAME = "PartSegFolder"
PART_FILES = ("labels.txt", "parts.json")
NO_CATEGORY = "all"
DEFAULT_N_POINTS = 8192
DEFAULT_MIN_POINTS = 32
CACHE_VERSION = 1
LAYOUT = ("  <DATA_PATH>/[train/ and test/]/[<category>/]/.../<file> with a part label per point\n"
          "  optional <DATA_PATH>/labels.txt (a part name per line) or parts.json\n"
          "  files: " + " ".join(LABELLED_EXTS) + " (.ply: a label vertex property; text: a label column; "
          ".npy: (N, 4+); .npz: points + labels)")
LOGGER = library_logger(NAME)
PARSE_COUNT = {"files": 0}  # actual file reads (cache misses) of this process


# --------------------------------------------------------------------------------- part names
def read_part_names(root: str) -> Optional[List[str]]:
    """The part names declared in ``<root>/labels.txt`` or ``<root>/parts.json`` (index = part id),
    None when neither exists; DatasetFormatError naming the file when it cannot be read."""
    from .safe_io import open_regular

    found = [name for name in PART_FILES if os.path.exists(os.path.join(root, name))]
    if not found:
        return None
    if len(found) > 1:
        raise DatasetFormatError(f"{NAME}: {root} has both labels.txt and parts.json; keep one")
    path = os.path.join(root, found[0])
    try:
        with open_regular(path, "part names file") as f:
            text = f.read(1 << 20).decode("utf-8")
    except (OSError, UnicodeDecodeError, DatasetFormatError) as e:
        raise DatasetFormatError(f"{NAME}: part names file {path} cannot be read ({printable(str(e))[:160]})") from None
    if found[0] == "parts.json":
        try:
            value = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise DatasetFormatError(f"{NAME}: {path} is not JSON ({printable(str(e))[:120]}); expected a list of part "
                                     f"names or {{\"<id>\": \"<name>\"}}") from None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            names = list(value)
        elif isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
            try:
                ids = {int(k): v for k, v in value.items() if len(k) <= 7}
                if len(ids) != len(value):
                    raise ValueError("an id of more than 7 digits")
            except ValueError:
                raise DatasetFormatError(f"{NAME}: {path}: keys must be part ids 0..K-1, got "
                                         f"{printable(', '.join(list(value)[:5]))}") from None
            if sorted(ids) != list(range(len(ids))):
                raise DatasetFormatError(f"{NAME}: {path}: the part ids must be 0..{len(ids) - 1}, got {sorted(ids)[:10]}")
            names = [ids[i] for i in range(len(ids))]
        else:
            raise DatasetFormatError(f"{NAME}: {path}: expected a list of part names or {{\"<id>\": \"<name>\"}}")
    else:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        split = [ln.split(None, 1) for ln in lines]
        if lines and all(len(s) == 2 and s[0].rstrip(":").isdigit() and len(s[0]) <= 7 for s in split):
            ids = {int(s[0].rstrip(":")): s[1].strip() for s in split}
            if sorted(ids) != list(range(len(ids))) or len(ids) != len(lines):
                raise DatasetFormatError(f"{NAME}: {path}: lines '<id> <name>' must number the parts 0..K-1 once each, "
                                         f"got ids {sorted(ids)[:10]}")
            names = [ids[i] for i in range(len(ids))]
        else:
            names = lines
    if not names:
        raise DatasetFormatError(f"{NAME}: {path} names no parts")
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise DatasetFormatError(f"{NAME}: {path} names a part twice: {printable(', '.join(twice[:5]))}")
    return names


# -------------------------------------------------------------------------------------- cache
class LabelledCache:
    """A file's labelled points (at most ``n_points``: a seeded subset of larger files) as
    ``<folder>/<sha1>.npz`` (``points`` float32, ``labels`` int64), keyed on the file's absolute
    path, size and mtime and the label and sampling settings; ``folder`` None: no cache."""

    def __init__(self, folder: Optional[str], n_points: int, seed: int, label_key: Optional[str], label_column: int):
        self.folder, self.n_points, self.seed = folder, int(n_points), int(seed)
        self.label_key, self.label_column = label_key, int(label_column)

    def entry(self, path: str) -> Optional[str]:
        if self.folder is None:
            return None
        try:
            st = os.stat(path)
        except OSError as e:
            raise BadFileError(path, stat_failure(path, e)) from None
        ident = (f"seg|{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{self.n_points}|{self.seed}|"
                 f"{label_source(self.label_key, self.label_column)}|{CACHE_VERSION}")
        return os.path.join(self.folder, hashlib.sha1(ident.encode("utf-8", errors="surrogateescape")).hexdigest()
                            + "-seg.npz")

    def read(self, path: str) -> Tuple[np.ndarray, np.ndarray]:
        """(points (M, 3) float32, labels (M,) int64), M = min(file's points, ``n_points``)."""
        entry = self.entry(path)
        if entry is not None and os.path.isfile(entry):
            try:
                with np.load(entry, allow_pickle=False) as data:
                    points, labels = data["points"], data["labels"]
                if points.ndim == 2 and points.shape[1] == 3 and labels.shape == (points.shape[0],):
                    return points, labels
            except (OSError, ValueError, KeyError):
                pass  # a damaged entry: read the file again
        PARSE_COUNT["files"] += 1
        points, labels = read_labelled_file(path, self.label_key, self.label_column)
        if points.shape[0] > self.n_points:
            keep = np.sort(file_seed(path, self.seed).choice(points.shape[0], self.n_points, replace=False))
            points, labels = points[keep], labels[keep]
        points = np.ascontiguousarray(points, dtype=np.float32)
        if entry is not None:
            write_atomic(entry, lambda f: np.savez(f, points=points, labels=labels))
        return points, labels


# ---------------------------------------------------------------------------------------- scan
def _first_level(rel: str, base: str) -> Optional[str]:
    """The first folder of ``rel`` below ``base`` ('' or 'train' / 'test'), None for a file directly in it."""
    parts = rel.split("/")[1:] if base else rel.split("/")
    return parts[0] if len(parts) > 1 else None


class LabelledScan:
    """Every file of a labelled folder, read once (module docstring): ``files`` {subset ('train' /
    'test' for a train/ test/ layout, else 'all'): [(relative path, category)]}, ``categories``
    (sorted; [``all``] without), ``part_names`` (declared, else the ids as strings), ``num_parts``,
    ``counts`` {relative path: {label: points}}, ``bad`` [(relative path, reason)]."""

    def __init__(self, root: str, cache: LabelledCache, categories: str = "auto", min_points: int = DEFAULT_MIN_POINTS):
        self.root, self.cache = root, cache
        self.split_dirs = has_split_dirs(root)
        self.declared = read_part_names(root)
        bases = SPLIT_DIRS if self.split_dirs else ("",)
        self.ignored = [n for n in sorted(os.listdir(root)) if self.split_dirs and not n.startswith(".")
                        and n not in SPLIT_DIRS and n not in PART_FILES]
        listed: Dict[str, List[str]] = {}
        for base in bases:
            folder = os.path.join(root, base) if base else root
            rels = [os.path.relpath(p, root).replace(os.sep, "/") for p in walk_files(folder)]
            listed[base] = [r for r in rels if r not in PART_FILES]
        self.bad: List[Tuple[str, str]] = []
        use = self._use_categories(categories, listed)
        candidates: Dict[str, List[Tuple[str, str]]] = {}
        for base, rels in listed.items():
            subset = base or "all"
            candidates[subset] = []
            for rel in rels:
                cat = _first_level(rel, base) if use else NO_CATEGORY
                if cat is None:
                    self.bad.append((rel, "not in a category subfolder (categories: true)"))
                else:
                    candidates[subset].append((rel, cat))
        self.cached_before = 0
        self.counts: Dict[str, Dict[int, int]] = {}
        bad: Dict[str, str] = {}
        for subset, items in candidates.items():
            for rel, _ in items:
                reason = self._read(rel, int(min_points))
                if reason is not None:
                    bad[rel] = reason
        self._check_labels(bad)
        self.bad += [(rel, bad[rel]) for items in candidates.values() for rel, _ in items if rel in bad]
        self.files = {s: [(rel, c) for rel, c in items if rel not in bad] for s, items in candidates.items()}
        found = sorted({c for items in self.files.values() for _, c in items})
        self.categories = found if use else [NO_CATEGORY]

    def _use_categories(self, mode: str, listed: Mapping[str, List[str]]) -> bool:
        if mode in (False, "false"):
            return False
        if mode in (True, "true"):
            return True
        firsts = [_first_level(rel, base) for base, rels in listed.items() for rel in rels]
        return bool(firsts) and None not in firsts and len(set(firsts)) >= 2

    def _read(self, rel: str, min_points: int) -> Optional[str]:
        path = os.path.join(self.root, rel)
        try:
            entry = self.cache.entry(path)
            if entry is not None and os.path.isfile(entry):
                self.cached_before += 1
            points, labels = self.cache.read(path)
        except BadFileError as e:
            return e.reason
        if points.shape[0] < min_points:
            return f"too small: {points.shape[0]} points, fewer than min_points = {min_points}"
        self.counts[rel] = part_counts(labels)
        return None

    def _check_labels(self, bad: Dict[str, str]) -> None:
        """Labels that are negative, outside the declared parts, or leave the folder's ids short of
        0..K-1 make their files bad; sets ``num_parts`` and ``part_names``."""
        good = {rel: c for rel, c in self.counts.items() if rel not in bad}
        for rel, counts in good.items():
            negative = [v for v in counts if v < 0]
            if negative:
                bad[rel] = f"negative label {negative[0]} (part ids are 0..K-1)"
        if self.declared is not None:
            k = len(self.declared)
            source = "labels.txt" if os.path.exists(os.path.join(self.root, "labels.txt")) else "parts.json"
            for rel, counts in good.items():
                outside = [v for v in counts if v >= k]
                if outside and rel not in bad:
                    bad[rel] = f"label {outside[0]} outside the {k} declared parts ({source}: ids 0..{k - 1})"
            self.num_parts, self.part_names = k, list(self.declared)
            return
        ids = sorted({v for rel, counts in good.items() if rel not in bad for v in counts})
        missing = [i for i in range(ids[-1] + 1) if i not in set(ids)] if ids else []
        if missing:
            first = missing[0]
            for rel, counts in good.items():
                above = [v for v in counts if v > first]
                if above and rel not in bad:
                    bad[rel] = (f"labels above {first} but no file has label {first} (the part ids must be 0..K-1 "
                                f"over the folder; relabel, or declare the parts in labels.txt / parts.json)")
            ids = [i for i in ids if i < first]
        self.num_parts = len(ids)
        self.part_names = [str(i) for i in range(self.num_parts)]

    def category_parts(self) -> Dict[str, List[int]]:
        """{category: sorted part ids found in its files} (every file of the folder)."""
        out: Dict[str, set] = OrderedDict((c, set()) for c in self.categories)
        for items in self.files.values():
            for rel, cat in items:
                out[cat].update(self.counts[rel])
        return OrderedDict((c, sorted(p)) for c, p in out.items())


_SCANS: Dict[tuple, LabelledScan] = {}


def scan_labelled(config: Mapping) -> LabelledScan:
    """The checked scan of a dataset entry's folder (values first: :func:`check_entry`); bad files
    stop it with the one-line report. Remembered for this process while no file changed."""
    check_entry(config)
    root = str(config.get("DATA_PATH"))
    enabled = bool(config.get("cache", True))
    cache_dir = resolve_cache_dir(root, config.get("CACHE_DIR"), enabled)
    if enabled and cache_dir is None:
        print_log(f"[{NAME}] no writable cache folder (tried {os.path.join(root, CACHE_FOLDER)} and "
                  f"{user_cache_dir()}): every run reads the files", logger=LOGGER)
    label_key = config.get("label_key") or None
    cache = LabelledCache(cache_dir, int(config.get("N_POINTS") or DEFAULT_N_POINTS),
                          int(config.get("sample_seed", 0) or 0), label_key, int(config.get("label_column", -1)))
    key = (os.path.abspath(root), cache_dir, cache.n_points, cache.seed, label_key, cache.label_column,
           str(config.get("categories", "auto")).lower(), int(config.get("min_points", DEFAULT_MIN_POINTS)),
           folder_stamp(root))
    if key not in _SCANS:
        if len(_SCANS) >= 4:
            _SCANS.clear()
        _SCANS[key] = LabelledScan(root, cache, str(config.get("categories", "auto")).lower(),
                                   int(config.get("min_points", DEFAULT_MIN_POINTS)))
    scan = _SCANS[key]
    if scan.bad:
        raise bad_files_error(root, scan.bad)
    if scan.num_parts < 2:
        raise DatasetFormatError(f"{NAME}: {root}: the files hold {scan.num_parts} part label(s); segmentation needs "
                                 f"at least 2 parts")
    return scan


def check_entry(config: Mapping) -> None:
    """The values of a dataset entry that need no file read (DatasetFormatError naming the key)."""
    check_folder_entry(config, NAME, LAYOUT)
    for key, default in (("N_POINTS", DEFAULT_N_POINTS), ("min_points", DEFAULT_MIN_POINTS)):
        value = config.get(key, default)
        value = default if value is None else value
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DatasetFormatError(f"{NAME}: {key} = {value!r}: expected a positive integer")
    column = config.get("label_column", -1)
    if isinstance(column, bool) or not isinstance(column, int) or 0 <= column < 3:
        raise DatasetFormatError(f"{NAME}: label_column = {column!r}: expected the label's column after x y z "
                                 f"(0-based, 3 or more; -1 the last)")
    key = config.get("label_key")
    if key is not None and (not isinstance(key, str) or not key.strip()):
        raise DatasetFormatError(f"{NAME}: label_key = {key!r}: expected the name of the label property / array")
    if str(config.get("categories", "auto")).lower() not in ("auto", "true", "false"):
        raise DatasetFormatError(f"{NAME}: categories = {config.get('categories')!r}: expected auto, true or false")


# -------------------------------------------------------------------------------------- dataset
@DATASETS.register_module()
class PartSegFolder(Dataset):
    """A folder of labelled point files (module docstring). ``categories``, ``part_names``,
    ``category_parts`` {category: part ids} describe the folder; ``files`` this subset's paths."""

    config_schema = dataset_schema(
        required=("DATA_PATH", "subset"),
        optional=("N_POINTS", "label_key", "label_column", "categories", "min_points", "split_ratio", "split_seed",
                  "split_file", "sample_seed", "cache", "CACHE_DIR"))

    def __init__(self, config):
        start = time.time()
        self.root = str(config.DATA_PATH)
        self.subset = str(config.subset)
        scan = scan_labelled(config)
        self.npoints = int(config.get("npoints") or 2048)
        self.sample_seed = int(config.get("sample_seed", 0) or 0)
        self.cache = scan.cache
        self.categories: List[str] = list(scan.categories)
        self.part_names: List[str] = list(scan.part_names)
        self.category_parts: Dict[str, List[int]] = scan.category_parts()
        self.split_ratio = float(config.get("split_ratio", DEFAULT_SPLIT_RATIO))
        self.items = self._subset_items(scan, config)
        if not self.items:
            raise DatasetFormatError(f"{NAME}: subset '{self.subset}' of {self.root} holds no files"
                                     f"{'' if scan.split_dirs else ' (split_ratio ' + str(self.split_ratio) + ')'}")
        self.files = [rel for rel, _ in self.items]
        n_all = sum(len(v) for v in scan.files.values())
        cats = ("no categories" if self.categories == [NO_CATEGORY] else
                f"{len(self.categories)} categories ({printable(', '.join(self.categories[:8]))})")
        print_log(f"[{NAME}] {self.root}: subset '{self.subset}' {len(self.items)} of {n_all} files, {cats}, "
                  f"{len(self.part_names)} parts ({printable(', '.join(self.part_names[:10]))}); {self.npoints} points "
                  f"per sample; cache {self.cache.folder or 'off'} ({scan.cached_before} of {n_all} files cached "
                  f"before, {time.time() - start:.1f} s)", logger=LOGGER)
        if scan.ignored:
            print_log(f"[{NAME}] {self.root} has train/ and test/: ignored beside them: "
                      f"{printable(', '.join(scan.ignored))}", logger=LOGGER)

    def _subset_items(self, scan: LabelledScan, config) -> List[Tuple[str, str]]:
        return subset_items(NAME, self.root, self.subset, scan.files, scan.split_dirs, config, self.split_ratio,
                            "category")

    @staticmethod
    def bind_run_dir(entry: Mapping, run_dir: str) -> bool:
        """``others.split_file = <run_dir>/split.json`` unless the entry sets one (as PointCloudFolder)."""
        from .PointCloudFolder import PointCloudFolder

        return PointCloudFolder.bind_run_dir(entry, run_dir)

    @staticmethod
    def prepare_entry(entry: Mapping, config: Mapping) -> Optional[str]:
        """Read the folder before the run directory exists (``datasets.build.prepare_data``): bad
        files stop the run with the one-line report, so nothing is written. Returns a line to log."""
        base = entry.get("_base_") if isinstance(entry.get("_base_"), Mapping) else {}
        merged = EasyDict({**base, **(entry.get("others") or {})})
        scan = scan_labelled(merged)
        n = sum(len(v) for v in scan.files.values())
        return f"{merged.get('DATA_PATH')}: {n} labelled files, {scan.num_parts} parts, {len(scan.categories)} categories"

    def __len__(self) -> int:
        return len(self.items)

    def path_of(self, index: int) -> str:
        return os.path.join(self.root, self.items[index][0])

    def category_index(self, index: int) -> int:
        return self.categories.index(self.items[index][1])

    def __getitem__(self, index: int):
        points, labels = self.cache.read(self.path_of(index))
        points = pc_normalize(points)
        n = points.shape[0]
        if self.subset == "train":
            choice = np.random.choice(n, self.npoints, replace=n < self.npoints)
        else:  # the same points every evaluation
            rng = np.random.default_rng([self.sample_seed, index, n])
            choice = rng.choice(n, self.npoints, replace=n < self.npoints)
        category = np.array([self.category_index(index)], dtype=np.int64)
        return (torch.from_numpy(np.ascontiguousarray(points[choice], dtype=np.float32)), torch.from_numpy(category),
                torch.from_numpy(np.ascontiguousarray(labels[choice], dtype=np.int64)))


def folder_description(dataset: PartSegFolder) -> Dict[str, object]:
    """What a checkpoint keeps of the training folder: ``categories``, ``part_names``, ``category_parts``."""
    return {"categories": list(dataset.categories), "part_names": list(dataset.part_names),
            "category_parts": {c: list(p) for c, p in dataset.category_parts.items()}}


__all__ = ["PartSegFolder", "LabelledScan", "LabelledCache", "scan_labelled", "read_part_names", "check_entry",
           "folder_description", "NO_CATEGORY", "PARSE_COUNT"]
