"""`quick_frame_inspection`: TVMScript parsing without a source lookup per stack frame.

Every `@T.prim_func` (ours, and the hundreds of tensor intrinsics dlight's GPU matmul rule
imports on first use) calls `inspect.stack()`, which resolves the source file and lines of every
frame on the stack. Each lookup of a frame whose file is not a module on disk (`<frozen ...>`,
`<string>`) walks all of `sys.modules` with `realpath` system calls. Under pytest and with
PyTorch imported the stacks are deep and `sys.modules` holds thousands of entries: on a 2-core
machine one CUDA build spent over 20 minutes there before compiling anything.

TVM reads two things off that stack: the frame objects (to resolve closure variables) and the
source line of the third frame (to tell a function defined in a class body). The quick stack
gives the same frames, and source lines read with `linecache` (no module lookup) for the first
three; the others carry no source context.
"""

from __future__ import annotations

import contextlib
import inspect
import linecache
import sys
from collections.abc import Iterator

_FRAMES_WITH_SOURCE = 3  # TVM's `is_defined_in_class` reads frame 2 of the decorator's stack
_INSPECT_STACK = inspect.stack


def _quick_stack(context: int = 1) -> list[inspect.FrameInfo]:
    """`inspect.stack()` from the caller outward, source lines only for the innermost frames."""
    frames = []
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        line = None
        if len(frames) < _FRAMES_WITH_SOURCE and context > 0:
            line = linecache.getline(code.co_filename, frame.f_lineno)
        frames.append(inspect.FrameInfo(
            frame, code.co_filename, frame.f_lineno, code.co_name,
            None if line is None else [line], None if line is None else 0))
        frame = frame.f_back
    return frames


@contextlib.contextmanager
def quick_frame_inspection() -> Iterator[None]:
    """Within this block `inspect.stack` is `_quick_stack` (process-wide: build from one
    thread at a time, as TVM's own pass context also assumes)."""
    if inspect.stack is not _INSPECT_STACK:  # nested: the outer block restores it
        yield
        return
    inspect.stack = _quick_stack
    try:
        yield
    finally:
        inspect.stack = _INSPECT_STACK
