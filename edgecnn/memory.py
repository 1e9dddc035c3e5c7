"""Give freed memory back between the big steps of a conversion."""

from __future__ import annotations

import ctypes
import gc


def release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS before the next big step.

    glibc keeps freed blocks of large arrays mapped; trimming them keeps VGG19's int8
    conversion from stacking quantisation on top of the export's high-water mark.
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass
