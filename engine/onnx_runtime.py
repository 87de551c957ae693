"""Prediction and features from an exported ONNX file on onnxruntime, with no PyTorch model built.

    from engine.onnx_runtime import OnnxPredictor
    predictor = OnnxPredictor.from_onnx("model.onnx")
    results = predictor.predict("new_files/")          # the engine.predict.Predictor API and CSV

The graph (``tools/export_onnx.py``) takes prepared clouds ``points`` (B, N, 3) float32, B and N
dynamic (N at least the model's patch count), and gives ``logits`` (B, classes) or ``features``
(B, 2C). It holds the model's own farthest point sampling to ``num_group`` centres, the kNN
grouping, the patch embedding and the transformer. The preparation outside it is the PyTorch
code of ``engine.predict`` / ``engine.features``: reading (``datasets.io``), normalising
(``pc_normalize``), FPS to ``npoints`` (``engine.finetune.fps_to``), voting
(``engine.finetune.vote_logits``).

An ONNX file is data to onnxruntime (no Python runs from it); before use its input and output
names, ranks and element types are checked, and its ``inter_mae`` metadata (class names,
preprocessing, the run's config: the model folder's ``config.json``, :mod:`utils.model_folder`)
is checked as a ``config.json`` is. Anything else is one line naming the file.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from engine.features import PointFeatureExtractor
from engine.predict import Predictor
from utils.cli import InputError
from utils.logger import print_log
from utils.model_folder import ModelFolderError, parse_folder_config

DEPLOY_EXTRA = "pip install -e '.[deploy]'"
INPUT_NAME = "points"
OUTPUT_NAMES = {"classification": "logits", "features": "features"}
METADATA_KEY = "inter_mae"   # the ONNX metadata_props entry holding the model folder's config.json
GRAPH_KEY = "inter_mae.graph"  # "classification" or "features": what the graph outputs
MAX_ONNX_BYTES = 2 << 30     # protobuf's limit for one file; the exporter writes no external data


class DeployDependencyError(InputError, ImportError):
    """An optional package of the ``[deploy]`` extra is missing; the message says what to install."""


class OnnxModelError(InputError, ValueError):
    """An ONNX file cannot be used as an Inter-MAE graph; the message names the file."""


def require(module: str, purpose: str):
    """``import module`` or a one-line :class:`DeployDependencyError` naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise DeployDependencyError(f"{purpose} needs the '{module}' package, which is not installed: "
                                    f"{DEPLOY_EXTRA}") from None


def is_onnx_path(path: Any) -> bool:
    return isinstance(path, (str, os.PathLike)) and str(path).lower().endswith(".onnx")


class OnnxGraph:
    """An exported graph on onnxruntime's CPU provider: ``run(points (B, N, 3)) -> (B, D)`` float32.

    ``meta`` is the checked ``inter_mae`` metadata (a model folder's ``config.json``), ``kind``
    ``classification`` or ``features``. ``threads``: onnxruntime's intra-op threads (default
    ``torch.get_num_threads()``, so ``OMP_NUM_THREADS`` sizes both runtimes alike)."""

    def __init__(self, path: str, threads: Optional[int] = None):
        ort = require("onnxruntime", f"running the ONNX file '{path}'")
        if not os.path.isfile(path):
            raise OnnxModelError(f"ONNX file '{path}' does not exist")
        size = os.path.getsize(path)
        if size > MAX_ONNX_BYTES:
            raise OnnxModelError(f"ONNX file '{path}' is {size} bytes; expected at most {MAX_ONNX_BYTES}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: the graph's optimisation notes are not the user's concern
        try:
            self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail / InvalidGraph / ... types
            first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
            raise OnnxModelError(f"ONNX file '{path}' could not be loaded by onnxruntime: {type(e).__name__}: "
                                 f"{first[:300]}") from None
        self.path = path
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME or len(inputs[0].shape) != 3 \
                or inputs[0].shape[2] != 3 or inputs[0].type != "tensor(float)":
            got = ", ".join(f"{i.name} {i.type} {i.shape}" for i in inputs)
            raise OnnxModelError(f"ONNX file '{path}': inputs [{got}]; expected one input '{INPUT_NAME}' "
                                 f"tensor(float) of shape (batch, points, 3) (written by tools/export_onnx.py)")
        wanted = set(OUTPUT_NAMES.values())
        if len(outputs) != 1 or outputs[0].name not in wanted or len(outputs[0].shape) != 2 \
                or outputs[0].type != "tensor(float)":
            got = ", ".join(f"{o.name} {o.type} {o.shape}" for o in outputs)
            raise OnnxModelError(f"ONNX file '{path}': outputs [{got}]; expected one output 'logits' or 'features' "
                                 f"tensor(float) of shape (batch, D) (written by tools/export_onnx.py)")
        props: Dict[str, str] = self.session.get_modelmeta().custom_metadata_map or {}
        if METADATA_KEY not in props:
            raise OnnxModelError(f"ONNX file '{path}' has no '{METADATA_KEY}' metadata (class names, preprocessing); "
                                 f"export it with tools/export_onnx.py")
        try:
            self.meta = parse_folder_config(props[METADATA_KEY], f"ONNX file '{path}' (metadata '{METADATA_KEY}')")
        except ModelFolderError as e:
            raise OnnxModelError(str(e)) from None
        self.kind = "classification" if outputs[0].name == "logits" else "features"
        if props.get(GRAPH_KEY, self.kind) != self.kind:
            raise OnnxModelError(f"ONNX file '{path}': metadata '{GRAPH_KEY}' is {props.get(GRAPH_KEY)!r} but the "
                                 f"output is '{outputs[0].name}'")
        width = outputs[0].shape[1]
        names = self.meta.get("class_names") or []
        if self.kind == "classification" and (not names or (isinstance(width, int) and width != len(names))):
            raise OnnxModelError(f"ONNX file '{path}': {len(names)} class names in its metadata but logits of width "
                                 f"{width}")
        self.dim = width if isinstance(width, int) else None

    def run(self, points: Union[np.ndarray, Tensor]) -> np.ndarray:
        """Prepared clouds (B, N, 3) -> the graph's output (B, D), float32."""
        if isinstance(points, Tensor):
            points = points.detach().cpu().numpy()
        pts = np.ascontiguousarray(points, dtype=np.float32)
        return self.session.run(None, {INPUT_NAME: pts})[0]

    def __call__(self, points: Tensor) -> Tensor:
        """The graph as a function of tensors (for ``engine.finetune.vote_logits``): (B, N, 3) -> (B, D)."""
        return torch.from_numpy(self.run(points))

    @property
    def preprocessing(self) -> Dict[str, Any]:
        return dict(self.meta["preprocessing"])


class OnnxPredictor(Predictor):
    """:class:`engine.predict.Predictor` whose model is an :class:`OnnxGraph`: the same reading,
    preparation, batching, voting and CSV; only the model call runs on onnxruntime."""

    def __init__(self, graph: OnnxGraph, source: str):  # noqa: D107 - no torch model, no device to move it to
        if graph.kind != "classification":
            raise OnnxModelError(f"ONNX file '{source}' outputs features, not logits; predict needs a classifier "
                                 f"(export a fine-tuned checkpoint with tools/export_onnx.py, without --features)")
        prep = graph.preprocessing
        self.graph = graph
        self.model = None
        self.device = torch.device("cpu")
        self.class_names = list(graph.meta["class_names"])
        self.npoints, self.n_points, self.sample_seed = prep["npoints"], prep["N_POINTS"], prep["sample_seed"]
        self.source = source

    @classmethod
    def from_onnx(cls, path: str, threads: Optional[int] = None, logger=None) -> "OnnxPredictor":
        predictor = cls(OnnxGraph(path, threads), path)
        print_log(f"[predict] {path} (onnxruntime {_ort_version()}, {predictor.graph.session.get_providers()[0]}): "
                  f"{len(predictor.class_names)} classes; {predictor.n_points} points per file (sample_seed "
                  f"{predictor.sample_seed}), FPS to {predictor.npoints}", logger=logger)
        return predictor

    @torch.no_grad()
    def logits(self, clouds: Sequence[np.ndarray], vote: int = 0) -> Tensor:
        """As :meth:`Predictor.logits`, the model call on onnxruntime."""
        from engine.finetune import fps_to, vote_logits

        pts = torch.from_numpy(np.stack(clouds).astype(np.float32))
        if vote:
            return vote_logits(self.graph, pts, self.npoints, int(vote)).float()
        return self.graph(fps_to(pts, self.npoints)).float()


class OnnxFeatureExtractor(PointFeatureExtractor):
    """:class:`engine.features.PointFeatureExtractor` on an exported ``features`` graph: the same
    preparation (normalise, FPS to ``npoints``), the encoder on onnxruntime."""

    def __init__(self, graph: OnnxGraph, npoints: int, source: str):  # noqa: D107
        if graph.kind != "features":
            raise OnnxModelError(f"ONNX file '{source}' outputs logits, not features; export the features graph "
                                 f"with tools/export_onnx.py --features")
        self.graph = graph
        self.encoder = None
        self.device = torch.device("cpu")
        self.npoints = int(npoints)
        self.source = source
        model = graph.meta["config"]["model"]
        width = model.get("trans_dim", (model.get("transformer_config") or {}).get("trans_dim"))
        self._dim = graph.dim or 2 * int(width)

    @property
    def dim(self) -> int:
        return self._dim

    @torch.no_grad()
    def features(self, points: Tensor) -> Tensor:
        """Prepared points (B, n, 3) -> (B, 2C) float32 on the CPU."""
        return self.graph(points.float())


def load_onnx_features(path: str, npoints: int, threads: Optional[int] = None, logger=None) -> OnnxFeatureExtractor:
    """The features graph of ``path`` as a :class:`OnnxFeatureExtractor` with ``npoints`` points per cloud."""
    extractor = OnnxFeatureExtractor(OnnxGraph(path, threads), npoints, path)
    print_log(f"[features] {path} (onnxruntime {_ort_version()}): {npoints} points per cloud; feature width "
              f"{extractor.dim}", logger=logger)
    return extractor


def _ort_version() -> str:
    return getattr(require("onnxruntime", "onnxruntime"), "__version__", "?")


def metadata_text(meta: Dict[str, Any]) -> str:
    """The ``inter_mae`` metadata value: the folder config as compact JSON."""
    return json.dumps(meta, separators=(",", ":"), allow_nan=False)


__all__ = ["DEPLOY_EXTRA", "INPUT_NAME", "OUTPUT_NAMES", "METADATA_KEY", "GRAPH_KEY", "DeployDependencyError",
           "OnnxModelError", "require", "is_onnx_path", "OnnxGraph", "OnnxPredictor", "OnnxFeatureExtractor",
           "load_onnx_features", "metadata_text"]
