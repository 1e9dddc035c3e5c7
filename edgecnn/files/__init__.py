"""Reading and guarding what users hand us: model files (PyTorch, ONNX, TFLite), data, cards.

The bottom layer: every check on a hostile file happens here, before a runtime sees it, and
outputs are written atomically (:mod:`edgecnn.files.outputs`). Nothing here imports a runtime.
"""
