"""edgecnn: int8 quantisation, PyTorch -> ONNX -> TFLite conversion without TensorFlow,
parity reports and benchmarks for small CNNs on CPU, CUDA and Raspberry Pi.

The public API lives in :mod:`edgecnn.api`; the ``edgecnn`` command is a thin layer over it.
"""

__version__ = "0.1.0"
