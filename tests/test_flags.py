"""Did a model learn, had it converged: flags from the rows, and what they change."""

from __future__ import annotations

import numpy as np

from bench import flags, stats


def history(losses, name="a", seed=0, fold=0, split="test"):
    return [
        {"architecture": name, "seed": seed, "fold": fold, "epoch": e, "split": split, "loss": v}
        for e, v in enumerate(losses, start=1)
    ]


def image_rows(name, cls, tp, fp, fn, seed=0, fold=0, n=3, dice=0.5):
    return [
        {
            "architecture": name,
            "seed": seed,
            "fold": fold,
            "image_id": f"{i}",
            "class": cls,
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "tn": 100,
            "dice": dice,
        }
        for i in range(n)
    ]


def test_window_is_a_fifth_of_the_epochs_at_least_three():
    assert [flags.window(e) for e in (1, 10, 15, 30, 100)] == [3, 3, 3, 6, 20]


def test_a_flat_curve_has_converged_a_falling_one_has_not():
    flat = [1.0, 0.6, 0.45, 0.41, 0.40, 0.40, 0.41, 0.40]
    assert flags.convergence_problem(history(flat)) is None
    falling = list(np.linspace(0.85, 0.40, 30))  # as deconvnet's test loss in 30 epochs
    problem = flags.convergence_problem(history(falling))
    assert problem.startswith("loss still falling over the last 6 epochs (test loss")
    noisy_but_flat = [0.5, 0.4, 0.41, 0.39, 0.42, 0.40, 0.41, 0.39, 0.41]
    assert flags.convergence_problem(history(noisy_but_flat)) is None


def test_early_stopped_runs_are_judged_by_their_validation_dice():
    # Training loss still falling (a decaying rate) but the validation Dice peaked at
    # epoch 10 of 25: early stopping's own criterion says it had converged.
    train = history(list(np.linspace(0.9, 0.2, 25)), split="train")
    peaked = [0.5 + 0.04 * min(e, 10) - 0.001 * max(0, e - 10) for e in range(1, 26)]
    validation = [
        {**row, "dice": dice}
        for row, dice in zip(history([0.3] * 25, split="validation"), peaked, strict=True)
    ]
    assert flags.convergence_problem(train + validation) is None
    # Still rising at the end: the error 1 - Dice fell from 0.30 to 0.25 over the last 5.
    rising = [{**row, "dice": 0.5 + 0.01 * row["epoch"]} for row in validation]
    problem = flags.convergence_problem(train + rising)
    assert problem == "validation Dice still rising over the last 5 epochs (best 0.7 → 0.75)"
    # Creeping up by a hair as a cosine rate reaches 0 (error 0.0166 → 0.0165): converged.
    creeping = [
        {**row, "dice": 0.98 + 0.0035 * min(1, row["epoch"] / 10) + 0.000004 * row["epoch"]}
        for row in validation
    ]
    assert flags.convergence_problem(train + creeping) is None
    # Near a Dice of 1 a tiny gain is a large relative cut of the error (0.0030 → 0.0027,
    # 10 %) but a rise of 0.0003, below MIN_DICE_GAIN: converged. A rise of 0.002 is not.
    for step, expected in ((0.0003, None), (0.002, "validation Dice still rising")):
        near_one = [
            {**row, "dice": 0.997 + (step if row["epoch"] == 24 else 0.0)} for row in validation
        ]
        problem = flags.convergence_problem(train + near_one)
        if expected is None:
            assert problem is None
        else:
            assert problem.startswith(expected)


def test_too_few_epochs_cannot_show_convergence():
    assert flags.convergence_problem(history([0.9])) == "1 epoch: too few to show convergence"
    assert "5 epochs: too few" in flags.convergence_problem(history([0.9] * 5))


def test_a_class_almost_never_predicted_is_not_learned():
    learned = image_rows("a", "nucleus", tp=50, fp=10, fn=20)
    assert flags.unlearned_classes(learned, ["nucleus"]) == []
    never = image_rows("a", "nucleus", tp=0, fp=1, fn=70)  # 1 of 70 true pixels' worth
    assert flags.unlearned_classes(never, ["nucleus"]) == ["nucleus"]
    absent = image_rows("a", "nucleus", tp=0, fp=0, fn=0)  # not in the truth: nothing to learn
    assert flags.unlearned_classes(absent, ["nucleus"]) == []
    # Without counts (older run directories): a mean Dice near 0.
    old = [{k: v for k, v in r.items() if k not in ("tp", "fp", "fn", "tn")} for r in never]
    assert flags.unlearned_classes([{**r, "dice": 0.0004} for r in old], ["nucleus"]) == ["nucleus"]


def test_flags_per_architecture_count_the_runs():
    cells = [{"architecture": "a", "seed": s, "fold": 0, "status": "ok"} for s in (0, 1, 2)] + [
        {"architecture": "b", "seed": 0, "fold": 0, "status": "ok"}
    ]
    per_image = (
        image_rows("a", "nucleus", 0, 0, 50, seed=0)
        + image_rows("a", "nucleus", 40, 5, 10, seed=1)
        + image_rows("a", "nucleus", 0, 1, 50, seed=2)
        + image_rows("b", "nucleus", 40, 5, 10)
    )
    flat = [1.0, 0.5] + [0.4] * 8
    curves = [r for s in (0, 1, 2) for r in history(flat, "a", s)] + history(flat, "b")
    found = flags.architecture_flags(cells, curves, per_image, ["nucleus"])
    assert found == {"a": ["does not learn nucleus (predicts < 5% of its pixels) in 2 of 3 runs"]}


def test_significance_is_only_given_between_unflagged_architectures():
    rng = np.random.default_rng(0)
    good = 0.9 + 0.02 * rng.standard_normal(30)

    def rows_for(name, values):
        return [
            {"architecture": name, "seed": 0, "fold": 0, "image_id": f"{i}", "class": c, "dice": v}
            for i, v in enumerate(values)
            for c in ("cytoplasm", "nucleus")
        ]

    rows = rows_for("good", good) + rows_for("worse", good - 0.1) + rows_for("barely", good - 0.5)
    table = {r["architecture"]: r for r in stats.statistics_rows(rows, flagged={"barely"})}
    assert table["worse"]["reference"] == "good" and table["worse"]["significant"]
    assert table["barely"]["flagged"] and "significant" not in table["barely"]
    assert table["barely"]["mean_rank"] is None and table["barely"]["image_mean"] < 0.5
    both = stats.statistics_rows(
        rows_for("x", good) + rows_for("y", good - 0.1), flagged={"x", "y"}
    )
    assert not any(r.get("significant") for r in both)


def test_a_cell_that_early_stopping_ended_is_not_judged_still_rising():
    # The shape of a real cell (wbc1, unet_thesis, fold 4 at --epochs 150): the validation
    # Dice rose to its best at epoch 72 and then went 15 epochs (the patience) without a
    # better one, so early stopping ended it at 87. The check's window, a fifth of 87 = 17
    # epochs, still holds epoch 72, so on its curve alone the cell reads "still rising".
    dice = [0.80 + 0.002 * e for e in range(1, 73)] + [0.93] * 15
    train = history(list(np.linspace(0.9, 0.5, 87)), split="train")
    validation = [
        {**r, "dice": d} for r, d in zip(history([0.3] * 87, split="validation"), dice, strict=True)
    ]
    assert flags.convergence_problem(train + validation) is not None
    cell = {"architecture": "a", "seed": 0, "fold": 0, "status": "ok", "epochs": 87}
    per_image = image_rows("a", "nucleus", 40, 5, 10)
    stopped = {**cell, "best_epoch": 72}
    assert flags.ended_by_early_stopping(stopped, 150)
    assert (
        flags.architecture_flags([stopped], train + validation, per_image, ["nucleus"], 150) == {}
    )
    # The same curve from a cell whose budget was 87 epochs: the budget ended it, and it is
    # flagged; so is a run whose budget is not given (older callers).
    for budget in (87, None):
        found = flags.architecture_flags(
            [stopped], train + validation, per_image, ["nucleus"], budget
        )
        assert found["a"][0].startswith("validation Dice still rising over the last 17 epochs")
    # A run without a validation split (no best_epoch) is judged by its curves whatever
    # its budget.
    assert not flags.ended_by_early_stopping({**cell, "best_epoch": None}, 150)
    assert not flags.ended_by_early_stopping({**cell, "best_epoch": ""}, 150)
