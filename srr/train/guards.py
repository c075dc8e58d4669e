"""Process-wide settings a run holds while it trains, and restores after: deterministic algorithms
(needed for bit-exact resume), the number of CPU threads, and the SIGTERM / Ctrl-C handlers
that stop at a step boundary."""
from __future__ import annotations

import contextlib
import os
import signal
import threading

import torch


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool):
    """``torch.use_deterministic_algorithms(True, warn_only=True)`` inside the block when ``enabled``."""
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)


@contextlib.contextmanager
def cpu_threads(threads: int | None):
    """``torch.set_num_threads(threads)`` inside the block (None: leave as is)."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class StopRequest:
    """Set by a signal handler; the loop checks it after each step."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    def __bool__(self) -> bool:
        return self.signal_name is not None


@contextlib.contextmanager
def stop_on_signals(enabled: bool = True):
    """Turn SIGTERM and the first Ctrl-C into a :class:`StopRequest`; a second Ctrl-C interrupts
    at once. Outside the main thread (where handlers cannot be set) nothing is installed."""
    stop = StopRequest()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.signal_name = signal.Signals(signum).name

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
