"""onnxruntime on one GPU execution provider with its input and outputs on the device."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecnn.errors import TargetUnavailableError
from edgecnn.quiet import native_stderr_captured, onnxruntime_log_severity, quiet


class DeviceBoundOnnx:
    """onnxruntime on one execution provider, its input and outputs kept on the device by
    IOBinding: a row times the model, not PCIe copies (as the PyTorch rows do), and
    ``run_with_iobinding`` returns when the provider's stream is done.

    Fallback is off, and the provider is checked after the first run: onnxruntime otherwise
    drops to another provider when one fails (TensorRT builds its engine on the first run) and
    the row would time the wrong thing under the right name."""

    def __init__(self, path: Path, provider: str, options: dict[str, str], x: np.ndarray,
                 device: str = "cuda") -> None:
        import onnxruntime as ort

        self.provider = provider
        settings = ort.SessionOptions()
        settings.log_severity_level = onnxruntime_log_severity()
        try:  # a provider that fails to load prints pages to stdout and fd 2: one line instead
            with quiet(stdout=True), native_stderr_captured() as log:
                self.session = ort.InferenceSession(str(path), settings,
                                                    providers=[(provider, options)])
        except Exception as exc:  # onnxruntime's Fail/InvalidArgument/EPFail types
            raise TargetUnavailableError(f"onnxruntime:{provider}: cannot load {path.name} "
                                         f"({str(exc).splitlines()[0][:200]})") from None
        self.session.disable_fallback()
        self.check_provider(load_failure_reason("".join(log)))
        self.binding = self.session.io_binding()
        value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(x, np.float32), device, 0)
        self.binding.bind_ortvalue_input(self.session.get_inputs()[0].name, value)
        for output in self.session.get_outputs():
            self.binding.bind_output(output.name, device, 0)

    def check_provider(self, why: str = "") -> None:
        active = self.session.get_providers()
        if not active or active[0] != self.provider:
            raise TargetUnavailableError(
                f"onnxruntime:{self.provider}: onnxruntime runs on {', '.join(active) or 'none'}"
                f" instead ({why or 'the provider failed at its first run'})")

    def invoke(self) -> None:
        try:
            self.session.run_with_iobinding(self.binding)
        except Exception as exc:
            raise TargetUnavailableError(f"onnxruntime:{self.provider}: the run failed "
                                         f"({str(exc).splitlines()[0][:200]})") from None

    def outputs(self) -> list[np.ndarray]:
        return list(self.binding.copy_outputs_to_cpu())


def load_failure_reason(log: str) -> str:
    """The cause in onnxruntime's own report of a provider that did not load."""
    import re

    missing = re.search(r"with error: ([^\n\x1b]+?)(?:\s*$|\x1b)", log, re.MULTILINE)
    if missing:
        return f"its libraries did not load: {missing.group(1).strip()[:160]}"
    return "its CUDA, cuDNN or TensorRT libraries did not load"
