"""Speed benchmarks (pytest-benchmark), not tests: nothing here asserts a time.

Run and save a comparable record (machine and commit info included):

    .venv/bin/python -m pytest benchmarks/test_step_speed.py --benchmark-enable \
        --benchmark-autosave
    .venv/bin/pytest-benchmark compare                  # lists and compares the saved runs

Every builtin architecture (the thesis's three and the smp baselines, encoder resnet18) at
width 0.25: one training step (forward, loss, backward, Adam step) on a batch of 20 images
of 120×120, as the thesis trained, and inference (forward + argmax) on the same batch; each
in PyTorch's default memory format and in channels-last, the runner's default on CPU/CUDA.
Host memory is retained as ``bench run`` does by default (``--host-memory retain``); saved
runs before that option existed (0001) used glibc's defaults.
"""

from __future__ import annotations

import pytest
import torch

import architectures
from bench import host_memory
from bench.runner import compute_loss

# Installed plugins (entry points) are not ours to benchmark here.
BUILTINS = [
    name
    for name in architectures.available()
    if architectures.get_spec(name).source in ("builtin", "smp")
]
WIDTH = 0.25
BATCH = 20
FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


@pytest.fixture(scope="module", autouse=True)
def retained_host_memory() -> None:
    host_memory.apply("retain")  # as bench run does by default


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(BATCH, 3, 120, 120, generator=generator)
    labels = torch.randint(0, 3, (BATCH, 120, 120), generator=generator)
    return images, labels


def build(name: str, memory_format: str) -> torch.nn.Module:
    torch.manual_seed(0)
    options = {"encoder": "resnet18"} if architectures.get_spec(name).source == "smp" else {}
    model = architectures.build(name, width=WIDTH, **options)
    return model.to(memory_format=FORMATS[memory_format])


def record(benchmark, name: str, memory_format: str) -> None:
    benchmark.extra_info.update(
        architecture=name,
        width=WIDTH,
        batch=BATCH,
        memory_format=memory_format,
        threads=torch.get_num_threads(),
        host_memory="retain",
        torch=torch.__version__,
    )


@pytest.mark.parametrize("memory_format", FORMATS)
@pytest.mark.parametrize("name", BUILTINS)
def test_train_step(benchmark, name, memory_format):
    model = build(name, memory_format).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    images, labels = batch()
    images = images.contiguous(memory_format=FORMATS[memory_format])

    def step() -> float:
        loss = compute_loss("bce", model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    record(benchmark, name, memory_format)
    benchmark(step)


@pytest.mark.parametrize("memory_format", FORMATS)
@pytest.mark.parametrize("name", BUILTINS)
def test_inference(benchmark, name, memory_format):
    model = build(name, memory_format).eval()
    images, _ = batch()
    images = images.contiguous(memory_format=FORMATS[memory_format])

    def infer() -> torch.Tensor:
        with torch.no_grad():
            return model(images).argmax(dim=1)

    record(benchmark, name, memory_format)
    benchmark(infer)
