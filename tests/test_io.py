"""PLY reading/writing against hand-built files (ascii, binary little / big endian)."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from datasets.io import read_ply, write_ply

XYZ = np.array([[0.5, -1.25, 2.0], [3.0, 4.5, -6.0], [-0.125, 0.0, 7.75]], dtype=np.float32)
FACE_HEADER = "element face 1\nproperty list uchar int vertex_indices\n"


def _header(fmt: str, vertex_props: str, extra: str = "") -> bytes:
    return (f"ply\nformat {fmt} 1.0\ncomment made by hand\nelement vertex 3\n{vertex_props}{extra}end_header\n").encode()


def test_ascii_with_normals_colour_and_faces(tmp_path):
    props = ("property float x\nproperty float y\nproperty float z\nproperty float nx\nproperty float ny\n"
             "property float nz\nproperty uchar red\n")
    body = "".join(f"{x} {y} {z} 0 0 1 {200 + i}\n" for i, (x, y, z) in enumerate(XYZ)) + "3 0 1 2\n"
    path = tmp_path / "a.ply"
    path.write_bytes(_header("ascii", props, FACE_HEADER) + body.encode())
    out = read_ply(str(path))
    assert out.dtype == np.float32 and out.shape == (3, 3)
    np.testing.assert_array_equal(out, XYZ)


def test_binary_little_endian_mixed_types_colour_and_faces(tmp_path):
    # x double, red uchar between coordinates, y float, z int16 (integer coordinates), then a face.
    props = "property double x\nproperty uchar red\nproperty float y\nproperty short z\n"
    xyz = np.array([[0.5, -1.25, 2], [3.0, 4.5, -6], [-0.125, 0.0, 7]], dtype=np.float64)
    body = b"".join(struct.pack("<dBfh", x, 7, y, int(z)) for x, y, z in xyz)
    body += struct.pack("<Biii", 3, 0, 1, 2)
    path = tmp_path / "le.ply"
    path.write_bytes(_header("binary_little_endian", props, FACE_HEADER) + body)
    np.testing.assert_array_equal(read_ply(str(path)), xyz.astype(np.float32))


def test_binary_big_endian_sized_type_names(tmp_path):
    props = ("property float64 x\nproperty float64 y\nproperty float64 z\nproperty float32 nx\n"
             "property float32 ny\nproperty float32 nz\nproperty uint8 alpha\n")
    body = b"".join(struct.pack(">dddfffB", x, y, z, 0, 1, 0, 255) for x, y, z in XYZ)
    body += struct.pack(">Biii", 3, 2, 1, 0)
    path = tmp_path / "be.ply"
    path.write_bytes(_header("binary_big_endian", props, FACE_HEADER) + body)
    np.testing.assert_array_equal(read_ply(str(path)), XYZ)


def test_binary_fixed_size_element_before_vertex(tmp_path):
    head = (b"ply\nformat binary_little_endian 1.0\nelement camera 2\nproperty float f\nproperty uchar k\n"
            b"element vertex 3\nproperty float x\nproperty float y\nproperty float z\nend_header\n")
    body = struct.pack("<fBfB", 1.0, 1, 2.0, 2) + XYZ.astype("<f4").tobytes()
    path = tmp_path / "cam.ply"
    path.write_bytes(head + body)
    np.testing.assert_array_equal(read_ply(str(path)), XYZ)


@pytest.mark.parametrize("binary", [True, False])
def test_write_read_roundtrip_with_normals(tmp_path, binary):
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(50, 3)).astype(np.float32)
    nrm = rng.normal(size=(50, 3)).astype(np.float32)
    path = tmp_path / "rt.ply"
    write_ply(str(path), xyz, nrm, binary=binary)
    out = read_ply(str(path))
    if binary:
        np.testing.assert_array_equal(out, xyz)
        raw = path.read_bytes()
        head = raw[: raw.index(b"end_header\n") + len(b"end_header\n")]
        assert b"format binary_little_endian 1.0" in head and b"property float nz" in head
        assert len(raw) - len(head) == 50 * 6 * 4
        np.testing.assert_array_equal(np.frombuffer(raw[len(head):], "<f4").reshape(50, 6)[:, 3:], nrm)
    else:
        np.testing.assert_allclose(out, xyz, atol=1e-6)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.ply"):
        read_ply(str(tmp_path / "missing.ply"))
    bad = tmp_path / "bad.ply"
    bad.write_bytes(b"OFF\n3 0 0\n")
    with pytest.raises(ValueError, match="bad.ply.*ply"):
        read_ply(str(bad))
    trunc = tmp_path / "trunc.ply"
    trunc.write_bytes(_header("binary_little_endian", "property float x\nproperty float y\nproperty float z\n")
                      + XYZ.tobytes()[:20])
    with pytest.raises(ValueError, match="trunc.ply.*truncated"):
        read_ply(str(trunc))
    noz = tmp_path / "noz.ply"
    noz.write_bytes(_header("ascii", "property float x\nproperty float y\n") + b"1 2\n3 4\n5 6\n")
    with pytest.raises(ValueError, match=r"noz.ply.*\['z'\]"):
        read_ply(str(noz))
    noend = tmp_path / "noend.ply"
    noend.write_bytes(b"ply\nformat ascii 1.0\nelement vertex 1\n")
    with pytest.raises(ValueError, match="end_header"):
        read_ply(str(noend))
