"""Point-cloud file I/O: PLY vertex reading/writing (ascii and binary, both endiannesses).

Only the ``vertex`` element's ``x, y, z`` are returned by :func:`read_ply`; other vertex
properties (normals, colours, ...) and other elements (faces, edges) are skipped.
"""
from __future__ import annotations

import os
from typing import List, Optional, Tuple

import numpy as np

from utils.checkpoint import atomic_write

__all__ = ["read_ply", "write_ply", "PLY_TYPES"]

# PLY scalar type names (both the classic and the sized spelling) -> numpy type code.
PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_FORMATS = {"ascii": "", "binary_little_endian": "<", "binary_big_endian": ">"}


class _Element:
    """One ``element`` of a PLY header: name, count, and (name, type, list count type or None) props."""

    def __init__(self, name: str, count: int):
        self.name = name
        self.count = count
        self.props: List[Tuple[str, str, Optional[str]]] = []

    @property
    def has_list(self) -> bool:
        return any(p[2] is not None for p in self.props)

    def dtype(self, endian: str) -> np.dtype:
        return np.dtype([(name, endian + PLY_TYPES[typ]) for name, typ, _ in self.props])


def _parse_header(path: str, f) -> Tuple[str, List[_Element]]:
    magic = f.readline()
    if magic.strip() != b"ply":
        raise ValueError(f"{path}: not a PLY file (expected the first line 'ply', got {magic[:20]!r})")
    fmt, elements = None, []
    while True:
        line = f.readline()
        if not line:
            raise ValueError(f"{path}: PLY header has no 'end_header' line")
        words = line.decode("ascii", errors="replace").split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        key = words[0]
        if key == "end_header":
            break
        if key == "format":
            if len(words) < 3 or words[1] not in _FORMATS:
                raise ValueError(f"{path}: unsupported PLY format line {line.strip()!r}; expected "
                                 f"'format ascii|binary_little_endian|binary_big_endian 1.0'")
            fmt = words[1]
        elif key == "element":
            if len(words) != 3 or not words[2].isdigit():
                raise ValueError(f"{path}: malformed PLY element line {line.strip()!r}; expected 'element <name> <count>'")
            elements.append(_Element(words[1], int(words[2])))
        elif key == "property":
            if not elements:
                raise ValueError(f"{path}: PLY 'property' line before any 'element' line")
            if len(words) == 5 and words[1] == "list":
                if words[2] not in PLY_TYPES or words[3] not in PLY_TYPES:
                    raise ValueError(f"{path}: unknown PLY type in {line.strip()!r}; expected one of {sorted(PLY_TYPES)}")
                elements[-1].props.append((words[4], words[3], words[2]))
            elif len(words) == 3 and words[1] in PLY_TYPES:
                elements[-1].props.append((words[2], words[1], None))
            else:
                raise ValueError(f"{path}: malformed PLY property line {line.strip()!r}; expected "
                                 f"'property <type> <name>' with a type in {sorted(PLY_TYPES)}")
        else:
            raise ValueError(f"{path}: unexpected PLY header line {line.strip()!r}")
    if fmt is None:
        raise ValueError(f"{path}: PLY header has no 'format' line")
    return fmt, elements


def _finite(xyz: np.ndarray, path: str) -> np.ndarray:
    """``xyz``, or a ValueError naming the file and the first vertex with a NaN / Inf coordinate."""
    finite = np.isfinite(xyz).all(axis=1)
    if not finite.all():
        i = int(np.argmin(finite))
        raise ValueError(f"{path}: vertex {i} has a non-finite coordinate {xyz[i].tolist()}")
    return xyz


def read_ply(path: str) -> np.ndarray:
    """Read the vertex positions of a PLY file.

    Args:
        path: ``.ply`` file, ``format ascii 1.0``, ``binary_little_endian 1.0`` or
            ``binary_big_endian 1.0``; vertex properties of any PLY scalar type.
    Returns:
        (N, 3) float32 array of the vertex ``x, y, z``.
    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a PLY file with a vertex element holding x, y, z.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"PLY file '{path}' does not exist")
    with open(path, "rb") as f:
        fmt, elements = _parse_header(path, f)
        names = [e.name for e in elements]
        if "vertex" not in names:
            raise ValueError(f"{path}: PLY header has no 'element vertex <count>'")
        vertex = elements[names.index("vertex")]
        prop_names = [p[0] for p in vertex.props]
        missing = [k for k in ("x", "y", "z") if k not in prop_names]
        if missing:
            raise ValueError(f"{path}: PLY vertex element lacks properties {missing}; expected x, y, z")
        if vertex.has_list:
            raise ValueError(f"{path}: list properties in the PLY vertex element are not supported")
        before = elements[: names.index("vertex")]
        if fmt == "ascii":
            body = f.read().decode("ascii", errors="replace").splitlines()
            body = [ln for ln in body if ln.strip()]
            start = sum(e.count for e in before)
            lines = body[start: start + vertex.count]
            if len(lines) != vertex.count:
                raise ValueError(f"{path}: expected {vertex.count} vertex lines, found {len(lines)}")
            try:
                values = np.array(" ".join(lines).split(), dtype=np.float64)
            except ValueError:
                raise ValueError(f"{path}: non-numeric value in the PLY vertex lines") from None
            if values.size != vertex.count * len(vertex.props):
                raise ValueError(f"{path}: expected {len(vertex.props)} values on each of {vertex.count} vertex lines")
            values = values.reshape(vertex.count, len(vertex.props))
            cols = [prop_names.index(k) for k in ("x", "y", "z")]
            return _finite(values[:, cols].astype(np.float32), path)
        endian = _FORMATS[fmt]
        for e in before:
            if e.has_list:
                raise ValueError(f"{path}: element '{e.name}' with list properties precedes 'vertex'; not supported")
            f.seek(e.count * e.dtype(endian).itemsize, os.SEEK_CUR)
        dtype = vertex.dtype(endian)
        raw = f.read(vertex.count * dtype.itemsize)
        if len(raw) != vertex.count * dtype.itemsize:
            raise ValueError(f"{path}: truncated PLY: expected {vertex.count} vertices of {dtype.itemsize} bytes, "
                             f"found {len(raw)} bytes")
        data = np.frombuffer(raw, dtype=dtype, count=vertex.count)
        return _finite(np.stack([data["x"], data["y"], data["z"]], axis=1).astype(np.float32), path)


def write_ply(path: str, xyz: np.ndarray, normals: Optional[np.ndarray] = None, binary: bool = True) -> None:
    """Write points (and optional normals) as PLY vertices, atomically (temp file + ``os.replace``).

    Args:
        path: output ``.ply`` path; its folder must exist.
        xyz: (N, 3) points; written as float32 ``x y z``.
        normals: optional (N, 3); written as float32 ``nx ny nz``.
        binary: ``binary_little_endian 1.0`` if True, else ``ascii 1.0``.
    """
    xyz = np.asarray(xyz, dtype=np.float32)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"write_ply('{path}'): expected xyz of shape (N, 3), got {xyz.shape}")
    names = ["x", "y", "z"]
    cols = [xyz]
    if normals is not None:
        normals = np.asarray(normals, dtype=np.float32)
        if normals.shape != xyz.shape:
            raise ValueError(f"write_ply('{path}'): normals shape {normals.shape} != xyz shape {xyz.shape}")
        names += ["nx", "ny", "nz"]
        cols.append(normals)
    data = np.concatenate(cols, axis=1)
    header = "ply\nformat {} 1.0\nelement vertex {}\n{}end_header\n".format(
        "binary_little_endian" if binary else "ascii", len(data), "".join(f"property float {n}\n" for n in names))
    def write(f):
        f.write(header.encode("ascii"))
        if binary:
            f.write(np.ascontiguousarray(data, dtype="<f4").tobytes())
        else:
            np.savetxt(f, data, fmt="%.6f")

    atomic_write(path, write)
