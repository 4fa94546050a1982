"""Speed benchmarks (pytest-benchmark), not tests: nothing here asserts a time.

Run and save a comparable record (machine and commit info included):

    .venv/bin/python -m pytest benchmarks --benchmark-enable --benchmark-autosave
    .venv/bin/python -m pytest-benchmark compare          # or: pytest-benchmark compare

Each builtin architecture at a small width: one training step (forward, loss, backward,
Adam step) on a batch of 20 images of 120×120, as the thesis trained, and inference on the
same batch.
"""

from __future__ import annotations

import pytest
import torch

import architectures
from bench.runner import compute_loss

BUILTINS = ["unet_thesis", "segnet_basic", "deconvnet"]
WIDTH = 0.25
BATCH = 20


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(BATCH, 3, 120, 120, generator=generator)
    labels = torch.randint(0, 3, (BATCH, 120, 120), generator=generator)
    return images, labels


@pytest.mark.parametrize("name", BUILTINS)
def test_train_step(benchmark, name):
    torch.manual_seed(0)
    model = architectures.build(name, width=WIDTH).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    images, labels = batch()

    def step() -> float:
        loss = compute_loss("bce", model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    benchmark.extra_info.update(width=WIDTH, batch=BATCH, threads=torch.get_num_threads())
    benchmark(step)


@pytest.mark.parametrize("name", BUILTINS)
def test_inference(benchmark, name):
    model = architectures.build(name, width=WIDTH).eval()
    images, _ = batch()

    def infer() -> torch.Tensor:
        with torch.no_grad():
            return model(images).argmax(dim=1)

    benchmark.extra_info.update(width=WIDTH, batch=BATCH, threads=torch.get_num_threads())
    benchmark(infer)
