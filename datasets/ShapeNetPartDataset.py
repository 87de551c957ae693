"""ShapeNetPart loader (``shapenetcore_partanno_segmentation_benchmark_v0_normal``) and its
category / part tables (released ``segmentation/dataset.py``).

Layout under ``root``::

    synsetoffset2category.txt                     16 lines "Airplane<TAB>02691156"; line = category id
    train_test_split/shuffled_train_file_list.json   ["shape_data/<synset>/<token>", ...]
    train_test_split/shuffled_val_file_list.json
    train_test_split/shuffled_test_file_list.json
    <synset>/<token>.txt                          rows "x y z nx ny nz part" (part: global id 0..49)
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from utils.cli import InputError

from .common import first_non_finite, pc_normalize
from .safe_io import open_regular

NUM_PARTS = 50
NUM_CATEGORIES = 16

# Category -> global part ids, in the order of synsetoffset2category.txt (= category index).
SEG_CLASSES: "OrderedDict[str, List[int]]" = OrderedDict([
    ("Airplane", [0, 1, 2, 3]), ("Bag", [4, 5]), ("Cap", [6, 7]), ("Car", [8, 9, 10, 11]),
    ("Chair", [12, 13, 14, 15]), ("Earphone", [16, 17, 18]), ("Guitar", [19, 20, 21]), ("Knife", [22, 23]),
    ("Lamp", [24, 25, 26, 27]), ("Laptop", [28, 29]), ("Motorbike", [30, 31, 32, 33, 34, 35]), ("Mug", [36, 37]),
    ("Pistol", [38, 39, 40]), ("Rocket", [41, 42, 43]), ("Skateboard", [44, 45, 46]), ("Table", [47, 48, 49]),
])
CATEGORIES: List[str] = list(SEG_CLASSES)


def category_part_mask(device=None) -> Tensor:
    """(16, 50) bool: which global parts belong to each category."""
    mask = torch.zeros(NUM_CATEGORIES, NUM_PARTS, dtype=torch.bool, device=device)
    for c, parts in enumerate(SEG_CLASSES.values()):
        mask[c, parts] = True
    return mask

LAYOUT = ("synsetoffset2category.txt, train_test_split/shuffled_{train,val,test}_file_list.json "
          "and <synset>/<token>.txt files with rows 'x y z nx ny nz part'")
SPLITS = {"train": ("train",), "val": ("val",), "trainval": ("train", "val"), "test": ("test",)}


class ShapeNetPartFormatError(InputError, ValueError):
    """The ShapeNetPart folder is missing or does not have the expected layout."""


def read_category_file(root: str) -> List[Tuple[str, str]]:
    """``synsetoffset2category.txt`` -> [(name, synset), ...] in file order (= category id)."""
    path = os.path.join(root, "synsetoffset2category.txt")
    if not os.path.isfile(path):
        raise ShapeNetPartFormatError(f"ShapeNetPart root '{root}' has no synsetoffset2category.txt; expected {LAYOUT}")
    cats = []
    with open(path, "rb") as f:
        text = f.read().decode("utf-8", errors="replace")
    for lineno, line in enumerate(text.split("\n"), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise ShapeNetPartFormatError(f"{path}:{lineno}: expected '<Name>\\t<synset>', got {line.rstrip()!r:.80}")
        cats.append((fields[0], fields[1]))
    names = [n for n, _ in cats]
    if names != CATEGORIES:
        raise ShapeNetPartFormatError(f"{path}: expected the 16 categories {CATEGORIES} in this order, got "
                                      f"{names!r:.300}")
    return cats


def read_split_file(root: str, split: str) -> List[Tuple[str, str]]:
    """``shuffled_<split>_file_list.json`` -> [(synset, token), ...]."""
    path = os.path.join(root, "train_test_split", f"shuffled_{split}_file_list.json")
    if not os.path.isfile(path):
        raise ShapeNetPartFormatError(f"ShapeNetPart root '{root}' has no {os.path.relpath(path, root)}; expected {LAYOUT}")
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)
    except (ValueError, RecursionError) as e:  # not JSON, not UTF-8, nested deeper than Python recurses
        raise ShapeNetPartFormatError(f"{path}: not valid UTF-8 JSON ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(entries, list):
        raise ShapeNetPartFormatError(f"{path}: expected a JSON list of 'shape_data/<synset>/<token>' strings")
    out = []
    for entry in entries:
        parts = entry.split("/") if isinstance(entry, str) else []
        if len(parts) != 3:
            raise ShapeNetPartFormatError(f"{path}: entry {entry!r:.80} is not 'shape_data/<synset>/<token>'")
        out.append((parts[1], parts[2]))
    return out


def load_shape_file(path: str) -> np.ndarray:
    """One ``<token>.txt`` -> float32 (N, 7) rows x y z nx ny nz part."""
    try:
        with open_regular(path, "ShapeNetPart shape file") as f:  # never blocks on a FIFO
            data = np.loadtxt(f, dtype=np.float32, ndmin=2)
    except (OSError, ValueError) as e:
        raise ShapeNetPartFormatError(f"{path}: could not read rows 'x y z nx ny nz part' ({str(e)[:200]})") from None
    if data.shape[1] != 7 or data.shape[0] == 0:
        raise ShapeNetPartFormatError(f"{path}: expected rows of 7 numbers 'x y z nx ny nz part', got shape {data.shape}")
    bad = first_non_finite(data[:, :6])
    if bad is not None:
        raise ShapeNetPartFormatError(f"{path}: row {bad[0]} has a non-finite value {data[bad]} (NaN, Inf, or beyond "
                                      f"float32)")
    parts = data[:, 6]
    if (parts < 0).any() or (parts >= NUM_PARTS).any() or (parts != np.round(parts)).any():
        raise ShapeNetPartFormatError(f"{path}: part labels must be integers in [0, {NUM_PARTS}), got {np.unique(parts)[:10]}")
    return data


class PartNormalDataset(Dataset):
    """ShapeNetPart shapes: ``(points (npoints, 3 or 6) float32, category (1,) int64, parts (npoints,) int64)``.

    ``split``: 'trainval' (training, as released), 'train', 'val' or 'test'. Each item samples
    ``npoints`` rows with replacement and normalises xyz to the unit sphere; ``normal_channel``
    keeps the normals as channels 3-5. ``class_choice`` restricts to some category names.
    Shapes are ordered by category (file order), then token.
    """

    def __init__(self, root: str, npoints: int = 2048, split: str = "trainval", class_choice: Optional[Sequence[str]] = None,
                 normal_channel: bool = False, cache: bool = True):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got '{split}'")
        if not os.path.isdir(root):
            raise ShapeNetPartFormatError(f"ShapeNetPart root '{root}' does not exist; expected a folder with {LAYOUT}")
        self.root = root
        self.npoints = npoints
        self.normal_channel = normal_channel
        self.cache: Optional[Dict[int, np.ndarray]] = {} if cache else None
        cats = read_category_file(root)
        self.cat = {name: synset for name, synset in cats}
        self.classes = {name: i for i, (name, _) in enumerate(cats)}
        if class_choice is not None:
            unknown = set(class_choice) - set(self.cat)
            if unknown:
                raise ValueError(f"class_choice has unknown categories {sorted(unknown)}; known: {CATEGORIES}")
        wanted = [name for name, _ in cats if class_choice is None or name in class_choice]
        synset_to_name = {synset: name for name, synset in cats}

        members = set()
        for s in SPLITS[split]:
            for synset, token in read_split_file(root, s):
                if synset not in synset_to_name:
                    raise ShapeNetPartFormatError(
                        f"{root}/train_test_split/shuffled_{s}_file_list.json: synset '{synset}' is not in synsetoffset2category.txt")
                members.add((synset, token))
        self.datapath: List[Tuple[str, str]] = []
        for name in wanted:
            synset = self.cat[name]
            for token in sorted(t for s, t in members if s == synset):
                path = os.path.join(root, synset, token + ".txt")
                if not os.path.isfile(path):
                    raise ShapeNetPartFormatError(f"'{path}' is listed in the {split} split but does not exist")
                self.datapath.append((name, path))
        if not self.datapath:
            raise ShapeNetPartFormatError(f"ShapeNetPart root '{root}': the '{split}' split lists no shapes")

    def __len__(self) -> int:
        return len(self.datapath)

    def __getitem__(self, index: int):
        name, path = self.datapath[index]
        if self.cache is not None and index in self.cache:
            data = self.cache[index]
        else:
            data = load_shape_file(path)
            if self.cache is not None:
                self.cache[index] = data
        points = data[:, 0:6] if self.normal_channel else data[:, 0:3]
        points = points.copy()
        points[:, 0:3] = pc_normalize(points[:, 0:3])
        choice = np.random.choice(len(data), self.npoints, replace=True)
        category = np.array([self.classes[name]], dtype=np.int64)
        return points[choice].astype(np.float32), category, data[choice, 6].astype(np.int64)
