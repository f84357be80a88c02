"""Code the Ray actors and Spark workers import by name (the test scripts put
this folder on their PYTHONPATH): an extractor that SIGKILLs its own process
once, the first time any worker reaches its second batch."""

from __future__ import annotations

import os
import signal

import layerlens.ray


def claim(marker: str) -> bool:
    """True exactly once across every process: whoever creates ``marker``."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


class KillOnceExtractor(layerlens.ray.Extractor):
    """``layerlens.ray.Extractor`` whose actor dies by SIGKILL once, mid-run."""

    def __init__(self, marker: str, **kwargs):
        super().__init__(**kwargs)
        self.marker = marker
        self.calls = 0

    def __call__(self, batch):
        self.calls += 1
        if self.calls == 2 and claim(self.marker):
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__call__(batch)


def kill_once(fn, marker: str):
    """Wraps a ``mapInArrow`` function: the worker dies by SIGKILL once, after
    it has already produced a batch of its task."""

    def wrapped(batches):
        for i, out in enumerate(fn(batches)):
            if i == 1 and claim(marker):
                os.kill(os.getpid(), signal.SIGKILL)
            yield out

    return wrapped
