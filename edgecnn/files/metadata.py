"""The metadata keys edgecnn writes into the files it makes, and reads back.

They are part of the file format: a file converted by one version is read by the next, so a key
never changes its spelling (ONNX ``metadata_props`` use dots, TFLite metadata underscores).
"""

from __future__ import annotations

# ONNX metadata_props
ONNX_CARD = "edgecnn.card"  # the model card, JSON (edgecnn.files.card.ModelCard)
ONNX_LABELS = "edgecnn.labels"  # class labels, JSON list (for other tools: the card has them)
ONNX_PREPROCESSING = "edgecnn.preprocessing"  # the card's input spec, JSON
ONNX_QUANTIZATION = "edgecnn.quantization"  # how a QDQ model was calibrated, one line
ONNX_INT8_ENCODING = "edgecnn.int8_encoding"  # the int8 encoding stored (converters/qdq.py)
ONNX_ONNXRUNTIME_NOTES = "edgecnn.onnxruntime"  # what that encoding means on onnxruntime

# TFLite metadata buffers
TFLITE_CARD = "edgecnn_card"  # the model card, JSON bytes
TFLITE_QDQ_FINGERPRINT = "edgecnn_qdq_fingerprint"  # the QDQ model an int8 file was lowered from
TFLITE_INPUT_QUANTIZATION = "edgecnn_input_quantization"  # scale and zero point of int8 input
TFLITE_LAYOUTS = "edgecnn_layouts"  # NHWC tensors' ONNX names and permutations (layer check)
