"""BatchAugmenter: batched flips/rotations/colour jitter, checked against NumPy and torchvision."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from bench.augment import AugmentParams, BatchAugmenter, _jitter_masked, _jitter_selected
from bench.protocols import IGNORE_INDEX

# Every (hflip, vflip, k) — 16 combinations covering the 8 dihedral transforms twice.
ALL_COMBOS = list(itertools.product([False, True], [False, True], range(4)))


def make_params(
    combos: list[tuple[bool, bool, int]],
    jitter_on: list[bool] | None = None,
    brightness: float = 1.0,
    contrast: float = 1.0,
    saturation: float = 1.0,
    hue: float = 0.0,
) -> AugmentParams:
    count = len(combos)
    ones = torch.ones(count)
    return AugmentParams(
        hflip=torch.tensor([combo[0] for combo in combos]),
        vflip=torch.tensor([combo[1] for combo in combos]),
        rotations=torch.tensor([combo[2] for combo in combos], dtype=torch.int64),
        jitter_on=torch.tensor(jitter_on if jitter_on is not None else [False] * count),
        brightness=ones * brightness,
        contrast=ones * contrast,
        saturation=ones * saturation,
        hue=ones * hue,
    )


def padded_batch(
    count: int, height: int, width: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and labels, padded bottom/right with zeros and IGNORE_INDEX."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand((count, 3, height, width), generator=generator)
    labels = torch.randint(0, 4, (count, height, width), generator=generator)
    images[:, :, height - 2 :, :] = 0.0
    images[:, :, :, width - 3 :] = 0.0
    labels[:, height - 2 :, :] = IGNORE_INDEX
    labels[:, :, width - 3 :] = IGNORE_INDEX
    return images, labels


def numpy_geometry(array: np.ndarray, hflip: bool, vflip: bool, rotations: int) -> np.ndarray:
    """The albumentations pipeline's geometry on an (H, W, ...) array."""
    if hflip:
        array = np.flip(array, axis=1)
    if vflip:
        array = np.flip(array, axis=0)
    return np.rot90(array, rotations)


def assert_matches_numpy(
    images: torch.Tensor,
    labels: torch.Tensor,
    out_images: torch.Tensor,
    out_labels: torch.Tensor,
    params: AugmentParams,
) -> None:
    for i in range(len(params)):
        flags = (bool(params.hflip[i]), bool(params.vflip[i]), int(params.rotations[i]))
        expected_image = numpy_geometry(images[i].permute(1, 2, 0).numpy(), *flags)
        expected_label = numpy_geometry(labels[i].numpy(), *flags)
        assert np.array_equal(out_images[i].permute(1, 2, 0).numpy(), expected_image), flags
        assert np.array_equal(out_labels[i].numpy(), expected_label), flags


def test_every_dihedral_transform_matches_numpy() -> None:
    images, labels = padded_batch(len(ALL_COMBOS), 9, 9)
    # Different images, plus one image under all 16 flag combinations.
    images = torch.cat([images, images[:1].expand(len(ALL_COMBOS), -1, -1, -1)])
    labels = torch.cat([labels, labels[:1].expand(len(ALL_COMBOS), -1, -1)])
    params = make_params(ALL_COMBOS * 2)
    out_images, out_labels = BatchAugmenter(square=True).apply(images, labels, params)
    assert_matches_numpy(images, labels, out_images, out_labels, params)
    assert out_labels.dtype == torch.int64
    for i in range(len(params)):
        assert set(out_labels[i].unique().tolist()) == set(labels[i].unique().tolist())
        assert (out_labels[i] == IGNORE_INDEX).sum() == (labels[i] == IGNORE_INDEX).sum()
    # The 16 flag combinations cover exactly the 8 distinct transforms, each twice.
    same_image = out_labels[len(ALL_COMBOS) :]
    distinct = {tuple(label.flatten().tolist()) for label in same_image}
    assert len(distinct) == 8


def test_drawn_geometry_matches_numpy_and_padding_moves_with_the_image() -> None:
    images, labels = padded_batch(24, 12, 12, seed=1)
    augmenter = BatchAugmenter(square=True, jitter=False)
    params = augmenter.draw(torch.Generator().manual_seed(5), 24)
    out_images, out_labels = augmenter.apply(images, labels, params)
    assert_matches_numpy(images, labels, out_images, out_labels, params)
    # Padded pixels (zero images, IGNORE_INDEX labels) stay aligned after the transform.
    padding = out_labels == IGNORE_INDEX
    assert torch.all(out_images.permute(1, 0, 2, 3)[:, padding] == 0.0)


def test_transform_is_a_pixel_permutation() -> None:
    images, labels = padded_batch(16, 10, 10, seed=2)
    augmenter = BatchAugmenter(square=True, jitter=False)
    params = augmenter.draw(torch.Generator().manual_seed(3), 16)
    out_images, out_labels = augmenter.apply(images, labels, params)
    for i in range(16):
        before = images[i].reshape(3, -1).T.tolist()
        after = out_images[i].reshape(3, -1).T.tolist()
        assert sorted(map(tuple, before)) == sorted(map(tuple, after))
        assert torch.equal(labels[i].flatten().sort().values, out_labels[i].flatten().sort().values)


def test_non_square_keeps_shape_and_never_transposes() -> None:
    images, labels = padded_batch(32, 6, 11, seed=4)
    augmenter = BatchAugmenter(square=False)
    params = augmenter.draw(torch.Generator().manual_seed(0), 32)
    assert set(params.rotations.tolist()) <= {0, 2}
    assert set(params.rotations.tolist()) == {0, 2}  # both occur in 32 draws with this seed
    geometry_only = BatchAugmenter(square=False, jitter=False)
    out_images, out_labels = geometry_only.apply(images, labels, params)
    assert out_images.shape == images.shape and out_labels.shape == labels.shape
    assert_matches_numpy(images, labels, out_images, out_labels, params)
    out_images, out_labels = augmenter.apply(images, labels, params)
    assert out_images.shape == images.shape and out_labels.shape == labels.shape

    rotated = make_params([(False, False, 1)])
    with pytest.raises(ValueError, match="non-square"):
        augmenter.apply(images[:1], labels[:1], rotated)
    with pytest.raises(ValueError, match="square=True"):
        BatchAugmenter(square=True).apply(images, labels, params)


def test_draw_is_reproducible_and_uses_only_the_given_generator() -> None:
    augmenter = BatchAugmenter(square=True)
    first = augmenter.draw(torch.Generator().manual_seed(11), 40)
    global_state = torch.get_rng_state()
    second = augmenter.draw(torch.Generator().manual_seed(11), 40)
    assert torch.equal(torch.get_rng_state(), global_state)  # the global RNG is untouched
    assert first.equal(second)
    other = augmenter.draw(torch.Generator().manual_seed(12), 40)
    assert not first.equal(other)
    # One fixed row of random numbers per image: drawing 10 then 30 equals drawing 40.
    generator = torch.Generator().manual_seed(11)
    head, tail = augmenter.draw(generator, 10), augmenter.draw(generator, 30)
    assert head.equal(first.slice(0, 10)) and tail.equal(first[10:40])
    # Switching the jitter off changes nothing but jitter_on.
    plain = BatchAugmenter(square=True, jitter=False).draw(torch.Generator().manual_seed(11), 40)
    assert torch.equal(plain.rotations, first.rotations) and torch.equal(plain.hflip, first.hflip)
    assert not plain.jitter_on.any()
    assert len(augmenter.draw(torch.Generator(), 0)) == 0


def test_apply_is_deterministic() -> None:
    images, labels = padded_batch(12, 8, 8, seed=6)
    augmenter = BatchAugmenter(square=True)
    params = augmenter.draw(torch.Generator().manual_seed(1), 12)
    first = augmenter.apply(images, labels, params)
    second = augmenter.apply(images.clone(), labels.clone(), params)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_draw_frequencies_and_ranges() -> None:
    count = 20_000
    params = BatchAugmenter(square=True).draw(torch.Generator().manual_seed(0), count)
    assert abs(params.hflip.float().mean().item() - 0.5) < 0.02
    assert abs(params.vflip.float().mean().item() - 0.5) < 0.02
    assert abs(params.jitter_on.float().mean().item() - 0.5) < 0.02
    for k in range(4):
        assert abs((params.rotations == k).float().mean().item() - 0.25) < 0.02
    for factors in (params.brightness, params.contrast, params.saturation):
        assert factors.dtype == torch.float32
        assert factors.min() >= 0.9 and factors.max() <= 1.1
        assert abs(factors.mean().item() - 1.0) < 0.005
    assert params.hue.min() >= -0.02 and params.hue.max() <= 0.02
    assert abs(params.hue.mean().item()) < 0.001


@pytest.mark.parametrize(
    ("factor", "reference"),
    [
        ("brightness", TF.adjust_brightness),
        ("contrast", TF.adjust_contrast),
        ("saturation", TF.adjust_saturation),
        ("hue", TF.adjust_hue),
    ],
)
def test_single_jitter_step_matches_torchvision(factor: str, reference) -> None:
    count = 8
    images, labels = padded_batch(count, 10, 10, seed=7)
    images = images * 1.1  # some values above 1 after brightness, to exercise the clamp
    images = images.clamp(0, 1)
    values = (
        torch.linspace(-0.02, 0.02, count) if factor == "hue" else torch.linspace(0.9, 1.1, count)
    )
    params = make_params([(False, False, 0)] * count, jitter_on=[True] * count)
    params = AugmentParams(**{**params.__dict__, factor: values})
    out_images, _ = BatchAugmenter(square=True).apply(images, labels, params)
    tolerance = 1e-4 if factor == "hue" else 1e-5
    for i in range(count):
        expected = reference(images[i], float(values[i]))
        torch.testing.assert_close(out_images[i], expected, atol=tolerance, rtol=0)


def test_full_jitter_matches_torchvision_in_the_fixed_order() -> None:
    count = 16
    images, labels = padded_batch(count, 10, 10, seed=8)
    augmenter = BatchAugmenter(square=True)
    params = augmenter.draw(torch.Generator().manual_seed(9), count)
    geometry, _ = BatchAugmenter(square=True, jitter=False).apply(images, labels, params)
    out_images, _ = augmenter.apply(images, labels, params)
    assert out_images.min() >= 0 and out_images.max() <= 1
    for i in range(count):
        expected = geometry[i]
        if params.jitter_on[i]:
            expected = TF.adjust_brightness(expected, float(params.brightness[i]))
            expected = TF.adjust_contrast(expected, float(params.contrast[i]))
            expected = TF.adjust_saturation(expected, float(params.saturation[i]))
            expected = TF.adjust_hue(expected, float(params.hue[i]))
        torch.testing.assert_close(out_images[i], expected, atol=1e-4, rtol=0)


def test_unjittered_images_are_bit_identical_to_the_geometry() -> None:
    count = 20
    images, labels = padded_batch(count, 12, 12, seed=10)
    params = BatchAugmenter(square=True).draw(torch.Generator().manual_seed(2), count)
    assert params.jitter_on.any() and not params.jitter_on.all()
    out_images, _ = BatchAugmenter(square=True).apply(images, labels, params)
    geometry, _ = BatchAugmenter(square=True, jitter=False).apply(images, labels, params)
    kept = ~params.jitter_on
    assert torch.equal(out_images[kept], geometry[kept])
    assert not torch.equal(out_images[params.jitter_on], geometry[params.jitter_on])


def test_masked_jitter_path_matches_the_selected_path() -> None:
    """Params already on the device take the torch.where path (no host sync); same result."""
    images, _ = padded_batch(12, 10, 10, seed=14)
    params = BatchAugmenter(square=True).draw(torch.Generator().manual_seed(6), 12)
    rows = params.jitter_on.nonzero().squeeze(1)
    selected = _jitter_selected(images.clone(), params, rows)
    masked = _jitter_masked(images, params)
    torch.testing.assert_close(masked, selected, atol=1e-6, rtol=0)
    assert torch.equal(masked[~params.jitter_on], images[~params.jitter_on])


@pytest.mark.parametrize("square", [True, False])
def test_channels_last_gives_the_contiguous_result_and_keeps_its_format(square: bool) -> None:
    height, width = (12, 12) if square else (8, 13)
    images, labels = padded_batch(10, height, width, seed=11)
    augmenter = BatchAugmenter(square=square)
    params = augmenter.draw(torch.Generator().manual_seed(4), 10)
    contiguous_images, contiguous_labels = augmenter.apply(images, labels, params)
    assert contiguous_images.is_contiguous()
    channels_last = images.contiguous(memory_format=torch.channels_last)
    out_images, out_labels = augmenter.apply(channels_last, labels, params)
    assert out_images.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out_images, contiguous_images, atol=1e-6, rtol=0)
    assert torch.equal(out_labels, contiguous_labels)


def test_dtype_device_and_params_helpers() -> None:
    images, labels = padded_batch(6, 8, 8, seed=12)
    augmenter = BatchAugmenter(square=True)
    params = augmenter.draw(torch.Generator().manual_seed(0), 6)
    out64, _ = augmenter.apply(images.double(), labels, params)
    assert out64.dtype == torch.float64
    out32, _ = augmenter.apply(images, labels, params)
    torch.testing.assert_close(out64.float(), out32, atol=1e-5, rtol=0)
    assert params.to("cpu").equal(params)
    assert len(params.slice(2, 5)) == 3
    with pytest.raises(ValueError, match="params hold"):
        augmenter.apply(images, labels, params.slice(0, 5))
    with pytest.raises(TypeError):
        params[0]  # type: ignore[index]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    images, labels = padded_batch(20, 16, 16, seed=13)
    augmenter = BatchAugmenter(square=True)
    params = augmenter.draw(torch.Generator().manual_seed(0), 20)
    cpu_images, cpu_labels = augmenter.apply(images, labels, params)
    cuda_images, cuda_labels = augmenter.apply(images.cuda(), labels.cuda(), params)
    torch.testing.assert_close(cuda_images.cpu(), cpu_images, atol=1e-5, rtol=0)
    assert torch.equal(cuda_labels.cpu(), cpu_labels)
    with pytest.raises(ValueError, match="CPU"):
        augmenter.draw(torch.Generator(device="cuda"), 3)
