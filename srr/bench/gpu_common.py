"""The plumbing of ``srr.bench.gpu``: time budgets, datasheet peaks, counted FLOPs, the log.

- :class:`Budget` splits ``--budget-s`` over the sections by share; what a section leaves unspent goes
  to the ones after it. :func:`deadline` enforces one section's allowance with ``SIGALRM`` (a section
  past it is stopped between two Python bytecodes, keeping what it recorded), and sections also check
  :meth:`Deadline.left` before each new measurement, so they usually stop cleanly first.
- :func:`datasheet_peak`: dense bf16 tensor-core FLOP/s of a GPU, read off its vendor datasheet, by
  ``torch.cuda.get_device_name``; an unknown name gives ``None`` and the reason (MFU is then null).
- :func:`counted_flops`: FLOPs of one call counted by ``torch.utils.flop_counter.FlopCounterMode``
  (matmuls, convolutions, SDPA; element-wise work is not counted, as in every MFU figure).
"""
from __future__ import annotations

import contextlib
import os
import platform
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

import torch

# (pattern on the lower-cased device name, label, dense bf16 TFLOP/s from the vendor's datasheet; the
# sparsity figures the datasheets print first are twice these). First match wins: H100 PCIe/NVL before SXM.
DATASHEET_BF16_TFLOPS = (
    (r"h100.*pcie", "H100 PCIe", 756.0),
    (r"h100.*nvl", "H100 NVL", 835.0),
    (r"h100", "H100 SXM", 989.0),
    (r"h200", "H200 (SXM; the H100 SXM's tensor cores)", 989.0),
    (r"gh200", "GH200", 989.0),
    (r"a100", "A100", 312.0),
    (r"l40s", "L40S", 362.0),
    (r"\bl4\b", "L4", 121.0),
    (r"\ba10\b", "A10", 125.0),
)


def datasheet_peak(device_name: str | None) -> tuple[float | None, str]:
    """``(FLOP/s, what it is)`` of dense bf16 on ``device_name``; ``(None, why)`` where no datasheet is known."""
    if not device_name:
        return None, "no GPU: the datasheet peaks are of GPUs (MFU null)"
    name = device_name.lower()
    for pattern, label, tflops in DATASHEET_BF16_TFLOPS:
        if re.search(pattern, name):
            return tflops * 1e12, f"{label}: dense bf16 {tflops:g} TFLOP/s (vendor datasheet)"
    return None, f"no datasheet peak known for {device_name!r} (srr.bench.gpu_common.DATASHEET_BF16_TFLOPS; MFU null)"


def machine(device: torch.device) -> dict:
    """What the numbers were measured on: CPU, cores, threads, torch (and CUDA, Triton), the GPU."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    info = {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "device": str(device)}
    with contextlib.suppress(ImportError):
        import triton

        info["triton"] = triton.__version__
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                    gpu_memory_gib=props.total_memory / 2**30, multiprocessors=props.multi_processor_count)
    return info


def device_slug(name: str) -> str:
    """``'NVIDIA H200'`` → ``'nvidia-h200'``: the device's name in a file name."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def counted_flops(fn) -> int:
    """FLOPs of one call of ``fn`` (forward, or forward and backward), counted op by op."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


class SectionTimeout(BaseException):
    """A section ran past its allowance (a BaseException: the sections' own ``except Exception`` let it by)."""


@dataclass
class Deadline:
    seconds: float
    start: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()


@contextlib.contextmanager
def deadline(seconds: float, grace: float = 5.0):
    """A :class:`Deadline` of ``seconds``; ``SIGALRM`` raises :class:`SectionTimeout` ``grace`` seconds after
    it (where signals are available: the main thread of a POSIX process), so one measurement that
    overruns cannot take the whole run with it."""
    dl = Deadline(seconds)
    armed = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if armed:
        def alarm(signum, frame):
            raise SectionTimeout(f"stopped by the section's allowance of {seconds:.0f} s")

        previous = signal.signal(signal.SIGALRM, alarm)
        signal.setitimer(signal.ITIMER_REAL, max(seconds + grace, 0.01))
    try:
        yield dl
    finally:
        if armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


class Budget:
    """``total`` seconds split over named sections by ``shares``; unspent time rolls on to later sections."""

    def __init__(self, total: float, shares: dict[str, float]):
        self.total, self.shares, self.start = float(total), dict(shares), time.perf_counter()
        self.done: set[str] = set()

    def left(self) -> float:
        return self.total - (time.perf_counter() - self.start)

    def allowance(self, name: str) -> float:
        """This section's seconds: its share of what is left, among the sections not yet run."""
        remaining = {k: v for k, v in self.shares.items() if k not in self.done}
        share = remaining.get(name, 0.0) / max(sum(remaining.values()), 1e-9)
        self.done.add(name)
        return max(self.left() * share, 0.0)


class Tee:
    """Write what is printed to the console and to a log file."""

    def __init__(self, stream, path):
        self.stream, self.file = stream, open(path, "w", encoding="utf-8")

    def write(self, text):
        self.stream.write(text)
        self.file.write(text)
        self.file.flush()
        return len(text)

    def flush(self):
        self.stream.flush()
        self.file.flush()

    def close(self):
        self.file.close()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def log(*parts) -> None:
    print(*parts, flush=True)
    sys.stdout.flush()
