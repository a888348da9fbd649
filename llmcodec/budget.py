"""The memory one call may allocate (`max_memory`), taken before each allocation.

Every reading call (open, get_tensor, load_file, decode) takes from one `Budget` what it is about to
allocate: the header parser per header byte, the output arrays, the decoding tasks' working memory.
A call over its budget raises LimitExceededError before it allocates.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from .errors import LimitExceededError

# What a call may allocate beyond its max_memory: its own Python objects, which are not counted
# (measured with tracemalloc: no call went over its max_memory at all; tests/test_hostile_readers.py).
MEMORY_SLACK = 1 << 20


class Budget:
    """The bytes one call may allocate (`max_memory`; None: no cap), taken before each allocation,
    so a call over it raises LimitExceededError before it allocates."""

    def __init__(self, limit: int | None = None):
        self.limit = limit
        self.taken = 0

    def take(self, nbytes: int, what: str) -> None:
        if self.limit is not None and self.taken + nbytes > self.limit:
            before = f" (this call took {self.taken} bytes before)" if self.taken else ""
            raise LimitExceededError(f"{what} needs {nbytes} bytes, over max_memory={self.limit}{before}")
        self.taken += nbytes

    @contextmanager
    def hold(self, nbytes: int, what: str):
        """Take `nbytes` for the duration of a block (working memory), and give them back."""
        self.take(nbytes, what)
        try:
            yield
        finally:
            self.taken -= nbytes

    @staticmethod
    def allocate(nbytes: int, what: str) -> np.ndarray:
        """uint8[nbytes], already taken; a size this machine cannot allocate is a LimitExceededError."""
        try:
            return np.empty(nbytes, np.uint8)
        except MemoryError:
            raise LimitExceededError(f"{what} needs {nbytes} bytes, more than this machine can allocate; "
                                     f"pass max_memory to refuse such files earlier") from None

    def array(self, nbytes: int, what: str) -> np.ndarray:
        self.take(nbytes, what)
        return self.allocate(nbytes, what)
