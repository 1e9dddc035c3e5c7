"""What targets share but is not a target: the board-side runner, SSH, nvidia-smi readings and
onnxruntime's device-bound sessions."""
