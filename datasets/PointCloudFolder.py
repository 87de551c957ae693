"""Your own point clouds: a folder of files as a dataset (``NAME: PointCloudFolder``).

Two layouts, chosen by ``labels``:

* ``labels: true`` (classification): one subfolder per class, the ImageFolder convention; the
  classes are the sorted subfolder names (files may lie at any depth below their class folder).
* ``labels: false`` (pre-training): any folder tree; every file is a sample.

Splits: with ``train/`` and ``test/`` subfolders (each in the layout above) those are the
subsets. Otherwise a seeded split (stratified by class when labelled; ``split_ratio`` of each
class goes to ``test``), written to ``split_file`` (a JSON file, set to ``<run dir>/split.json``
by :func:`attach_split_files`) when it does not exist yet and read from it when it does, so a
run (and its ``--test``) can be repeated exactly.

Files (any mix; see :mod:`datasets.io`): ``.ply`` (ascii / binary; with faces: a mesh),
``.xyz`` / ``.txt`` / ``.pts`` / ``.csv``, ``.npy`` / ``.npz``, meshes ``.off`` / ``.obj`` /
``.stl``. Each file gives ``N_POINTS`` points: meshes are sampled on their surface
(area-weighted), larger clouds reduced to a subset, both seeded by the file's bytes and
``sample_seed``. ``N_POINTS: auto``: the smallest point file's count among those with at least
``npoints`` points, at most 2048 (:class:`FolderScan`); ``main.py`` resolves it before the run
folder exists and writes the number into the run's config. Names starting with ``.`` (files and
folders) are skipped.

Every file is read once when the dataset is built (one scan, with a progress bar; ``main.py``
scans before the run folder exists, :meth:`PointCloudFolder.prepare_entry`): bad files (empty,
unreadable, non-finite, too few points, unknown extension, outside a class folder) stop the run
with one line grouping them by reason, the full list in a file it names
(:func:`bad_files_error`). The points read go
into a cache (``.npy`` per file, keyed on absolute path, size, mtime, ``N_POINTS``,
``sample_seed``): later epochs and later runs read the cache, not the files. The cache folder is
``CACHE_DIR``, by default ``<DATA_PATH>/.intermae_cache``, or ``$XDG_CACHE_HOME/inter-mae/folders``
(``~/.cache/...``) when the data folder is read-only; ``cache: false`` turns it off.

Items: ``(class name or 'folder', relative path, data)``. Labelled: ``data = (points (N_POINTS, 3)
float32, label)``, centred and scaled into the unit sphere (the point order shuffled when
``subset`` is ``train``, as ModelNet; the runner samples ``npoints`` by FPS). Unlabelled:
``data = points (npoints, 3)`` (a random ``npoints`` of the file's points, then normalised, as
ShapeNet-55) or, with ``n_imgs > 0`` (``IMG_SOURCE: projected``), ``{'points', 'imgs'}``: views
rendered from the file's normalised points by :mod:`datasets.render` and cached as PNGs.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from easydict import EasyDict
from PIL import Image
from torch.utils.data import Dataset

from utils.logger import library_logger, print_log
from utils.text import printable

from .build import DATASETS
from .common import DatasetFormatError, dataset_schema, pc_normalize, random_subset
from .io import (AUTO, AUTO_MAX_POINTS, CLOUD_EXTS, BadFileError, TooFewPointsError, bad_files_message, load_cloud_file,
                 point_count, walk_files)
from .views import VIEW_KEYS, check_view_config, choose_views, project_views

NAME = "PointCloudFolder"
LAYOUT = """  labels: true   <DATA_PATH>/<class>/.../<file>              (one subfolder per class)
  labels: false  <DATA_PATH>/.../<file>                      (any tree)
  optional split <DATA_PATH>/train/... and <DATA_PATH>/test/... (each in the layout above)
  files: """ + " ".join(CLOUD_EXTS)
CACHE_FOLDER = ".intermae_cache"
CACHE_VERSION = 1  # bump when the reading / sampling of a format changes
HEADER_COUNTED = (".npy", ".ply")  # point_count reads only their header: not cached
SUBSETS = ("train", "test", "all")
SPLIT_DIRS = ("train", "test")
DEFAULT_SPLIT_RATIO = 0.2
LOGGER = library_logger(NAME)

# Actual file reads (cache misses) of this process, for tests and benchmarks.
PARSE_COUNT = {"files": 0}


# ---------------------------------------------------------------------------------------- cache
def user_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "inter-mae", "folders")


def _writable(folder: str) -> bool:
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=folder)
        os.close(fd)
        os.remove(probe)
        return True
    except OSError:
        return False


def resolve_cache_dir(root: str, configured: Optional[str] = None, enabled: bool = True) -> Optional[str]:
    """The cache folder: ``configured``, else ``<root>/.intermae_cache``, else the user cache
    folder when the data folder is read-only; None when disabled or nothing is writable."""
    if not enabled:
        return None
    candidates = [configured] if configured else [os.path.join(root, CACHE_FOLDER), user_cache_dir()]
    return next((c for c in candidates if _writable(c)), None)


def stat_failure(path: str, error: OSError) -> str:
    """Why ``os.stat(path)`` failed, in words: a dangling symbolic link, a loop of links, or the
    system's reason."""
    import errno

    if error.errno == errno.ELOOP:
        return "unreadable (a loop of symbolic links)"
    if error.errno == errno.ENOENT and os.path.islink(path):
        return f"unreadable (a dangling symbolic link, to {printable(os.readlink(path))})"
    return f"unreadable ({error.strerror or error})"


class CloudCache:
    """Parsed and sampled clouds as ``<folder>/<sha1>.npy``, keyed on the file's absolute path,
    size and mtime and the sampling parameters. Writes are atomic (temporary file + rename); an
    unreadable entry counts as a miss and is rewritten. ``folder`` None: no cache."""

    def __init__(self, folder: Optional[str], n_points: int, seed: int):
        self.folder, self.n_points, self.seed = folder, int(n_points), int(seed)

    def key(self, path: str) -> str:
        """The entry's name; a file that cannot be stat-ed (a dangling or looping symbolic link, no
        permission) is a :class:`BadFileError`."""
        try:
            st = os.stat(path)
        except OSError as e:
            raise BadFileError(path, stat_failure(path, e)) from None
        ident = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{self.n_points}|{self.seed}|{CACHE_VERSION}"
        return hashlib.sha1(ident.encode("utf-8", errors="surrogateescape")).hexdigest()

    def entry(self, path: str, suffix: str = ".npy") -> Optional[str]:
        return None if self.folder is None else os.path.join(self.folder, self.key(path) + suffix)

    def has(self, path: str) -> bool:
        try:
            entry = self.entry(path)
        except BadFileError:
            return False  # reported when the file is read
        return entry is not None and os.path.isfile(entry)

    def count(self, path: str) -> Optional[int]:
        """The file's number of points (None: a mesh), :func:`datasets.io.point_count`, cached as
        ``<sha1>.count`` (keyed on the file alone, not on the sampling) for the formats it reads whole
        (``.npy`` and ``.ply`` headers are read faster than a cache entry is written)."""
        entry = None
        if self.folder is not None and not path.lower().endswith(HEADER_COUNTED):
            st = os.stat(path)
            ident = f"count|{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{CACHE_VERSION}"
            entry = os.path.join(self.folder, hashlib.sha1(ident.encode("utf-8", errors="surrogateescape")).hexdigest()
                                 + ".count")
            try:
                with open(entry, encoding="ascii") as f:
                    text = f.read().strip()
                return None if text == "mesh" else int(text)
            except (OSError, ValueError):
                pass
        n = point_count(path)
        if entry is not None:
            write_atomic(entry, lambda f: f.write(b"mesh" if n is None else str(n).encode("ascii")))
        return n

    def points(self, path: str) -> np.ndarray:
        """The file's (n_points, 3) float32 points: from the cache, else read (and cached)."""
        entry = self.entry(path)
        if entry is not None and os.path.isfile(entry):
            try:
                pts = np.load(entry, allow_pickle=False)
                if pts.shape == (self.n_points, 3) and pts.dtype == np.float32:
                    return pts
            except (OSError, ValueError):
                pass  # a damaged entry: read the file again
        PARSE_COUNT["files"] += 1
        pts = load_cloud_file(path, self.n_points, self.seed)
        if entry is not None:
            write_atomic(entry, lambda f: np.save(f, pts))
        return pts


def write_atomic(path: str, write) -> bool:
    """``write(f)`` to a temporary file beside ``path``, renamed over it (readers never see a
    partial file). A cache write that fails (disk full, permissions) is skipped: returns False."""
    folder = os.path.dirname(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
        return True
    except OSError:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        return False


# ----------------------------------------------------------------------------------------- scan
def _visible(name: str) -> bool:
    return not name.startswith(".")


_walk_files = walk_files  # every visible file under a folder (datasets.io: the one lister of the user's files)


def _subdirs(folder: str) -> List[str]:
    return sorted(d for d in os.listdir(folder) if _visible(d) and os.path.isdir(os.path.join(folder, d)))


def has_split_dirs(root: str) -> bool:
    return all(os.path.isdir(os.path.join(root, d)) for d in SPLIT_DIRS)


class FolderScan:
    """The files of a folder: ``files`` {subset ('train'/'test' for a train/ test/ layout, else
    'all'): [(relative path, class name or None)]}, ``classes`` (sorted; labelled only), ``bad``
    [(relative path, reason)] and ``small`` {relative path: points} of the bad files with too few
    points. Every file is read once, through ``cache`` (a :class:`CloudCache`).

    ``n_points``: the points per file, or ``'auto'``: the smallest point file's count among those
    with at least ``floor`` points (``npoints``: what the model samples), at most
    ``max(AUTO_MAX_POINTS, floor)`` (meshes: any count); files with fewer than ``floor`` are bad.
    The number used is ``n_points`` after the scan and ``cache`` reads that many."""

    def __init__(self, root: str, labelled: bool, cache_dir: Optional[str], n_points, seed: int = 0, floor: int = 1,
                 progress: bool = True):
        self.root, self.labelled = root, labelled
        self.bad: List[Tuple[str, str]] = []
        self.small: Dict[str, int] = {}
        self.files: Dict[str, List[Tuple[str, Optional[str]]]] = {}
        self.classes: List[str] = []
        self.split_dirs = has_split_dirs(root)
        self.ignored: List[str] = []
        self.auto = n_points == AUTO
        self.workers = 1
        parts = SPLIT_DIRS if self.split_dirs else ("all",)
        if self.split_dirs:
            self.ignored = [n for n in os.listdir(root) if _visible(n) and n not in SPLIT_DIRS]
        candidates: Dict[str, List[Tuple[str, Optional[str]]]] = {}
        for part in parts:
            base = root if part == "all" else os.path.join(root, part)
            candidates[part] = self._list(base, part)
        if labelled:
            self._check_classes(candidates)
        self.cached_before = 0
        todo = [rel for part in parts for rel, _ in candidates[part]]
        bad: Dict[str, str] = {}
        for rel in todo:
            ext = os.path.splitext(rel)[1].lower()
            if ext not in CLOUD_EXTS:
                bad[rel] = f"unknown extension {ext or '(none)'}; expected one of {' '.join(CLOUD_EXTS)}"
        todo = [rel for rel in todo if rel not in bad]
        if self.auto:
            n_points = self._resolve(todo, CloudCache(cache_dir, 0, seed), int(floor), bad, progress)
        self.n_points = int(n_points)
        self.cache = CloudCache(cache_dir, self.n_points, seed)
        bad.update(self._read_all([rel for rel in todo if rel not in bad], self.cache, progress))
        order = [rel for part in parts for rel, _ in candidates[part]]
        self.bad = [(rel, bad[rel]) for rel in order if rel in bad] + self.bad
        for part in parts:
            self.files[part] = [(rel, c) for rel, c in candidates[part] if rel not in bad]

    def _list(self, base: str, part: str) -> List[Tuple[str, Optional[str]]]:
        out = []
        prefix = "" if part == "all" else part + "/"
        if not self.labelled:
            return [(os.path.relpath(p, self.root).replace(os.sep, "/"), None) for p in _walk_files(base)]
        for name in sorted(os.listdir(base)):
            full = os.path.join(base, name)
            if _visible(name) and os.path.isfile(full):
                self.bad.append((prefix + name, "not in a class subfolder"))
        for cls in _subdirs(base):
            out += [(os.path.relpath(p, self.root).replace(os.sep, "/"), cls)
                    for p in _walk_files(os.path.join(base, cls))]
        return out

    def _check_classes(self, candidates) -> None:
        where = {part: (self.root if part == "all" else os.path.join(self.root, part)) for part in candidates}
        first = "train" if self.split_dirs else "all"
        classes = _subdirs(where[first])
        if not classes:
            raise DatasetFormatError(f"{NAME}: no class subfolders in {where[first]} (labels: true expects one "
                                     f"subfolder per class; for pre-training on any tree use labels: false). "
                                     f"Expected layout:\n{LAYOUT}")
        for part, items in candidates.items():
            counts = {c: 0 for c in _subdirs(where[part])}
            for _, c in items:
                counts[c] += 1
            empty = [c for c, n in counts.items() if n == 0]
            if empty:
                raise DatasetFormatError(f"{NAME}: class folder(s) with no files in {where[part]}: "
                                         f"{printable(', '.join(empty))}; add files or remove the folder(s)")
            extra = sorted(set(counts) - set(classes))
            if extra:
                raise DatasetFormatError(f"{NAME}: {where[part]} has class folder(s) {printable(', '.join(extra))} "
                                         f"that {where[first]} lacks; the classes are the training folder's "
                                         f"subfolders")
        self.classes = classes

    def _resolve(self, rels: Sequence[str], counter: "CloudCache", floor: int, bad: Dict[str, str],
                 progress: bool) -> int:
        """``N_POINTS: auto``: the number of points per file (class docstring); the files with fewer
        than ``floor`` points go into ``bad``."""
        cap = max(AUTO_MAX_POINTS, floor)
        counts = self._map(_count_one, rels, counter, progress, "counting points in")
        usable = []
        for rel, count in zip(rels, counts):
            if isinstance(count, int) and count < floor:
                bad[rel] = TooFewPointsError(rel, count, floor, "npoints").reason
                self.small[rel] = count
            elif isinstance(count, int):
                usable.append(count)
        return min(usable + [cap])

    def _map(self, fn, rels: Sequence[str], cache: "CloudCache", progress: bool, desc: str) -> list:
        """``fn((path, cache))`` for every file, in order; in one process per core for a large folder."""
        if not rels:
            return []
        from tqdm import tqdm

        show = progress and len(rels) > 1 and sys.stderr.isatty()
        bar = tqdm(total=len(rels), desc=f"{desc} {os.path.basename(os.path.normpath(self.root))}", disable=not show,
                   dynamic_ncols=True, leave=False)
        jobs = [(os.path.join(self.root, rel), cache) for rel in rels]
        out = []
        workers = self.workers = scan_workers(len(rels), cache)
        if workers > 1:  # the first read of a large folder: one process per core (the cache is the result)
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            from concurrent.futures.process import BrokenProcessPool

            slots = ScanSlots(workers)
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                     initializer=_scan_worker_init, initargs=(slots,)) as pool:
                try:
                    for result in pool.map(_in_slot, [(fn, job) for job in jobs], chunksize=4):
                        out.append(result)
                        bar.update()
                except BrokenProcessPool:
                    bar.close()
                    raise slots.crash_error(self.root) from None
                except BaseException:  # a stop signal, Ctrl-C: the workers stop now, not after their files
                    slots.stop_workers()
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
        else:
            for job in jobs:
                out.append(fn(job))
                bar.update()
        bar.close()
        return out

    def _read_all(self, rels: Sequence[str], cache: CloudCache, progress: bool) -> Dict[str, str]:
        """{relative path: reason} of the files that cannot be used; the others land in the cache."""
        todo = []
        for rel in rels:
            if cache.folder is not None and cache.has(os.path.join(self.root, rel)):
                self.cached_before += 1
            else:
                todo.append(rel)
        bad: Dict[str, str] = {}
        for rel, error in zip(todo, self._map(_read_one, todo, cache, progress, "reading")):
            if self.workers > 1:  # (one process: counted by CloudCache.points)
                PARSE_COUNT["files"] += 1
            if error is not None:
                bad[rel] = error.reason
                if isinstance(error, TooFewPointsError):
                    self.small[rel] = error.count
        return bad


PARALLEL_SCAN_MIN_FILES = 64  # fewer files to read: one process (starting workers costs more)


def scan_workers(n_files: int, cache: CloudCache) -> int:
    """Processes for the first read of ``n_files``: the usable cores (at most 16) when there are at
    least :data:`PARALLEL_SCAN_MIN_FILES`, the cache is on (it carries the result) and ``fork``
    exists; else 1."""
    import multiprocessing

    if n_files < PARALLEL_SCAN_MIN_FILES or cache.folder is None or "fork" not in multiprocessing.get_all_start_methods():
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, 16))


class ScanSlots:
    """What each worker process of the parallel scan is reading, in memory shared with them: one
    slot (pid, path) per worker, the path set while it reads a file. A worker stopped by the pool
    (SIGTERM) clears its slot first, so after a worker died otherwise (the kernel's OOM killer, a
    crash in a reader) the slots still set name the files it was reading."""

    PATH_BYTES = 4096

    def __init__(self, n: int):
        import ctypes
        import multiprocessing

        ctx = multiprocessing.get_context("fork")
        self.n = n
        self.pids = ctx.Array(ctypes.c_int, n, lock=False)
        self.paths = ctx.Array(ctypes.c_char, n * self.PATH_BYTES, lock=False)
        self.next = ctx.Value(ctypes.c_int, 0)

    def claim(self) -> int:
        with self.next.get_lock():
            index = self.next.value
            self.next.value += 1
        self.pids[index] = os.getpid()
        return index

    def set(self, index: int, path: str) -> None:
        data = path.encode("utf-8", errors="surrogateescape")[: self.PATH_BYTES - 1] + b"\0"
        start = index * self.PATH_BYTES
        self.paths[start: start + len(data)] = data

    def get(self, index: int) -> str:
        start = index * self.PATH_BYTES
        raw = bytes(self.paths[start: start + self.PATH_BYTES])
        return raw.split(b"\0", 1)[0].decode("utf-8", errors="surrogateescape")

    def stop_workers(self) -> None:
        import signal

        for i in range(min(self.next.value, self.n)):
            try:
                os.kill(self.pids[i], signal.SIGTERM)
            except (OSError, ValueError):
                pass

    def crash_error(self, root: str) -> DatasetFormatError:
        files = [self.get(i) for i in range(min(self.next.value, self.n)) if self.get(i)]
        which = (f"while reading {files[0]}" if len(files) == 1 else
                 f"while reading one of {', '.join(files)}" if files else "between files")
        return DatasetFormatError(f"a worker process of the scan of {root} died {which} (killed by the system: out "
                                  f"of memory? or a crash in a reader); fix or remove that file, or read the folder "
                                  f"in one process with cache: false to see the error")


_SLOT: Dict[str, object] = {}  # in a scan worker: its ScanSlots and slot index


def _scan_worker_init(slots: ScanSlots) -> None:
    """A scan worker: claims its slot; Ctrl-C is the main process's to handle; the pool's SIGTERM
    clears the slot, then exits at once."""
    import signal

    index = slots.claim()
    _SLOT.update(slots=slots, index=index)

    def stopped(signum, frame):
        slots.set(index, "")
        os._exit(128 + signum)

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, stopped)


def _in_slot(item):
    """``fn(job)`` in a scan worker, its file in the worker's slot meanwhile."""
    fn, job = item
    slots = _SLOT.get("slots")
    if slots is not None:
        slots.set(_SLOT["index"], job[0])
    try:
        return fn(job)
    finally:
        if slots is not None:
            slots.set(_SLOT["index"], "")


def _read_one(job) -> Optional[BadFileError]:
    """Read one file into the cache; the error that makes it bad, or None."""
    path, cache = job
    try:
        cache.points(path)
        return None
    except BadFileError as e:
        return e


def _count_one(job) -> Optional[int]:
    """One file's number of points (None: a mesh; -1: unreadable, reported by the read)."""
    path, cache = job
    try:
        return cache.count(path)
    except (BadFileError, OSError):
        return -1


def bad_files_error(root: str, bad: Sequence[Tuple[str, str]], small: Optional[Mapping[str, int]] = None,
                    floor: int = 1) -> DatasetFormatError:
    """The one-line report of a folder's bad files (:func:`datasets.io.bad_files_message`: grouped by
    reason, the full list in a file it names). ``small`` {relative path: points} of the files with
    fewer than ``N_POINTS`` points: when some hold at least ``floor`` (``npoints``), the line names
    the ``N_POINTS`` that reads them."""
    listed = {rel for rel, _ in bad}
    fixable = sorted(n for rel, n in (small or {}).items() if n >= floor and rel in listed)
    hint, tail = "", "fix or remove them (docs/own-data.md)"
    if fixable and floor > 1:  # (floor 1: npoints unknown, the model's need cannot be told)
        held = f"{fixable[0]}" if fixable[0] == fixable[-1] else f"{fixable[0]} to {fixable[-1]}"
        which = "they" if len(fixable) == len(bad) else f"{len(fixable)} of the too-small files"
        hint = (f"{which} hold {held} points, enough for npoints = {floor}: --opts dataset.N_POINTS={fixable[0]} "
                f"(every subset; or dataset.N_POINTS=auto: the smallest file's count) reads them")
        if len(fixable) == len(bad):
            tail = "docs/own-data.md"
    head = f"{len(bad)} bad file{'s' if len(bad) != 1 else ''} in {root}"
    return DatasetFormatError(bad_files_message(head, bad, hint, tail=tail))


_SCANS: Dict[tuple, FolderScan] = {}


def folder_stamp(root: str) -> Tuple[Tuple[str, int, int], ...]:
    """``(path, size, mtime_ns)`` of every file under ``root`` (``(path, -1, -1)`` when it cannot be
    stat'ed): a scan of the folder is reused while this is unchanged."""
    stamp = []
    for path in _walk_files(root):
        try:
            st = os.stat(path)
            stamp.append((path, st.st_size, st.st_mtime_ns))
        except OSError:
            stamp.append((path, -1, -1))
    return tuple(stamp)


def scan_folder(root: str, labelled: bool, cache_dir: Optional[str], n_points, seed: int = 0, floor: int = 1,
                progress: bool = True) -> FolderScan:
    """:class:`FolderScan` of ``root``, remembered for this process while no file changed (the train,
    val and test datasets of a run share one scan; an ``auto`` scan also answers for the number it chose)."""
    stamp = folder_stamp(root)
    head = (os.path.abspath(root), labelled, cache_dir, int(seed))
    key = head + ((AUTO, int(floor)) if n_points == AUTO else (int(n_points), None), stamp)
    if key not in _SCANS:
        if len(_SCANS) >= 4:
            _SCANS.clear()
        scan = FolderScan(root, labelled, cache_dir, n_points, seed, floor, progress)
        _SCANS[key] = scan
        if n_points == AUTO:  # the run's config then holds the number: its datasets find this scan
            _SCANS[head + ((scan.n_points, None), stamp)] = scan
    return _SCANS[key]


# ---------------------------------------------------------------------------------------- split
def stratified_split(items: Sequence[Tuple[str, Optional[str]]], ratio: float, seed: int) -> Dict[str, List[str]]:
    """{'train': [...], 'test': [...]} relative paths: per class (sorted by name), a seeded
    permutation of its sorted files, ``round(ratio * n)`` of them to test (at least 1 when
    ``ratio > 0`` and the class has 2 or more files; at least 1 always kept for train)."""
    rng = np.random.default_rng(int(seed))
    groups: Dict[Optional[str], List[str]] = {}
    for rel, cls in items:
        groups.setdefault(cls, []).append(rel)
    train, test = [], []
    for cls in sorted(groups, key=lambda c: "" if c is None else c):
        files = sorted(groups[cls])
        order = [files[i] for i in rng.permutation(len(files))]
        n_test = int(round(ratio * len(files)))
        if ratio > 0 and len(files) >= 2:
            n_test = max(n_test, 1)
        n_test = min(n_test, len(files) - 1)
        test += sorted(order[:n_test])
        train += sorted(order[n_test:])
    return {"train": train, "test": test}


def subset_items(name: str, root: str, subset: str, files: Mapping[str, Sequence[Tuple[str, Optional[str]]]],
                 split_dirs: bool, config: Mapping, split_ratio: float, stratum: Optional[str]
                 ) -> List[Tuple[str, Optional[str]]]:
    """The ``(relative path, label)`` items of ``subset`` (``train``, ``test``, ``all``) of a scanned
    folder (``files``: per split directory, or ``all``): the ``train/`` / ``test/`` folders when
    ``split_dirs``, else the run's split file (``config.split_file``) when it exists, else a seeded
    split (``split_seed``, ``split_ratio`` to test; stratified by the item's label, called
    ``stratum`` in the log, when ``stratum`` is set), written to the split file."""
    if split_dirs:
        parts = SPLIT_DIRS if subset == "all" else (subset,)
        return [item for part in parts for item in files[part]]
    items = files["all"]
    if subset == "all":
        return list(items)
    split_file = config.get("split_file")
    split = None
    if split_file and os.path.isfile(split_file):
        split = read_split_file(split_file, root)
        known = {rel for rel, _ in items}
        missing = [rel for s in SPLIT_DIRS for rel in split[s] if rel not in known]
        if missing:
            raise DatasetFormatError(f"{name}: split file {split_file} lists {len(missing)} file(s) that {root} lacks "
                                     f"({printable(', '.join(missing[:5]))}{', ...' if len(missing) > 5 else ''});"
                                     f" delete the split file to split the folder again")
        listed = set(split["train"]) | set(split["test"])
        new = [rel for rel, _ in items if rel not in listed]
        if new:
            print_log(f"[{name}] {len(new)} file(s) of {root} are not in the split file {split_file} and are left out "
                      f"({printable(', '.join(new[:3]))}{', ...' if len(new) > 3 else ''})", logger=LOGGER)
    if split is None:
        seed = int(config.get("split_seed", 0) or 0)
        split = {"root": os.path.abspath(root), "split_ratio": split_ratio, "split_seed": seed,
                 "stratified": stratum is not None, **stratified_split(items, split_ratio, seed)}
        if split_file:
            write_split_file(split_file, split)
            print_log(f"[{name}] split of {root} (test share {split_ratio}, seed {seed}"
                      f"{f', stratified by {stratum}' if stratum else ''}): {len(split['train'])} train, "
                      f"{len(split['test'])} test; written to {split_file}", logger=LOGGER)
    by_rel = dict(items)
    return [(rel, by_rel[rel]) for rel in split[subset] if rel in by_rel]


def read_split_file(path: str, root: str) -> Dict[str, List[str]]:
    """``{'train': [relative paths], 'test': [...]}`` of a split file (a regular file only: a FIFO is
    never opened); DatasetFormatError naming it when it is not such UTF-8 JSON."""
    from .safe_io import open_regular

    try:
        with open_regular(path, "split file") as f:
            split = json.loads(f.read().decode("utf-8"))
        if not (isinstance(split, dict) and all(isinstance(split.get(s), list) and
                                                all(isinstance(name, str) for name in split[s]) for s in SPLIT_DIRS)):
            raise ValueError("expected lists of file names 'train' and 'test'")
    except (OSError, ValueError, RecursionError) as e:  # RecursionError: JSON nested deeper than Python recurses
        raise DatasetFormatError(f"{NAME}: split file {path} cannot be read ({printable(str(e))[:200]}); delete it to "
                                 f"split {root} again") from None
    return split


def write_split_file(path: str, split: Mapping) -> None:
    from utils.checkpoint import atomic_write

    text = json.dumps(split, indent=1, ensure_ascii=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


# ------------------------------------------------------------------------------ entry checks
def points_spec(value):
    """``N_POINTS`` as ``'auto'`` or a positive int (an integer string too); None when it is neither."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == AUTO:
            return AUTO
        value = int(text) if text.isdigit() else None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return None
    return value


def check_folder_entry(config: Mapping, name: str, layout: str) -> None:
    """The keys every folder dataset (``name``; ``layout``: its expected layout, for the message) checks
    before reading a file: ``DATA_PATH`` is a folder, ``subset`` one of :data:`SUBSETS`, ``split_ratio``
    a number in [0, 1). DatasetFormatError naming the key and the value."""
    root = str(config.get("DATA_PATH"))
    if not os.path.isdir(root):
        hint = ("pass your folder with --data_root DIR" if os.path.normpath(root) == "data" else
                "check the path, or pass your folder with --data_root DIR")
        raise DatasetFormatError(f"{name}: folder '{root}' does not exist; {hint} (DATA_PATH: data in the "
                                 f"config means the --data_root folder itself). Expected layout:\n{layout}")
    subset = str(config.get("subset"))
    if subset not in SUBSETS:
        raise DatasetFormatError(f"{name}: subset must be one of {list(SUBSETS)}, got '{subset}'")
    ratio = config.get("split_ratio", DEFAULT_SPLIT_RATIO)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) < 1.0:
        raise DatasetFormatError(f"{name}: split_ratio must be in [0, 1) (the test share), got {ratio!r}")


def check_entry(config: Mapping) -> None:
    """The values of a dataset entry (``_base_`` merged with ``others``) that need no file read:
    the folder exists, ``subset``, ``split_ratio``, ``N_POINTS`` (a positive integer or ``auto``)
    against ``npoints``, the views. DatasetFormatError naming the key and the value."""
    check_folder_entry(config, NAME, LAYOUT)
    n_points = points_spec(config.get("N_POINTS"))
    if n_points is None:
        raise DatasetFormatError(f"{NAME}: N_POINTS = {config.get('N_POINTS')!r}: expected a positive integer "
                                 f"(points per file) or '{AUTO}' (the smallest file's count, at most {AUTO_MAX_POINTS})")
    npoints = config.get("npoints")
    if n_points != AUTO and npoints and int(npoints) > n_points:
        raise DatasetFormatError(f"{NAME}: npoints = {npoints} must be at most N_POINTS = {n_points}")
    if int(config.get("n_imgs", 0) or 0):
        if bool(config.get("labels", True)):
            raise DatasetFormatError(f"{NAME}: n_imgs > 0 (views for the image branch) needs labels: false "
                                     f"(pre-training)")
        check_view_config({"IMG_SOURCE": "projected", **dict(config)}, NAME, allowed_sources=("projected",))


def scan_entry(config: Mapping, floor: Optional[int] = None, progress: bool = True) -> FolderScan:
    """The checked scan of a dataset entry's folder (:func:`check_entry`, then :func:`scan_folder`):
    a bad file stops it with the one-line report (:func:`bad_files_error`). ``floor``: the fewest
    points a file needs (``npoints``, or the run's when larger); default the entry's ``npoints``."""
    check_entry(config)
    root = str(config.get("DATA_PATH"))
    floor = int(floor or config.get("npoints") or 1)
    enabled = bool(config.get("cache", True))
    cache_dir = resolve_cache_dir(root, config.get("CACHE_DIR"), enabled)
    if enabled and cache_dir is None:
        print_log(f"[{NAME}] no writable cache folder (tried {os.path.join(root, CACHE_FOLDER)} and "
                  f"{user_cache_dir()}): every epoch reads the files", logger=LOGGER)
    scan = scan_folder(root, bool(config.get("labels", True)), cache_dir, points_spec(config.get("N_POINTS")),
                       int(config.get("sample_seed", 0) or 0), floor, progress)
    if scan.bad:
        raise bad_files_error(root, scan.bad, scan.small, floor)
    return scan


# -------------------------------------------------------------------------------------- dataset
@DATASETS.register_module()
class PointCloudFolder(Dataset):
    """A folder of point-cloud and mesh files (module docstring). ``class_names``: the sorted class
    folder names (labelled), else None; ``files``: this subset's relative paths."""

    config_schema = dataset_schema(
        required=("DATA_PATH", "N_POINTS", "subset"),
        optional=("labels", "split_ratio", "split_seed", "split_file", "sample_seed", "cache", "CACHE_DIR")
        + VIEW_KEYS)

    def __init__(self, config):
        self.root = str(config.DATA_PATH)
        self.subset = str(config.subset)
        self.labelled = bool(config.get("labels", True))
        self.n_imgs = int(config.get("n_imgs", 0) or 0)
        self.img_size = int(config.get("IMG_SIZE", 224))
        start = time.time()
        scan = scan_entry(config)  # (checks the entry's values first)
        self.split_ratio = float(config.get("split_ratio", DEFAULT_SPLIT_RATIO))
        self.n_points = scan.n_points
        self.npoints = int(config.get("npoints") or self.n_points)
        self.cache = scan.cache
        self.class_names: Optional[List[str]] = list(scan.classes) if self.labelled else None
        items = self._subset_items(scan, config)
        if not items:
            raise DatasetFormatError(f"{NAME}: subset '{self.subset}' of {self.root} holds no files"
                                     f"{'' if scan.split_dirs else ' (split_ratio ' + str(self.split_ratio) + ')'}")
        self.items = items
        self.files = [rel for rel, _ in items]
        n_all = sum(len(v) for v in scan.files.values())
        what = f"{len(self.class_names)} classes ({self._class_list()})" if self.labelled else "unlabelled"
        chosen = " (N_POINTS: auto, the smallest file's count)" if scan.auto else ""
        print_log(f"[{NAME}] {self.root}: subset '{self.subset}' {len(items)} of {n_all} files, {what}; "
                  f"{self.n_points} points per file{chosen}; cache {self.cache.folder or 'off'} "
                  f"({scan.cached_before} of {n_all + len(scan.bad)} files cached before, {time.time() - start:.1f} s)",
                  logger=LOGGER)
        if scan.ignored:
            ignored = printable(", ".join(scan.ignored))
            print_log(f"[{NAME}] {self.root} has train/ and test/: ignored beside them: {ignored}",
                      logger=LOGGER)

    def _class_list(self, most: int = 10) -> str:
        names = self.class_names or []
        return printable(", ".join(names[:most])) + (f", ... ({len(names) - most} more)" if len(names) > most else "")

    def _subset_items(self, scan: FolderScan, config) -> List[Tuple[str, Optional[str]]]:
        return subset_items(NAME, self.root, self.subset, scan.files, scan.split_dirs, config, self.split_ratio,
                            "class" if self.labelled else None)

    @staticmethod
    def bind_run_dir(entry: Mapping, run_dir: str) -> bool:
        """``others.split_file = <run_dir>/split.json`` for a dataset entry that sets no split file
        (``datasets.build.bind_run_dir``: called before the run's config.yaml is written, so that
        ``--test`` and ``--resume`` read the split this run draws). Returns whether it was set."""
        base = entry.get("_base_") if isinstance(entry.get("_base_"), Mapping) else {}
        if entry.get("others") is None:
            entry["others"] = {}
        if entry["others"].get("split_file") or base.get("split_file"):
            return False
        entry["others"]["split_file"] = os.path.join(os.path.abspath(run_dir), "split.json")
        return True

    @staticmethod
    def prepare_entry(entry: Mapping, config: Mapping) -> Optional[str]:
        """Scan this entry's folder before the run directory exists (``datasets.build.prepare_data``):
        a bad file stops the run there with the one-line report, so nothing is written. ``N_POINTS:
        auto`` is resolved (the run's ``npoints`` is the fewest points a file needs, when larger than
        the entry's) and the number written into ``others.N_POINTS``, so the run's config.yaml and
        checkpoints, ``--test`` and ``tools/predict.py`` use it. Returns a line to log, or None."""
        base = entry.get("_base_") if isinstance(entry.get("_base_"), Mapping) else {}
        if entry.get("others") is None:
            entry["others"] = {}
        merged = EasyDict({**base, **entry["others"]})
        top = config.get("npoints")
        floor = max(int(merged.get("npoints") or 1), top if isinstance(top, int) and not isinstance(top, bool) else 1)
        scan = scan_entry(merged, floor)
        if points_spec(merged.get("N_POINTS")) != AUTO:
            return None
        entry["others"]["N_POINTS"] = scan.n_points
        return (f"{merged.get('DATA_PATH')}: N_POINTS: auto -> {scan.n_points} points per file (the smallest file's "
                f"count of at least npoints = {floor}, at most {max(AUTO_MAX_POINTS, floor)})")

    def __len__(self) -> int:
        return len(self.items)

    def path_of(self, index: int) -> str:
        return os.path.join(self.root, self.items[index][0])

    def points(self, index: int) -> np.ndarray:
        """The file's ``N_POINTS`` points, raw coordinates (float32), through the cache."""
        return self.cache.points(self.path_of(index))

    def __getitem__(self, index: int):
        rel, cls = self.items[index]
        raw = self.points(index)
        if self.labelled:
            points = pc_normalize(raw)
            if self.subset == "train":
                points = points[np.random.permutation(points.shape[0])]
            label = self.class_names.index(cls)
            return cls, rel, (torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32)), label)
        points = pc_normalize(random_subset(raw, self.npoints)).astype(np.float32)
        if not self.n_imgs:
            return "folder", rel, torch.from_numpy(points)
        views = choose_views(self.n_imgs)
        imgs = torch.stack([self.view(index, raw, int(v)) for v in views])
        return "folder", rel, {"points": torch.from_numpy(points), "imgs": imgs}

    def view(self, index: int, raw: np.ndarray, view: int) -> torch.Tensor:
        """View ``view`` of the grid (:func:`datasets.render.default_view_grid`) of the file's
        normalised points, (3, IMG_SIZE, IMG_SIZE) in [0, 1] (8-bit, as cached), from the cache."""
        entry = self.cache.entry(self.path_of(index), f"-view{view:02d}-{self.img_size}.png")
        if entry is not None and os.path.isfile(entry):
            try:
                with Image.open(entry) as img:
                    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
                if arr.shape == (self.img_size, self.img_size, 3):
                    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)
            except (OSError, ValueError):
                pass
        img = project_views(pc_normalize(raw), [view], self.img_size)[0]
        arr = (img.permute(1, 2, 0).numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
        if entry is not None:
            write_atomic(entry, lambda f: Image.fromarray(arr, "RGB").save(f, format="PNG"))
        return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)


# ------------------------------------------------------------------------------ run integration
def _entry_name(entry: Mapping) -> Optional[str]:
    others = entry.get("others") if isinstance(entry.get("others"), Mapping) else {}
    base = entry.get("_base_") if isinstance(entry.get("_base_"), Mapping) else {}
    return others.get("NAME", base.get("NAME"))


def attach_split_files(config: Mapping, run_dir: str) -> List[str]:
    """For every ``config.dataset.<split>`` entry of this dataset without a ``split_file``, set
    ``others.split_file = <run_dir>/split.json`` (call once the run directory exists and before
    its config.yaml is written, so that ``--test`` reuses the split). Returns the splits changed."""
    changed = []
    for split, entry in (config.get("dataset") or {}).items():
        if isinstance(entry, Mapping) and _entry_name(entry) == NAME and PointCloudFolder.bind_run_dir(entry, run_dir):
            changed.append(split)
    return changed


__all__ = ["PointCloudFolder", "attach_split_files", "scan_folder", "scan_entry", "check_entry", "points_spec",
           "stratified_split", "CloudCache", "resolve_cache_dir", "PARSE_COUNT", "bad_files_error"]
