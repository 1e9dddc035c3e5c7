"""Conversion steps, one module each: PyTorch -> ONNX, ONNX -> int8 QDQ ONNX, ONNX -> TFLite."""
