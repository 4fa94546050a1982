"""Did a model learn, and had it converged? Flags computed from a run's rows (pure).

A ranking or a significance test between models that never learned a class, or that were
stopped while their loss was still falling, compares training budgets, not architectures.
Such cells are flagged; the report marks their architectures in every table and gives the
verdict "significant" only between architectures that are not flagged.

- **Did not learn a class**: over a cell's test images, the pixels it predicts as a
  non-background class that is present in the truth are fewer than
  :data:`MIN_PREDICTED_SHARE` of the class's true pixels (it never, or almost never,
  predicts the class). Directories without confusion counts fall back on a mean Dice
  below :data:`MIN_PREDICTED_SHARE`.
- **Not converged**: the train or test loss fell by more than :data:`STILL_FALLING` (relative)
  from the mean of the ``k`` epochs before the last ``k`` to the mean of the last ``k``, with
  ``k`` = :func:`window` (a fifth of the epochs, at least 3). A run too short to have two
  such windows cannot show convergence and is flagged as such. A run that selected its
  weights on a validation split (early stopping, ``validation`` history rows) is judged by
  that criterion instead: it is flagged when the best validation Dice of its last ``k``
  epochs cut the error (1 − Dice) of the best epoch before them by more than
  :data:`STILL_FALLING` (relative) and raised the Dice by more than :data:`MIN_DICE_GAIN`
  (absolute): it was still rising when training ended. The absolute floor matters near a
  Dice of 1, where a relative cut of the error is a gain far below any difference a
  comparison can resolve (0.9970 → 0.9973 cuts the error by 10 %). Its train
  loss may still fall by design (a decaying rate, a model starting to overfit); that says
  nothing of the kept weights. A cell that early stopping ended before the run's epoch
  budget is not judged at all: it went ``patience`` epochs without a better validation
  Dice, and the window above (a fifth of its epochs) may be longer than the patience.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

MIN_PREDICTED_SHARE = 0.05
STILL_FALLING = 0.05
#: The smallest rise of the best validation Dice that counts as "still rising": a tenth of
#: a Dice point, 40x below the seed-to-seed spread of the committed speed and recipe
#: measurements (0.04-0.06, reports/performance/, reports/recipe/).
MIN_DICE_GAIN = 0.001
MIN_WINDOW = 3


def window(epochs: int) -> int:
    """Epochs per window of the convergence check: a fifth of the run, at least 3."""
    return max(MIN_WINDOW, round(epochs / 5))


def unlearned_classes(per_image: Sequence[Mapping[str, Any]], classes: Sequence[str]) -> list[str]:
    """The ``classes`` present in the truth that one cell (its rows) almost never predicts."""
    missing = []
    for cls in classes:
        rows = [r for r in per_image if r["class"] == cls]
        if not rows:
            continue
        if all(r.get("tp") is not None for r in rows):
            truth = sum(r["tp"] + r["fn"] for r in rows)
            predicted = sum(r["tp"] + r["fp"] for r in rows)
            if truth > 0 and predicted < MIN_PREDICTED_SHARE * truth:
                missing.append(cls)
        elif float(np.mean([float(r["dice"]) for r in rows])) < MIN_PREDICTED_SHARE:
            missing.append(cls)
    return missing


def convergence_problem(history: Sequence[Mapping[str, Any]]) -> str | None:
    """Why one cell's loss curves do not show convergence, or None."""
    epochs = sorted({int(r["epoch"]) for r in history})
    if not epochs:
        return None
    k = window(len(epochs))
    if len(epochs) < 2 * k:
        return f"{len(epochs)} epoch{'s' if len(epochs) != 1 else ''}: too few to show convergence"
    validation = {
        int(r["epoch"]): float(r["dice"])
        for r in history
        if r["split"] == "validation" and r.get("dice") not in (None, "")
    }
    if validation:
        series = [validation[e] for e in epochs if e in validation]
        if len(series) >= 2 * k:
            # The error (1 - Dice) the best epoch of the last k reached against the best
            # before them: still falling by more than STILL_FALLING, as for the losses.
            before, last = 1 - max(series[:-k]), 1 - max(series[-k:])
            gain = before - last
            if before > 0 and gain / before > STILL_FALLING and gain > MIN_DICE_GAIN:
                return (
                    f"validation Dice still rising over the last {k} epochs (best "
                    f"{1 - before:.4g} → {1 - last:.4g})"
                )
        return None
    falling = []
    for split in ("train", "test"):
        losses = {int(r["epoch"]): float(r["loss"]) for r in history if r["split"] == split}
        series = [losses[e] for e in epochs if e in losses]
        if len(series) < 2 * k:
            continue
        before, last = np.mean(series[-2 * k : -k]), np.mean(series[-k:])
        if before > 0 and (before - last) / before > STILL_FALLING:
            falling.append(f"{split} loss {before:.3g} → {last:.3g}")
    if not falling:
        return None
    return f"loss still falling over the last {k} epochs ({', '.join(falling)})"


def ended_by_early_stopping(cell: Mapping[str, Any], max_epochs: int | None) -> bool:
    """Whether early stopping, not the epoch budget, ended a cell: it selected its weights
    on a validation split (``best_epoch``) and trained fewer than ``max_epochs`` epochs."""
    if max_epochs is None or cell.get("best_epoch") in (None, ""):
        return False
    return int(cell["epochs"]) < max_epochs


def architecture_flags(
    cells: Sequence[Mapping[str, Any]],
    history: Sequence[Mapping[str, Any]],
    per_image: Sequence[Mapping[str, Any]],
    classes: Sequence[str],
    max_epochs: int | None = None,
) -> dict[str, list[str]]:
    """``{architecture: [reason, ...]}`` over its successful runs; unflagged ones absent.

    A reason says in how many of the architecture's runs it holds ("in 2 of 3 runs").
    ``max_epochs`` is the run's epoch budget: a cell that early stopping ended before it
    had gone ``patience`` epochs without a better validation Dice, which is its own
    criterion of convergence, so its curve is not judged again (the window of the check,
    a fifth of the epochs, can exceed the patience and would hold the best epoch).
    """
    found: dict[str, dict[str, list[str]]] = {}  # architecture -> kind -> details
    runs: dict[str, int] = {}
    for cell in cells:
        if cell["status"] != "ok":
            continue
        name = cell["architecture"]
        key = (name, cell["seed"], cell["fold"])
        runs[name] = runs.get(name, 0) + 1
        mine = found.setdefault(name, {})
        rows = [r for r in per_image if (r["architecture"], r["seed"], r["fold"]) == key]
        for cls in unlearned_classes(rows, classes):
            text = f"does not learn {cls} (predicts < {MIN_PREDICTED_SHARE:.0%} of its pixels)"
            mine.setdefault(text, []).append(text)
        curve = [r for r in history if (r["architecture"], r["seed"], r["fold"]) == key]
        problem = None if ended_by_early_stopping(cell, max_epochs) else convergence_problem(curve)
        if problem:
            # Runs differ in their numbers: group them by the kind of problem.
            mine.setdefault(problem.split(" (")[0], []).append(problem)
    flags = {}
    for name, kinds in found.items():
        if not kinds:
            continue
        if runs[name] == 1:
            flags[name] = [details[0] for details in kinds.values()]
        else:
            flags[name] = [
                f"{kind} in {len(details)} of {runs[name]} runs" for kind, details in kinds.items()
            ]
    return flags
