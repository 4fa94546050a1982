"""Training recipes (bench.recipes): the schedule, the Dice + CE loss, the strong
augmentation, test-time flips and early stopping, on tiny data built here."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import architectures
from bench import recipes, runner
from bench.augment import StrongAugmenter, rotate_and_scale
from bench.cli import main
from bench.config import RECIPES as RECIPE_FLAG_CHOICES
from bench.data import load_dataset
from bench.errors import ConfigError
from bench.images import read_mask
from bench.protocols import IGNORE_INDEX, carve_validation
from bench.run_dir import RunDir

from tiny_runs import cell_settings, on_epoch_end, run_argv, tiny_plugin_source


def test_the_flag_offers_every_recipe() -> None:
    assert set(RECIPE_FLAG_CHOICES) == set(recipes.RECIPES)
    with pytest.raises(ConfigError, match="known recipes: thesis, modern"):
        recipes.get_recipe("moden")


# ---------------------------------------------------------------------------- schedule


def test_warmup_then_cosine_hits_its_specified_values() -> None:
    total, warmup = 100, recipes.warmup_steps(100, 0.05)
    assert warmup == 5
    factors = [recipes.lr_factor(step, total, warmup, "cosine") for step in range(total)]
    # Linear warm-up: 1/5, 2/5, ..., the peak at the last warm-up step.
    assert factors[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    # The first decay step is at the peak, the last at 0, the middle at half.
    assert factors[5] == pytest.approx(1.0)
    assert factors[-1] == pytest.approx(0.0, abs=1e-12)
    # t = (step - 5) / 94 is 0.5 at step 52: half the peak
    assert factors[52] == pytest.approx(0.5)
    assert factors[30] == pytest.approx(0.5 * (1 + math.cos(math.pi * 25 / 94)))
    # Monotone after the warm-up.
    assert all(a >= b for a, b in zip(factors[5:], factors[6:], strict=False))
    # constant: the peak after the warm-up
    assert recipes.lr_factor(50, total, warmup, "constant") == 1.0


def test_scheduler_drives_the_optimizer_rate_per_step() -> None:
    model = torch.nn.Linear(2, 2)
    recipe = recipes.MODERN
    optimizer = recipes.make_optimizer(recipe, model.parameters(), lr=1e-3)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.param_groups[0]["weight_decay"] == recipe.weight_decay
    total = 40
    scheduler = recipes.make_scheduler(recipe, optimizer, total)
    assert scheduler is not None
    warmup = recipes.warmup_steps(total, recipe.warmup_fraction)
    seen = []
    for _ in range(total):
        seen.append(optimizer.param_groups[0]["lr"])  # the rate this step runs at
        optimizer.step()
        scheduler.step()
    expected = [1e-3 * recipes.lr_factor(s, total, warmup, "cosine") for s in range(total)]
    assert seen == pytest.approx(expected)
    assert seen[0] == pytest.approx(1e-3 / warmup)
    assert seen[-1] == pytest.approx(0.0, abs=1e-15)


def test_the_thesis_recipe_has_no_scheduler_and_plain_adam() -> None:
    model = torch.nn.Linear(2, 2)
    optimizer = recipes.make_optimizer(recipes.THESIS, model.parameters(), lr=1e-4)
    assert type(optimizer) is torch.optim.Adam
    assert recipes.make_scheduler(recipes.THESIS, optimizer, 100) is None


# ---------------------------------------------------------------------------- loss


def test_soft_dice_loss_matches_a_hand_computation() -> None:
    # One image, 2 x 2 pixels, 3 classes; the last pixel is padding (ignored).
    logits = torch.tensor(
        [[[[2.0, 0.0], [0.0, 5.0]], [[0.0, 1.0], [0.0, 5.0]], [[0.0, 0.0], [3.0, 5.0]]]]
    )
    labels = torch.tensor([[[0, 1], [2, IGNORE_INDEX]]])
    p = logits.softmax(dim=1)[0]  # (3, 2, 2)
    pixels = [(0, 0), (0, 1), (1, 0)]  # the valid ones
    expected_dice = []
    for c in (1, 2):
        truth = [1.0 if labels[0, i, j] == c else 0.0 for i, j in pixels]
        prob = [float(p[c, i, j]) for i, j in pixels]
        intersection = sum(a * b for a, b in zip(prob, truth, strict=True))
        expected_dice.append((2 * intersection + 1e-5) / (sum(prob) + sum(truth) + 1e-5))
    expected = 1 - np.mean(expected_dice)
    assert recipes.soft_dice_loss(logits, labels, IGNORE_INDEX).item() == pytest.approx(expected)
    # dice_ce is plain cross-entropy over the valid pixels plus that
    ce = -np.mean([math.log(float(p[labels[0, i, j], i, j])) for i, j in pixels])
    assert runner.compute_loss("dice_ce", logits, labels).item() == pytest.approx(ce + expected)


def test_soft_dice_loss_is_zero_for_a_perfect_confident_prediction() -> None:
    labels = torch.tensor([[[0, 1, 2, 2]]])
    logits = F.one_hot(labels, 3).permute(0, 3, 1, 2).float() * 50
    assert recipes.soft_dice_loss(logits, labels, IGNORE_INDEX).item() == pytest.approx(0, abs=1e-6)


# ---------------------------------------------------------------------------- augmentation


def test_strong_augmentation_is_reproducible_and_keeps_labels_valid() -> None:
    augmenter = StrongAugmenter(square=True)
    first = augmenter.draw(torch.Generator().manual_seed(3), 16)
    again = augmenter.draw(torch.Generator().manual_seed(3), 16)
    assert first.base.equal(again.base)
    assert torch.equal(first.angle, again.angle) and torch.equal(first.scale, again.scale)
    off = (first.angle == 0) & (first.scale == 1)
    assert 0 < int(off.sum()) < 16  # p = 0.5 of an affine transform
    images = torch.rand(16, 3, 24, 24).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 3, (16, 24, 24))
    labels[:, -4:, :] = IGNORE_INDEX  # padding rows
    out_images, out_labels = augmenter.apply(images, labels, first)
    assert out_images.is_contiguous(memory_format=torch.channels_last)
    assert set(out_labels.unique().tolist()) <= {IGNORE_INDEX, 0, 1, 2}
    assert float(out_images.min()) >= 0 and float(out_images.max()) <= 1


def test_rotate_and_scale_turns_a_quarter_exactly_and_leaves_identity_alone() -> None:
    images = torch.rand(2, 3, 10, 10)
    labels = torch.randint(0, 3, (2, 10, 10))
    angle = torch.tensor([math.pi / 2, 0.0])
    scale = torch.tensor([1.0, 1.0])
    moved, moved_labels = rotate_and_scale(images, labels, angle, scale)
    # A quarter turn counter-clockwise, as np.rot90 / torch.rot90 with k = 1.
    assert torch.equal(moved_labels[0], torch.rot90(labels[0], 1, (0, 1)))
    assert torch.allclose(moved[0], torch.rot90(images[0], 1, (1, 2)), atol=1e-5)
    assert torch.equal(moved[1], images[1]) and torch.equal(moved_labels[1], labels[1])


def test_rotate_and_scale_does_not_shear_a_rectangle() -> None:
    # A centred disc stays a disc under rotation of a 20 x 40 image (pixel units). Only
    # the middle is counted: the corners sample reflections of the image, as albumentations'
    # rotations do by default.
    yy, xx = torch.meshgrid(torch.arange(20.0), torch.arange(40.0), indexing="ij")
    disc = (((yy - 9.5) ** 2 + (xx - 19.5) ** 2) < 36).long().unsqueeze(0)
    _, moved = rotate_and_scale(
        torch.zeros(1, 3, 20, 40), disc, torch.tensor([0.7]), torch.tensor([1.0])
    )
    middle = (slice(None), slice(2, 18), slice(8, 32))
    assert abs(int(moved[middle].sum()) - int(disc.sum())) <= 4
    # a shear would stretch it along a diagonal: its extent stays about 12 pixels each way
    rows, cols = moved[0].nonzero(as_tuple=True)
    inside = (rows >= 2) & (rows < 18) & (cols >= 8) & (cols < 32)
    assert int(rows[inside].max() - rows[inside].min()) <= 12
    assert int(cols[inside].max() - cols[inside].min()) <= 12


# ---------------------------------------------------------------------------- test-time flips


def test_flip_averaged_probabilities_is_the_mean_of_the_four_flips() -> None:
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 3, 3, padding=1)
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        got = runner.flip_averaged_probabilities(model, x, model(x))
        expected = (
            model(x).softmax(1)
            + model(x.flip(3)).softmax(1).flip(3)
            + model(x.flip(2)).softmax(1).flip(2)
            + model(x.flip((2, 3))).softmax(1).flip((2, 3))
        ) / 4
    assert torch.allclose(got, expected, atol=1e-6)


# ---------------------------------------------------------------------------- early stopping


def _tiny_split():
    from bench.protocols import get_protocol

    dataset = load_dataset("synthetic", None, synthetic_count=15, synthetic_size=32, seed=0)
    return get_protocol("clean").split(dataset, fold=0, folds=3, seed=0)


def _train(recipe: recipes.Recipe, tmp_path, architecture="unet_thesis", **overrides):
    settings = cell_settings(recipe=recipe, loss="dice_ce", **overrides)
    checkpoint = tmp_path / "resume.pt"
    result = runner.train_cell(
        architecture, 0, 0, _tiny_split(), settings, torch.device("cpu"), checkpoint=checkpoint
    )
    assert result.status == "ok", result.error
    return result, settings, checkpoint


def test_early_stopping_stops_after_patience_epochs_without_improvement(
    tmp_path, fresh_registry
) -> None:
    # At rate 0 a model without batch norm never changes: every validation Dice ties the
    # first, which stays the best.
    plugin = tmp_path / "tiny_plugin.py"
    plugin.write_text(tiny_plugin_source("tiny_still_model"))
    architectures.load_plugin_file(plugin)
    recipe = dataclasses.replace(recipes.MODERN, patience=2, min_epochs_fraction=0.0)
    result, _, _ = _train(recipe, tmp_path, "tiny_still_model", epochs=10, lr=0.0)
    assert result.best_epoch == 1
    assert result.epochs == 3  # epochs 2 and 3 did not improve on epoch 1
    validation = [r for r in result.history if r["split"] == "validation"]
    assert [r["epoch"] for r in validation] == [1, 2, 3]


def test_early_stopping_waits_for_its_share_of_the_epochs(tmp_path, fresh_registry) -> None:
    # The same still model: patience runs out after epoch 3, but the recipe trains at least
    # 60 % of 10 epochs before it may stop, so epoch 6 is the last.
    plugin = tmp_path / "tiny_plugin.py"
    plugin.write_text(tiny_plugin_source("tiny_still_model"))
    architectures.load_plugin_file(plugin)
    recipe = dataclasses.replace(recipes.MODERN, patience=2, min_epochs_fraction=0.6)
    assert recipe.min_epochs(10) == 6
    result, _, _ = _train(recipe, tmp_path, "tiny_still_model", epochs=10, lr=0.0)
    assert result.best_epoch == 1
    assert result.epochs == 6
    validation = [r for r in result.history if r["split"] == "validation"]
    assert [r["epoch"] for r in validation] == [1, 2, 3, 4, 5, 6]


def test_the_modern_recipe_never_stops_in_the_first_half() -> None:
    assert recipes.MODERN.min_epochs(150) == 75
    assert recipes.MODERN.min_epochs(61) == 31  # rounded up: at least half
    assert "not before 50% of the epochs" in recipes.MODERN.describe()
    with pytest.raises(ValueError, match="min_epochs_fraction"):
        dataclasses.replace(recipes.MODERN, min_epochs_fraction=1.5)


def test_early_stopping_restores_the_best_epochs_weights(tmp_path) -> None:
    recipe = dataclasses.replace(recipes.MODERN, patience=3, tta=False)
    result, settings, checkpoint = _train(recipe, tmp_path, epochs=8, lr=3e-3)
    validation = {r["epoch"]: r["dice"] for r in result.history if r["split"] == "validation"}
    best = max(validation.values())
    assert result.best_epoch == min(e for e, d in validation.items() if d == best)
    # The kept weights are the best epoch's: scoring them on the validation images again
    # gives the Dice recorded for that epoch.
    model = runner._build_model("unet_thesis", settings)
    model.load_state_dict(result.model_state)
    _, held_out = carve_validation(_tiny_split().train, settings.validation_seed)
    data = runner._DeviceSplit.of(held_out, torch.device("cpu"))
    again = runner.evaluate_scores(
        model, data.images, data.labels, "dice_ce", 8, torch.device("cpu"), num_classes=3
    )
    assert again.dice == pytest.approx(best, abs=1e-9)
    # The epoch checkpoint holds the last epoch's weights and the best ones beside them.
    state = runner.load_resume_state(checkpoint)
    assert state["best_epoch"] == result.best_epoch
    for name, tensor in result.model_state.items():
        assert torch.equal(state["best_state"][name], tensor)
    if result.best_epoch != result.epochs:
        assert any(not torch.equal(state["model"][k], v) for k, v in result.model_state.items())


# ---------------------------------------------------------------------------- bench run


def test_bench_run_modern_trains_builtins_and_plugins_alike(
    tmp_path, fresh_registry, capsys
) -> None:
    plugin = tmp_path / "tiny_plugin.py"
    plugin.write_text(tiny_plugin_source("tiny_recipe_model"))
    out = tmp_path / "run"
    argv = run_argv(
        "unet_thesis",
        "tiny_recipe_model",
        plugin=str(plugin),
        recipe="modern",
        epochs=3,
        out=str(out),
    )
    assert main(argv) == 0
    # 8 training images of fold 0 (12 synthetic, 3 folds): 2 held out by source image
    assert (
        "up to 3 epochs each (early stopping), 6 training / 4 test images per epoch "
        "(2 training images held out for validation)" in capsys.readouterr().err
    )
    meta = json.loads((out / "config.json").read_text())
    assert meta["config"]["recipe"] == "modern"
    assert meta["config"]["recipe_settings"] == recipes.MODERN.to_dict()
    assert meta["config"]["loss"] == "dice_ce" and meta["config"]["optimizer"] == "adamw"
    tables = RunDir(out).tables()
    assert {r["architecture"] for r in tables.cells} == {"unet_thesis", "tiny_recipe_model"}
    for row in tables.cells:
        assert row["status"] == "ok"
        assert 1 <= row["best_epoch"] <= row["epochs"] <= 3
    splits = {r["split"] for r in tables.history}
    assert splits == {"train", "test", "validation"}
    report = (out / "report.md").read_text()
    assert "Recipe `modern`" in report and "early stopping" in report


def test_a_flag_wins_over_the_recipe(tmp_path) -> None:
    out = tmp_path / "run"
    argv = run_argv("unet_thesis", recipe="modern", loss="cross_entropy", lr=3e-4, out=str(out))
    assert main(argv) == 0
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["loss"] == "cross_entropy" and config["lr"] == 3e-4
    assert config["epochs"] == 2  # run_argv's --epochs, not the recipe's 60


def _numbers(run):
    tables = RunDir(run).tables()
    history = [
        (r["seed"], r["epoch"], r["split"], round(r["loss"], 6), round(r["dice"] or -1, 6))
        for r in tables.history
    ]
    images = [(r["seed"], r["image_id"], r["class"], round(r["dice"], 6)) for r in tables.per_image]
    cells = [(r["seed"], r["epochs"], r["best_epoch"]) for r in tables.cells]
    return history, images, cells


def test_a_cut_modern_cell_resumes_to_the_uninterrupted_numbers(tmp_path, monkeypatch) -> None:
    argv = run_argv("unet_thesis", recipe="modern", epochs=4, deterministic=True)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main([*argv, "--out", str(whole)]) == 0

    def stop_after_two(result, epoch):
        if epoch == 2:
            raise runner.CellInterrupted()

    on_epoch_end(monkeypatch, stop_after_two)
    assert main([*argv, "--out", str(cut)]) == 130
    state = torch.load(cut / "resume" / "unet_thesis_seed0_fold0.pt", weights_only=True)
    assert state["epoch"] == 2 and "scheduler" in state and "best_state" in state
    on_epoch_end(monkeypatch, None)
    assert main([*argv, "--out", str(cut)]) == 0
    assert _numbers(cut) == _numbers(whole)


def test_predict_reproduces_a_modern_runs_flip_averaged_predictions(tmp_path) -> None:
    run = tmp_path / "run"
    argv = run_argv("unet_thesis", recipe="modern", epochs=2, deterministic=True, out=str(run))
    assert main(argv) == 0
    directory = RunDir(run)
    ids = directory.figure_input_ids()
    out = tmp_path / "predicted"
    checkpoint = run / "checkpoints" / "unet_thesis_seed0_fold0.pt"
    assert (
        main(
            ["predict", str(checkpoint), *map(str, map(directory.input_path, ids))]
            + ["--out", str(out)]
        )
        == 0
    )
    for image_id in ids:
        saved = read_mask(directory.prediction_path("unet_thesis", 0, image_id, 0))
        np.testing.assert_array_equal(read_mask(out / f"{image_id}.png"), saved)
