"""``bench perf``: how close the runner trains to the hardware's limit, measured side by side.

Three training loops over the same model, batch size, images and epochs, each timed from
the first batch to the last with the device synchronised (the first epoch's warm-up counts
for all three alike):

* **harness**: :func:`bench.runner.train_cell`, the loop ``bench run`` uses, with its
  per-batch loss/accuracy accounting; its per-epoch evaluation is outside the timed span,
  as in ``bench run``'s ``train_seconds``.
* **bare**: the plainest PyTorch loop: the float images already on the device, shuffled
  batches, forward, loss, backward, Adam; no metrics, no logging. Same speed options (memory
  format, autocast) as the harness, so the ratio measures the harness's overhead only.
* **dataloader** (augmentation on): the pipeline one writes by default: a per-sample
  ``torch.utils.data.Dataset`` applying albumentations (the flips, 90° rotations and colour
  jitter of the clean protocol), a ``DataLoader`` with default settings (no workers, no
  pinned memory) and PyTorch's defaults for the model (fp32, contiguous memory format). It
  runs in a process of its own, as one's own script would, so the host allocator keeps its
  defaults there (``--host-memory retain`` is process-wide and cannot be undone). It is
  compared with the harness, with its defaults, on the clean protocol, which augments whole
  batches on the device.

The harness/bare pair runs the thesis protocol (no augmentation); the augmented pair runs
the clean protocol's fold 0. Each measurement is repeated ``repeats`` times, alternating the
loops so that a slow spell of the machine hits both; medians are reported.

The same run measures the device's own limit (:mod:`bench.peak`): a square dense matmul at
the training's dtype (fp32, or bf16 under ``--amp bf16``) and thread count, timed before the
first repeat and after the last (the better counts), and sets the harness's training FLOP/s
against it: ``achieved_tflops`` = forward GFLOPs per image (multiply-add = 2 FLOPs) × 3
(forward + backward) × harness images/s; ``fraction_of_peak`` = achieved / peak. The load
average at the start and the end is recorded beside them: on a shared machine both rates
are measured under the others' load.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from typing import Any

import numpy as np
import torch

import architectures
from bench import environment, host_memory, peak
from bench.config import PerfConfig, validate_perf
from bench.data import load_dataset
from bench.errors import BenchError, ConfigError
from bench.protocols import ProtocolSplit, get_protocol
from bench.runner import (
    PYTORCH_DEFAULTS,
    CellSettings,
    SpeedOptions,
    compute_loss,
    images_trained,
    place_model,
    resolve_speed,
    seed_everything,
    select_device,
    synchronize,
    to_tensor_images,
    train_cell,
)


def _build_model(
    config: PerfConfig, device: torch.device, speed: SpeedOptions
) -> tuple[torch.nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    model = architectures.build(
        config.architecture,
        num_classes=3,
        in_channels=3,
        width=config.width,
        **architectures.architecture_options(config.architecture, config.encoder),
    )
    forward = place_model(model.train(), device, speed)
    return model, forward


def _train_steps(
    config: PerfConfig,
    device: torch.device,
    speed: SpeedOptions,
    loss_name: str,
    batches: Callable[[int], Any],
    n_images: int,
    lr: float,
) -> float:
    """Train a fresh model on ``batches(epoch)`` for every epoch; training images/s."""
    seed_everything(config.seed, deterministic=False)
    model, forward = _build_model(config, device, speed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    synchronize(device)
    started = time.perf_counter()
    for epoch in range(config.epochs):
        for x, y in batches(epoch):
            if speed.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with speed.autocast(device):
                logits = forward(x)
            loss = compute_loss(loss_name, logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    synchronize(device)
    return n_images * config.epochs / (time.perf_counter() - started)


def measure_bare(
    config: PerfConfig, split: ProtocolSplit, device: torch.device, speed: SpeedOptions, loss: str
) -> float:
    """The bare loop: float tensors already on the device, no metrics, no logging."""
    images = to_tensor_images(split.train.images).to(device)
    labels = torch.from_numpy(split.train.labels).to(device)
    n_train = images_trained(len(images), config.batch_size)
    generator = torch.Generator().manual_seed(config.seed)

    def batches(epoch: int):
        order = torch.randperm(len(images), generator=generator)[:n_train].to(device)
        for start in range(0, n_train, config.batch_size):
            index = order[start : start + config.batch_size]
            yield images[index], labels[index]

    lr = get_protocol(split.protocol).defaults.lr  # the harness's rate
    return _train_steps(config, device, speed, loss, batches, n_train, lr)


def dataloader_peer_missing() -> str | None:
    """Why the DataLoader + albumentations peer cannot run here, or None when it can.

    albumentations is the ``perf`` extra's, not a dependency of bench (which augments on the
    device, :mod:`bench.augment`): without it the augmented comparison is skipped, not failed.
    """
    if importlib.util.find_spec("albumentations") is None:
        return (
            "albumentations is not installed, so the DataLoader + albumentations peer cannot "
            "run: install the perf extra (pip install -c constraints.txt -e '.[perf]'), or "
            "pass --no-augmented"
        )
    return None


def albumentations_pipeline(seed: int):
    """The clean protocol's augmentation written the usual way: per sample, albumentations."""
    import albumentations as A

    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.RandomRotate90(p=1.0),
            A.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.02, p=0.5),
        ],
        seed=seed,
    )


class AlbumentationsDataset(torch.utils.data.Dataset):
    """Per-sample dataset: uint8 HWC image + mask → augmented float CHW tensor + long mask."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, seed: int) -> None:
        self.images, self.labels = images, labels
        self.transform = albumentations_pipeline(seed)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.transform(image=self.images[index], mask=self.labels[index])
        image = torch.from_numpy(np.ascontiguousarray(out["image"])).permute(2, 0, 1)
        return image.float().div_(255.0), torch.from_numpy(np.ascontiguousarray(out["mask"]))


def measure_dataloader(
    config: PerfConfig, split: ProtocolSplit, device: torch.device, speed: SpeedOptions, loss: str
) -> float:
    """DataLoader (default settings) over the per-sample albumentations dataset."""
    dataset = AlbumentationsDataset(split.train.images, split.train.labels, config.seed)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(config.seed),
    )

    def batches(epoch: int):
        for x, y in loader:
            yield x.to(device), y.to(device)

    lr = get_protocol(split.protocol).defaults.lr  # the harness's rate
    return _train_steps(config, device, speed, loss, batches, len(dataset), lr)


def measure_harness(
    config: PerfConfig, split: ProtocolSplit, device: torch.device, loss: str
) -> float:
    """``bench run``'s loop (train_cell): training images/s as it records them."""
    # The protocol's defaults fill what bench run would leave to them (the learning rate).
    defaults = get_protocol(split.protocol).defaults
    settings = replace(
        CellSettings.from_config(config.run_config(loss), defaults, num_classes=3),
        options=architectures.architecture_options(config.architecture, config.encoder),
    )
    result = train_cell(config.architecture, config.seed, split.fold, split, settings, device)
    if result.status != "ok" or not result.images_per_second:
        raise BenchError(f"{config.architecture}: the harness run failed: {result.error}")
    return result.images_per_second


def _split(config: PerfConfig, protocol: str) -> ProtocolSplit:
    dataset = load_dataset(
        config.dataset,
        config.data_dir,
        synthetic_count=config.synthetic_count,
        seed=config.seed,
    )
    split = get_protocol(protocol).split(dataset)
    if config.batch_size > len(split.train):
        raise ConfigError(
            f"--batch-size {config.batch_size} is larger than the training set "
            f"({len(split.train)} images)"
        )
    return split


def run_perf(config: PerfConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure harness vs bare (and, if asked, vs DataLoader+albumentations); a JSON-able dict."""
    validate_perf(config)
    architectures.get_spec(config.architecture)  # an unknown name lists the known ones
    say = progress or (lambda message: None)
    device = select_device(config.device)
    speed = resolve_speed(config.amp, config.channels_last, config.compile, device)
    host_memory.apply(config.host_memory)  # the bare loop runs in the harness's conditions
    load_at_start = os.getloadavg()
    thesis = _split(config, "thesis")
    samples: dict[str, list[float]] = {"harness": [], "bare": []}
    dtype = speed.amp_dtype or torch.float32  # what the convolutions compute in
    peaks = [peak.measure_matmul_peak(device, dtype, size=config.peak_size)]
    # Warm-up (one epoch, not recorded): first-call costs of the kernels and allocator.
    measure_bare(replace(config, epochs=1), thesis, device, speed, "bce")
    for repeat in range(config.repeats):
        samples["bare"].append(measure_bare(config, thesis, device, speed, "bce"))
        samples["harness"].append(measure_harness(config, thesis, device, "bce"))
        say(
            f"repeat {repeat + 1}/{config.repeats}: bare {samples['bare'][-1]:.2f} img/s, "
            f"harness {samples['harness'][-1]:.2f} img/s"
        )
    result: dict[str, Any] = {
        "architecture": config.architecture,
        "width": config.width,
        "batch_size": config.batch_size,
        "epochs": config.epochs,
        "repeats": config.repeats,
        "train_images": images_trained(len(thesis.train), config.batch_size),
        "image_size": list(thesis.train.labels.shape[1:]),
        "harness_images_per_second": statistics.median(samples["harness"]),
        "bare_images_per_second": statistics.median(samples["bare"]),
    }
    result["ratio"] = result["harness_images_per_second"] / result["bare_images_per_second"]
    peaks.append(peak.measure_matmul_peak(device, dtype, size=config.peak_size))
    result.update(
        fraction_of_peak(config, result["image_size"], result["harness_images_per_second"], peaks)
    )
    skipped = dataloader_peer_missing() if config.augmented else None
    if skipped:
        say(f"augmented comparison skipped: {skipped}")
        result["augmented_skipped"] = skipped
    elif config.augmented:
        clean = _split(config, "clean")
        samples["augmented_harness"], samples["dataloader"] = [], []
        # A fresh interpreter (spawn, not fork) for the peer: the allocator's defaults.
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as peer:

            def dataloader(peer_config: PerfConfig) -> float:
                return peer.submit(
                    measure_dataloader,
                    peer_config,
                    clean,
                    device,
                    PYTORCH_DEFAULTS,
                    "cross_entropy",
                ).result()

            dataloader(replace(config, epochs=1))  # warm-up of the peer's process
            for repeat in range(config.repeats):
                samples["dataloader"].append(dataloader(config))
                samples["augmented_harness"].append(
                    measure_harness(config, clean, device, "cross_entropy")
                )
                say(
                    f"repeat {repeat + 1}/{config.repeats} (augmented): dataloader "
                    f"{samples['dataloader'][-1]:.2f} img/s, harness "
                    f"{samples['augmented_harness'][-1]:.2f} img/s"
                )
        result["augmented_train_images"] = len(clean.train)
        result["augmented_harness_images_per_second"] = statistics.median(
            samples["augmented_harness"]
        )
        result["dataloader_images_per_second"] = statistics.median(samples["dataloader"])
        result["augmented_ratio"] = (
            result["augmented_harness_images_per_second"] / result["dataloader_images_per_second"]
        )
    result["samples"] = samples
    result["speed"] = {
        "amp": str(speed.amp_dtype).removeprefix("torch.") if speed.amp_dtype else "off",
        "channels_last": speed.channels_last,
        "compile": speed.compile,
        "host_memory": config.host_memory,
    }
    result["config"] = asdict(config)
    result["environment"] = environment.describe(device)
    result["load_average"] = {"start": list(load_at_start), "end": list(os.getloadavg())}
    result["note"] = config.note
    return result


def fraction_of_peak(
    config: PerfConfig,
    image_size: list[int],
    images_per_second: float,
    peaks: list[dict[str, Any]],
) -> dict[str, Any]:
    """The harness's training TFLOP/s against the best of the matmul ``peaks`` measured."""
    model = architectures.build(
        config.architecture,
        num_classes=3,
        in_channels=3,
        width=config.width,
        **architectures.architecture_options(config.architecture, config.encoder),
    )
    gflops = architectures.forward_gflops(model, size=(image_size[0], image_size[1]))
    achieved = peak.training_tflops(gflops, images_per_second)
    best = max(peaks, key=lambda measured: measured["peak_tflops"])
    return {
        "forward_gflops_per_image": gflops,
        "achieved_tflops": achieved,
        "peak_tflops": best["peak_tflops"],
        "fraction_of_peak": peak.fraction_of_peak(achieved, best["peak_tflops"]),
        "peak": {
            "measurements": peaks,  # before the first repeat, after the last
            "flop_convention": "multiply-add = 2 FLOPs; matmul n×n×n = 2 n³",
            "training_convention": (
                f"training FLOPs = {peak.TRAINING_FLOPS_PER_FORWARD} × forward "
                "(forward + backward at 1:2); forward counted by torch FlopCounterMode "
                "(convolutions and matmuls only)"
            ),
        },
    }


def render_text(result: dict[str, Any]) -> str:
    """A short human-readable table of one ``bench perf`` result."""
    lines = [
        f"{result['architecture']} width {result['width']}, batch {result['batch_size']}, "
        f"{result['epochs']} epochs x {result['train_images']} images, median of "
        f"{result['repeats']}; {result['environment']['device_name']}; speed options "
        f"{result['speed']}",
        f"  harness  {result['harness_images_per_second']:9.2f} img/s",
        f"  bare     {result['bare_images_per_second']:9.2f} img/s",
        f"  ratio    {result['ratio']:9.3f}  (harness / bare)",
        f"  achieved {result['achieved_tflops']:9.4f} TFLOP/s  (harness: "
        f"{result['forward_gflops_per_image']:.3f} forward GFLOPs/image x 3 x img/s)",
        f"  peak     {result['peak_tflops']:9.4f} TFLOP/s  (square "
        f"{result['peak']['measurements'][0]['dtype']} matmul, n="
        f"{result['peak']['measurements'][0]['size']}, "
        f"{result['peak']['measurements'][0]['threads']} threads, best sample)",
        f"  fraction {result['fraction_of_peak']:9.3f}  (achieved / peak)",
        "  load average (1 min) {:.2f} at start, {:.2f} at end".format(
            result["load_average"]["start"][0], result["load_average"]["end"][0]
        ),
    ]
    if "augmented_ratio" in result:
        lines += [
            f"  augmented ({result['augmented_train_images']} images, clean protocol):",
            f"  harness     {result['augmented_harness_images_per_second']:9.2f} img/s",
            f"  dataloader  {result['dataloader_images_per_second']:9.2f} img/s "
            "(per-sample albumentations, DataLoader defaults)",
            f"  ratio       {result['augmented_ratio']:9.3f}  (harness / dataloader)",
        ]
    if "augmented_skipped" in result:
        lines.append(f"  augmented comparison skipped: {result['augmented_skipped']}")
    if result.get("note"):
        lines.append(f"  note: {result['note']}")
    return "\n".join(lines)
