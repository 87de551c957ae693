"""Reading the released pickle data formats without running what a pickle asks for.

The ModelNet40 caches ``modelnet40_{train,test}_{N}pts_fps.dat`` (``[list of (N, 6) float32
arrays, list of (1,) int32 labels]``) and the few-shot splits ``{way}way_{shot}shot/{fold}.pkl``
(``{'train': [(points, label, class), ...], 'test': [...]}``) are pickles, and unpickling can call
any function. :func:`load_data_pickle` unpickles with a restricted unpickler that builds only plain
Python values (lists, tuples, dicts, sets, ints, floats, strings, bytes, None) and NumPy arrays /
scalars of numeric dtypes (bool, int, uint, float), through the allowlist of checkpoints
(:data:`utils.checkpoint.NUMPY_SAFE_GLOBALS`) plus NumPy's protocol-5 array constructor; any other
global is refused before it is called, in one line naming the file and the global
(:class:`UntrustedDataError`). Array sizes are checked against :mod:`utils.limits` before they are
allocated.

``tools/convert_pickles.py`` converts such a file to ``.npz`` beside it (:func:`npz_twin`), which
the loaders read instead when present: no pickle at all.
"""
from __future__ import annotations

import io
import math
import os
import pickle
import stat
import zlib
from typing import Any, Dict, Tuple

import numpy as np

from utils.checkpoint import NUMPY_SAFE_GLOBALS, _resolve_global
from utils.limits import LimitError, check_array_bytes

from .common import DatasetFormatError

# NumPy's array constructor of pickle protocol 5 (Python 3.14's default): frombuffer + reshape.
PROTOCOL5_GLOBALS = ("numpy._core.numeric._frombuffer", "numpy.core.numeric._frombuffer")
# How protocol 2 (Python 2's highest, NumPy's arrays in such files) writes bytes: _codecs.encode(str, 'latin1').
BYTES_GLOBAL = "_codecs.encode"
DATA_SAFE_GLOBALS = NUMPY_SAFE_GLOBALS + PROTOCOL5_GLOBALS + (BYTES_GLOBAL,)
NUMERIC_KINDS = "biuf"


class UntrustedDataError(DatasetFormatError):
    """A data pickle would call or build something outside the allowlist (one line: file and global)."""


def _check_bytes(nbytes: int, where: str, stored: int = -1) -> None:
    """:func:`utils.limits.check_array_bytes` as a :class:`DatasetFormatError` (the loaders' one-line type)."""
    try:
        check_array_bytes(nbytes, where, stored)
    except LimitError as e:
        raise DatasetFormatError(str(e)) from None


def _numeric_dtype(dtype: Any, where: str) -> np.dtype:
    if not isinstance(dtype, np.dtype) or dtype.kind not in NUMERIC_KINDS or dtype.fields is not None \
            or dtype.subdtype is not None:
        raise UntrustedDataError(f"{where}: holds a NumPy array of dtype {dtype!r}; only numeric arrays "
                                 f"(bool, int, uint, float) load safely")
    return dtype


class _ArrayClass:
    """Stands for ``numpy.ndarray`` inside the pickle: passed to ``_reconstruct``, never called."""


def _guarded(name: str, where: str) -> Any:
    """The object a pickle gets for the allowed global ``name``: NumPy's own function, wrapped so that
    only numeric dtypes and declared sizes within :mod:`utils.limits` are built."""
    if name == BYTES_GLOBAL:
        def encode(text, encoding="utf-8", errors="strict"):
            if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
                raise UntrustedDataError(f"{where}: calls _codecs.encode with {encoding!r}; only latin1 bytes load")
            return text.encode("latin1")
        return encode
    real = _resolve_global(name)
    short = name.rsplit(".", 1)[-1]
    if short == "ndarray":
        return _ArrayClass
    if short == "dtype":
        def dtype(spec, align=False, copy=False):
            if not isinstance(spec, str):
                raise UntrustedDataError(f"{where}: a NumPy dtype built from {type(spec).__name__}; expected a type code")
            return _numeric_dtype(real(spec, align, copy), where)
        return dtype
    if short == "_reconstruct":
        def reconstruct(cls, shape, code):
            if cls is not _ArrayClass or tuple(shape) != (0,):  # ndarray.__reduce__ writes exactly this
                raise UntrustedDataError(f"{where}: an unusual NumPy array constructor call; refused")
            return real(np.ndarray, (0,), code)
        return reconstruct
    if short == "scalar":
        def scalar(dtype, data=None):
            return real(_numeric_dtype(dtype, where), data) if data is not None else real(_numeric_dtype(dtype, where))
        return scalar
    if short == "_frombuffer":
        def frombuffer(buf, dtype, shape, order):
            dtype = _numeric_dtype(dtype, where)
            _check_bytes(math.prod(int(s) for s in shape) * dtype.itemsize, f"{where}: an array {tuple(shape)}")
            return real(buf, dtype, shape, order)
        return frombuffer
    if isinstance(real, type) and issubclass(real, np.dtype):  # dtype classes: never called by a pickle
        def refused(*args, **kwargs):
            raise UntrustedDataError(f"{where}: calls {name}; refused")
        return refused
    raise UntrustedDataError(f"{where}: unpickling it would call or build {name}")


class _RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` admits only :data:`DATA_SAFE_GLOBALS` (guarded)."""

    def __init__(self, file, where: str):
        super().__init__(file, encoding="latin1")  # latin1: NumPy arrays of Python 2 pickles
        self.where = where
        self._cache: Dict[str, Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        full = f"{module}.{name}"
        if full not in DATA_SAFE_GLOBALS:
            raise UntrustedDataError(f"{self.where} is refused by the safe load: unpickling it would call or build "
                                     f"{full} (only lists, tuples, dicts, numbers, strings and numeric NumPy "
                                     f"arrays load); convert trusted files with tools/convert_pickles.py")
        if full not in self._cache:
            self._cache[full] = _guarded(full, self.where)
        return self._cache[full]

    def persistent_load(self, pid: Any) -> Any:
        raise UntrustedDataError(f"{self.where}: a persistent id {str(pid)[:40]!r}; not a data pickle")


def open_regular(path: str, what: str = "file"):
    """Open ``path`` for reading in binary mode if it is a regular file (never blocking on a FIFO or a
    device): ``DatasetFormatError`` naming it otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise DatasetFormatError(f"{what} '{path}' cannot be opened: {e.strerror or e}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise DatasetFormatError(f"{what} '{path}' is not a regular file (a FIFO, device or folder); refused")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _checked_values(node: Any, where: str, depth: int = 0) -> None:
    """Every array of the unpickled value is numeric (the dtype guard covers construction; this
    covers a dtype changed by a BUILD)."""
    if depth > 50:
        raise UntrustedDataError(f"{where}: nested more than 50 levels deep; not a data file")
    if isinstance(node, np.ndarray) or isinstance(node, np.generic):
        _numeric_dtype(node.dtype, where)
    elif isinstance(node, (list, tuple, set, frozenset)):
        for item in node:
            if isinstance(item, (list, tuple, dict, set, frozenset)):
                _checked_values(item, where, depth + 1)
            elif isinstance(item, (np.ndarray, np.generic)):
                _numeric_dtype(item.dtype, where)
    elif isinstance(node, dict):
        for key, item in node.items():
            _checked_values(key, where, depth + 1)
            _checked_values(item, where, depth + 1)


def load_data_pickle(path: str, what: str) -> Any:
    """Unpickle the data file ``path`` (``what``: how messages name it, e.g. "ModelNet cache")
    through the restricted unpickler; refusals are :class:`UntrustedDataError`, a damaged file a
    :class:`DatasetFormatError`, both naming the file."""
    where = f"{what} '{path}'"
    with open_regular(path, what) as f:
        try:
            data = _RestrictedUnpickler(io.BufferedReader(f, 1 << 20), where).load()
        except DatasetFormatError:
            raise
        except MemoryError:
            raise DatasetFormatError(f"{where} could not be unpickled: out of memory") from None
        except Exception as e:  # truncated or foreign file
            first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
            raise DatasetFormatError(f"{where} could not be unpickled: {type(e).__name__}: {first[:200]}") from None
    _checked_values(data, where)
    return data


# ---------------------------------------------------------------------------------- .npz twins
def npz_twin(path: str) -> str:
    """The ``.npz`` conversion of a pickle data file: same folder and stem."""
    return os.path.splitext(path)[0] + ".npz"


def npz_member_header(zf, member: str) -> Tuple[Tuple[int, ...], np.dtype, int, int]:
    """``(shape, dtype, declared bytes, stored bytes or -1)`` of the ``.npy`` member ``member`` of the
    open zip ``zf``, from the zip directory and the npy header only (nothing else is decompressed).
    ValueError for a header that is not a numeric array's or declares more than the member holds;
    stored is the compressed size of a compressed member (-1: stored uncompressed)."""
    import zipfile

    info = zf.getinfo(member)
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        # zipfile decompresses bzip2 / lzma without an output bound (a 1 KB member can fill the memory);
        # np.savez / np.savez_compressed write stored / deflated members only
        raise ValueError(f"member '{member}' is compressed with method {info.compress_type}; expected stored or "
                         f"deflate (np.savez / np.savez_compressed)")
    check_array_bytes(info.file_size, f"member '{member}'",
                      -1 if info.compress_type == zipfile.ZIP_STORED else info.compress_size)
    with zf.open(info) as m:
        shape, dtype, header_len = npy_header(m)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes != info.file_size - header_len:
        raise ValueError(f"member '{member}' declares {shape} {dtype} ({nbytes} bytes) but holds "
                         f"{info.file_size - header_len} bytes")
    return shape, dtype, nbytes, (-1 if info.compress_type == zipfile.ZIP_STORED else info.compress_size)


def npy_header(f) -> Tuple[Tuple[int, ...], np.dtype, int]:
    """(shape, dtype, header length) of an ``.npy`` stream positioned at its start; ValueError unless
    it is a numeric array (versions 1.0 / 2.0; no pickles, no structured dtypes)."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    if dtype.kind not in "biuf" or dtype.fields is not None or dtype.subdtype is not None:
        raise ValueError(f"array of dtype {dtype}, expected a numeric (N, 3) array")
    return tuple(int(s) for s in shape), dtype, f.tell()


def read_npz_arrays(path: str, what: str, names) -> Dict[str, np.ndarray]:
    """The arrays ``names`` of an ``.npz`` (no pickles; each member's declared size checked before it
    is read, :func:`datasets.io.npz_member_header`)."""
    import zipfile

    where = f"{what} '{path}'"
    out = {}
    with open_regular(path, what) as f:
        try:
            with zipfile.ZipFile(f) as zf:
                for name in names:
                    member = name + ".npy"
                    if member not in zf.namelist():
                        raise DatasetFormatError(f"{where}: no array '{name}' (holds "
                                                 f"{sorted(n[:-4] for n in zf.namelist())})")
                    try:
                        shape, dtype, nbytes, stored = npz_member_header(zf, member)
                    except LimitError as e:
                        raise DatasetFormatError(f"{where}: {e}") from None
                    _check_bytes(nbytes, f"{where}: array '{name}' {shape} {dtype}", stored)
                    with zf.open(member) as m:
                        out[name] = np.lib.format.read_array(m, allow_pickle=False)
        except DatasetFormatError:
            raise
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, zlib.error) as e:  # zlib: a damaged deflate stream
            raise DatasetFormatError(f"{where} could not be read: {type(e).__name__}: {e}") from None
    return out


def write_npz(path: str, arrays: Dict[str, np.ndarray]) -> None:
    """``np.savez`` (uncompressed) of ``arrays`` at ``path``, atomically."""
    from utils.checkpoint import atomic_write

    atomic_write(path, lambda f: np.savez(f, **arrays))



# ---------------------------------------------------------------------------------------- HDF5
def open_h5(path: str, what: str):
    """``h5py.File(path, 'r')`` of a regular file (never a FIFO); DatasetFormatError naming it."""
    import h5py

    open_regular(path, what).close()
    try:
        return h5py.File(path, "r")
    except OSError as e:  # truncated or not HDF5
        raise DatasetFormatError(f"{path}: not a readable HDF5 file (truncated or malformed?): {e}") from None


# What h5py raises on a damaged file beyond OSError (a bad object header, a heap or B-tree signature,
# an address past the end of the file): RuntimeError, KeyError, ValueError, TypeError.
H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError)


def read_h5_dataset(h5, key: str, path: str) -> np.ndarray:
    """The numeric dataset ``key`` of the open HDF5 file ``h5`` (from ``path``), read only after its
    declared shape and stored size pass :mod:`utils.limits`; a link to another file, external
    storage (raw data in other files, which could be any path or a FIFO), a virtual dataset and a
    non-numeric dtype are refused, each in one line naming the file and the key; so is a file whose
    structure h5py cannot read (:data:`H5_ERRORS`)."""
    try:
        return _read_h5_dataset(h5, key, path)
    except DatasetFormatError:
        raise
    except H5_ERRORS as e:
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
        raise DatasetFormatError(f"HDF5 file '{path}': dataset '{key}' cannot be read (truncated or malformed?): "
                                 f"{type(e).__name__}: {first[:200]}") from None


def _read_h5_dataset(h5, key: str, path: str) -> np.ndarray:
    import h5py

    where = f"HDF5 file '{path}': dataset '{key}'"
    if key not in h5:
        raise DatasetFormatError(f"HDF5 file '{path}': key '{key}' missing (found {sorted(h5.keys())})")
    link = h5.get(key, getlink=True)
    if isinstance(link, h5py.ExternalLink):
        raise DatasetFormatError(f"{where} is a link to another file ({link.filename}); refused")
    ds = h5[key]
    if not isinstance(ds, h5py.Dataset):
        raise DatasetFormatError(f"{where} is a {type(ds).__name__}, expected a dataset")
    if ds.is_virtual:
        raise DatasetFormatError(f"{where} is a virtual dataset (data in other files); refused")
    if ds.external:
        raise DatasetFormatError(f"{where} keeps its data in external files ({ds.external[0][0]!r}, ...); refused")
    if ds.dtype.kind not in NUMERIC_KINDS or ds.dtype.fields is not None or ds.dtype.subdtype is not None:
        raise DatasetFormatError(f"{where} has dtype {ds.dtype}, expected numbers")
    nbytes = math.prod(ds.shape or ()) * ds.dtype.itemsize
    _check_bytes(nbytes, f"{where} {ds.shape} {ds.dtype}", int(ds.id.get_storage_size()))
    return ds[()]
