"""The device's own limit: a timed dense matmul, and training FLOP/s set against it.

Conventions, stated once here and in every record that uses them:

* A FLOP is one floating-point addition or multiplication: a multiply-add (MAC) is 2 FLOPs.
  :func:`architectures.forward_gflops` counts with torch's ``FlopCounterMode``, which uses
  this convention (a convolution or matmul of ``M`` MACs counts ``2 M``); it counts only
  the matrix-class operations (convolutions, transposed convolutions, matmuls), not the
  elementwise ones (batch norm, activations, pooling, the loss, the optimiser).
* Training FLOPs per image = 3 × the forward's: the backward pass computes the gradients of
  the inputs and of the weights, each about one forward (the standard 1:2 forward:backward
  estimate; the first layer needs no input gradient, so it slightly overcounts).
* A square ``n × n`` matmul is ``2 n³`` FLOPs.

Only :func:`measure_matmul_peak` touches a device; the rest are pure arithmetic.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

#: Training FLOPs per forward FLOP: forward 1 + backward 2.
TRAINING_FLOPS_PER_FORWARD = 3
#: Square matmul side by device kind: big enough that the kernel runs at its rate, not its
#: call overhead (a CPU reaches it far sooner than a GPU).
DEFAULT_PEAK_SIZE = {"cpu": 2048, "cuda": 8192, "mps": 4096}
#: Each timed sample runs enough matmuls to last about this long (a lone fast GPU matmul is
#: too short a span for the clock).
SAMPLE_SECONDS = 0.05


def matmul_flops(size: int) -> int:
    """FLOPs of one ``size × size`` by ``size × size`` matmul (``size³`` MACs, 2 FLOPs each)."""
    return 2 * size**3


def training_tflops(forward_gflops_per_image: float, images_per_second: float) -> float:
    """Training TFLOP/s achieved: forward GFLOPs per image × 3 (forward + backward) × images/s."""
    return forward_gflops_per_image * TRAINING_FLOPS_PER_FORWARD * images_per_second / 1e3


def fraction_of_peak(achieved_tflops: float, peak_tflops: float) -> float:
    """The share of the measured peak that training reached."""
    if peak_tflops <= 0:
        raise ValueError(f"the peak must be positive, got {peak_tflops!r}")
    return achieved_tflops / peak_tflops


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def measure_matmul_peak(
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    *,
    size: int | None = None,
    warmup: int = 2,
    repeats: int = 5,
    threads: int | None = None,
) -> dict[str, Any]:
    """Dense-matmul TFLOP/s of ``device`` at ``dtype``: the best of ``repeats`` timed samples.

    Square ``size × size`` matrices (default :data:`DEFAULT_PEAK_SIZE` for the device kind);
    ``warmup`` untimed matmuls first; each sample times as many back-to-back matmuls as
    fill about :data:`SAMPLE_SECONDS`, with the device synchronised around them. The best
    sample, not the median: on a shared machine the slow samples measure the other work.
    ``threads``: torch intra-op threads for the measurement (None: the process's count, the
    one training uses); restored afterwards.
    """
    size = size or DEFAULT_PEAK_SIZE.get(device.type, 4096)
    if size < 1 or warmup < 0 or repeats < 1:
        raise ValueError(f"size, repeats must be positive and warmup >= 0: {size}, {repeats}")
    previous = torch.get_num_threads()
    if threads is not None and threads != previous:
        torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(0)
        a = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
        b = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
        out = torch.empty(size, size, device=device, dtype=dtype)
        _synchronize(device)
        started = time.perf_counter()
        for _ in range(max(warmup, 1)):
            torch.matmul(a, b, out=out)
        _synchronize(device)
        one = (time.perf_counter() - started) / max(warmup, 1)
        calls = max(1, math.ceil(SAMPLE_SECONDS / max(one, 1e-9)))
        seconds = []
        for _ in range(repeats):
            _synchronize(device)
            started = time.perf_counter()
            for _ in range(calls):
                torch.matmul(a, b, out=out)
            _synchronize(device)
            seconds.append((time.perf_counter() - started) / calls)
        used_threads = torch.get_num_threads()
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)
    flops = matmul_flops(size)
    samples = [flops / s / 1e12 for s in seconds]
    return {
        "peak_tflops": max(samples),
        "samples_tflops": samples,
        "size": size,
        "dtype": str(dtype).removeprefix("torch."),
        "calls_per_sample": calls,
        "warmup": warmup,
        "repeats": repeats,
        "threads": used_threads,
        "device": str(device),
    }
