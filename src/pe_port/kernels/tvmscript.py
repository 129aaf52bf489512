"""`quick_frame_inspection`: TVMScript parsing without a source lookup per stack frame.

Every `@T.prim_func` (ours, and the hundreds of tensor intrinsics dlight's GPU matmul rule
imports on first use) calls `inspect.stack()`, and every `T.macro` expansion calls
`inspect.getouterframes()`: both resolve the source file and lines of every frame on the
stack. Each lookup of a frame whose file is not a module on disk (`<frozen ...>`,
`<string>`) walks all of `sys.modules` with `realpath` system calls. Under pytest and with
PyTorch imported the stacks are deep and `sys.modules` holds thousands of entries: on a 2-core
machine one CUDA build spent over 20 minutes there before compiling anything.

TVM reads two things off those stacks: the frame objects (to resolve closure variables, to find
the parser a macro expands in) and the source line of the third frame (to tell a function
defined in a class body). The quick stack gives the same frames, and source lines read with
`linecache` (no module lookup) for the first three; the others carry no source context.
Measured on a small tower's build (2-core machine, cProfile): the macro lookups alone were a
third of the build, more than LLVM's code generation.
"""

from __future__ import annotations

import contextlib
import inspect
import linecache
import sys
from collections.abc import Iterator

_FRAMES_WITH_SOURCE = 3  # TVM's `is_defined_in_class` reads frame 2 of the decorator's stack
_INSPECT_STACK = inspect.stack
_INSPECT_OUTER_FRAMES = inspect.getouterframes


def _quick_stack(context: int = 1) -> list[inspect.FrameInfo]:
    """`inspect.stack()` from the caller outward, source lines only for the innermost frames."""
    return _quick_outer_frames(sys._getframe(1), context)


def _quick_outer_frames(frame, context: int = 1) -> list[inspect.FrameInfo]:
    """`inspect.getouterframes(frame)`, source lines only for the innermost frames."""
    frames = []
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
    """Within this block `inspect.stack` and `inspect.getouterframes` are the quick ones
    (process-wide: build from one thread at a time, as TVM's own pass context also assumes)."""
    if inspect.stack is not _INSPECT_STACK:  # nested: the outer block restores both
        yield
        return
    inspect.stack, inspect.getouterframes = _quick_stack, _quick_outer_frames
    try:
        yield
    finally:
        inspect.stack, inspect.getouterframes = _INSPECT_STACK, _INSPECT_OUTER_FRAMES
