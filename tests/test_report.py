"""The report's text: a verdict computed from the data, headings per protocol, published
rows that are never ranked, a banner on partial runs, and no "1 epochs"."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from bench import report
from bench.cli import main
from bench.run_dir import RunTables, cell_stem, summary_columns
from bench.suite import SuiteInterrupted

from tiny_runs import run_argv

CLASSES = ("background", "cytoplasm", "nucleus", "cell")
NOT_CONVERGED = "loss still falling over the last 3 epochs (train loss 0.5 → 0.4)"
NO_NUCLEUS = "does not learn nucleus (predicts < 5% of its pixels)"


def summary_row(name: str, **values: Any) -> dict[str, Any]:
    """A summary.csv row (every column None) with ``values`` set."""
    row: dict[str, Any] = dict.fromkeys(summary_columns(CLASSES))
    row.update(architecture=name, status="ok", error="", flags="", runs=1, seeds=1, images=30)
    row.update(values)
    return row


def stats_row(name: str, mean: float, **values: Any) -> dict[str, Any]:
    """A statistics.csv row of ``name`` (compared with nothing unless ``values`` say so)."""
    row: dict[str, Any] = {
        "architecture": name,
        "runs": 1,
        "seeds": 1,
        "run_mean": mean,
        "run_sem": float("nan"),
        "images": 30,
        "image_mean": mean,
        "image_sem": 0.005,
        "mean_rank": None,
        "flagged": False,
    }
    row.update(values)
    return row


def compared(name: str, mean: float, best: str, median: float, p_holm: float, **values: Any):
    """A statistics row compared with ``best``: median difference, CI ±0.01 around it."""
    return stats_row(
        name,
        mean,
        reference=best,
        n_paired=30,
        median_difference=median,
        ci_low=median - 0.01,
        ci_high=median + 0.01,
        p_value=p_holm / 2,
        p_holm=p_holm,
        significant=p_holm < 0.05,
        **values,
    )


def make_meta(protocol: str = "clean", **config: Any) -> dict[str, Any]:
    thesis = protocol in ("thesis", "thesis-noleak")
    values: dict[str, Any] = {
        "architectures": ["unet_thesis", "segnet_basic"],
        "seeds": [0],
        "folds_run": [None] if thesis else [0],
        "num_folds": 5,
        "split_seed": 0,
        "epochs": 30,
        "batch_size": 20,
        "optimizer": "adam",
        "lr": 1e-4,
        "loss": "cross_entropy",
        "width": 0.25,
        "encoder": "resnet18",
        "out": "runs/x",
    }
    values.update(config)
    return {
        "format_version": 2,
        "command": "bench run unet_thesis segnet_basic --out runs/x",
        "config": values,
        "dataset": {
            "name": "wbc1",
            "images": 300,
            "class_names": list(CLASSES[:3]),
            "metric_classes": list(CLASSES),
            "palette": [0, 128, 255],
        },
        "protocol": {
            "name": protocol,
            "summary": "A protocol.",
            "train_images": 240,
            "test_images": 30 if thesis else 60,
            "input_size": [120, 120],
            "leaked_test_images": 24 if protocol == "thesis" else 0,
            "fixed_split": thesis,
            "thesis_reference": thesis,
        },
        "architectures": {
            name: {"source": "builtin", "width_note": "", "options": {}}
            for name in values["architectures"]
        },
        "environment": {
            "device_name": "CPU: Test CPU (2 threads)",
            "python": "3.11",
            "torch": "2",
            "segmentation_models_pytorch": "0.6",
            "bench": "0.1",
            "git_commit": "abc",
        },
        "started_utc": "2026-01-01T00:00:00Z",
        "finished_utc": "2026-01-01T01:00:00Z",
    }


def verdict(summary, statistics, meta=None) -> str:
    lines = report.verdict_section(summary, statistics, meta or make_meta())
    assert lines[0].startswith("**Verdict.** ") and lines[1:] == [""]
    text = lines[0].removeprefix("**Verdict.** ")
    sentences = re.split(r"(?<=[.:])\s+(?=[A-Z`])", text)
    # Sentences end with a full stop; "`a`: ..." after a colon is the same sentence.
    count = len(re.findall(r"\.(?:\s|$)", text))
    assert 3 <= count <= 5, (count, sentences)
    return text


# ---------------------------------------------------------------------- the verdict

SUMMARY = [
    summary_row("unet_thesis", train_seconds=300.0, params=1_643_283),
    summary_row("segnet_basic", train_seconds=200.0, params=1_069_379),
    summary_row("deconvnet", train_seconds=900.0, params=2_112_979),
]


def test_verdict_names_a_clear_and_significant_winner_with_its_cost():
    statistics = [
        stats_row("unet_thesis", 0.92, mean_rank=1.2),
        compared("segnet_basic", 0.90, "unet_thesis", -0.02, 0.001, mean_rank=1.9),
        compared("deconvnet", 0.85, "unet_thesis", -0.07, 0.0001, mean_rank=2.9),
    ]
    text = verdict(SUMMARY, statistics)
    assert text.startswith("`unet_thesis` is best on the primary endpoint, mean foreground Dice")
    assert "0.9200 ± 0.0050 over 30 test images, mean rank 1.20 among 3 unflagged" in text
    # The runner-up's difference, as best − runner-up, with its CI turned the same way.
    assert "Next is `segnet_basic` (0.9000)" in text
    assert "+0.0200 per image, 95 % CI [+0.0100, +0.0300]" in text
    assert "significant after Holm's correction (p = 0.0010)" in text
    assert "not significant" not in text
    assert "trains in 300.0 s per run (fastest: `segnet_basic`, 200.0 s)" in text
    assert "has 1,643,283 parameters (smallest: `segnet_basic`, 1,069,379 parameters)" in text
    assert "Flagged" not in text and "failed" not in text
    # A p below what four decimals show reads "p < 0.0001", not "p = < 0.0001".
    statistics[1] = compared("segnet_basic", 0.90, "unet_thesis", -0.02, 0.00001, mean_rank=1.9)
    text = verdict(SUMMARY, statistics)
    assert "significant after Holm's correction (p < 0.0001)" in text


def test_verdict_says_when_the_margin_is_not_significant():
    statistics = [
        stats_row("segnet_basic", 0.91, mean_rank=1.4),
        compared("unet_thesis", 0.905, "segnet_basic", -0.004, 0.31, mean_rank=1.6),
    ]
    text = verdict(SUMMARY[:2], statistics)
    assert text.startswith("`segnet_basic` is best")
    assert "not significant after Holm's correction (p = 0.3100)" in text
    assert "not told apart" in text
    # The best is also the fastest and the smallest: said once, not as a comparison.
    assert "it is the fastest to train (200.0 s per run) and is the smallest" in text


def test_verdict_with_every_architecture_flagged_draws_none_and_says_why():
    summary = [
        summary_row("unet_thesis", flags=NOT_CONVERGED, train_seconds=300.0, params=10),
        summary_row("segnet_basic", flags=f"{NO_NUCLEUS}; {NOT_CONVERGED}", params=5),
    ]
    statistics = [
        stats_row("unet_thesis", 0.92, flagged=True),
        stats_row("segnet_basic", 0.40, flagged=True),
    ]
    text = verdict(summary, statistics)
    assert text.startswith(
        "No verdict can be drawn: both architectures are flagged ⚠ — `unet_thesis` (not "
        "converged) and `segnet_basic` (did not learn nucleus, not converged) — so none is "
        "ranked or tested for significance"
    )
    assert "see *Flags*" in text and "`--epochs`" in text
    assert "is best" not in text and "significant" not in text.replace("for significance", "")
    assert "fastest to train `unet_thesis` (300.0 s per run)" in text
    assert "smallest `segnet_basic` (5 parameters)" in text
    # Many flagged architectures are grouped by the kind of flag.
    many = [summary_row(f"a{i}", flags=NOT_CONVERGED, params=i + 1) for i in range(4)]
    many[0]["flags"] += f"; {NO_NUCLEUS}"
    text = verdict(many, [stats_row(r["architecture"], 0.9, flagged=True) for r in many])
    assert (
        "all 4 architectures are flagged ⚠ (not converged: all 4; did not learn nucleus: " in text
    )


def test_verdict_with_one_architecture_has_nothing_to_compare():
    summary = [summary_row("smp_unet", flags=NOT_CONVERGED, train_seconds=325.5, params=11)]
    meta = make_meta(architectures=["smp_unet"])
    text = verdict(summary, [stats_row("smp_unet", 0.9284)], meta)
    assert text.startswith("Only one architecture was run, `smp_unet`: nothing to compare")
    assert "is 0.9284 ± 0.0050 over 30 test images" in text
    assert "Cost: it trains in 325.5 s per run and has 11 parameters." in text
    assert "fastest" not in text
    assert "flagged ⚠ (not converged; see *Flags*)" in text


def test_verdict_leaves_out_a_failed_architecture_and_points_to_failures():
    summary = [
        *SUMMARY[:2],
        summary_row("e2e_nan", status="failed", error="NonFiniteLoss", images=0),
    ]
    statistics = [
        stats_row("unet_thesis", 0.92, mean_rank=1.1),
        compared("segnet_basic", 0.90, "unet_thesis", -0.02, 0.002, mean_rank=1.9),
    ]
    text = verdict(summary, statistics)
    assert text.startswith("`unet_thesis` is best")
    assert "`e2e_nan` failed and has no results (see *Failures*)." in text


def test_verdict_lists_flagged_architectures_beside_a_winner():
    summary = [*SUMMARY[:2], summary_row("smp_unet", flags=f"{NO_NUCLEUS}; {NOT_CONVERGED}")]
    statistics = [
        stats_row("unet_thesis", 0.92, mean_rank=1.1),
        compared("segnet_basic", 0.90, "unet_thesis", -0.02, 0.002, mean_rank=1.9),
        stats_row("smp_unet", 0.95, flagged=True),  # higher, but flagged: not the winner
    ]
    text = verdict(summary, statistics)
    assert text.startswith("`unet_thesis` is best")
    assert (
        "`smp_unet` (did not learn nucleus, not converged) is flagged ⚠ and left out of the "
        "ranking (see *Flags*)." in text
    )


def test_verdict_on_the_leaking_thesis_protocol_says_so():
    statistics = [
        stats_row("unet_thesis", 0.92, mean_rank=1.2),
        compared("segnet_basic", 0.90, "unet_thesis", -0.02, 0.001, mean_rank=1.8),
    ]
    text = verdict(SUMMARY[:2], statistics, make_meta("thesis"))
    assert "on the leaking `thesis` split: 24 of the 30 test images have a twin" in text


# ---------------------------------------------------------------------- whole reports


def per_image_rows(name: str, scores: list[float], seed: int = 0, fold: Any = 0):
    rows = []
    for i, score in enumerate(scores):
        for cls in CLASSES:
            rows.append(
                {
                    "architecture": name,
                    "seed": seed,
                    "fold": fold,
                    "image_id": f"img{i}",
                    "class": cls,
                    "jaccard": score,
                    "dice": score,
                    "accuracy": score,
                    "jaccard_legacy": score,
                }
            )
    return rows


def cell_row(name: str, seed: int = 0, fold: Any = 0) -> dict[str, Any]:
    return {
        "architecture": name,
        "seed": seed,
        "fold": fold,
        "status": "ok",
        "error": "",
        "params": 1000,
        "gflops": 0.5,
        "train_seconds": 10.0,
        "total_seconds": 12.0,
        "images_per_second": 5.0,
        "peak_memory_mb": 100.0,
        "train_loss": 0.02,  # below the published losses: ours are bold, theirs never
        "train_accuracy": 0.9,
        "test_loss": 0.03,
        "test_accuracy": 0.9,
    }


def render(meta: dict[str, Any], cells=None, per_image=None, run_dir=None) -> str:
    """report.md's text for crafted rows (summary and statistics derived as render_locked
    derives them; no flags)."""
    from bench import stats
    from bench.aggregate import summarize

    fold = meta["config"]["folds_run"][0]
    if cells is None:
        cells = [cell_row(name, fold=fold) for name in meta["config"]["architectures"]]
    if per_image is None:
        per_image = []
        for k, name in enumerate(meta["config"]["architectures"]):
            per_image += per_image_rows(name, [0.99 - 0.1 * k] * 2, fold=fold)
    summary = summarize(cells, per_image, CLASSES)
    for row in summary:
        row["flags"] = ""
    statistics = stats.statistics_rows(per_image, ("cytoplasm", "nucleus"))
    tables = RunTables(cells, [], per_image)
    return report.render_markdown(meta, tables, summary, statistics, run_dir)


@pytest.mark.parametrize("protocol", ["clean", "thesis", "thesis-noleak"])
def test_headings_name_the_thesis_tables_only_under_thesis_protocols(protocol):
    text = render(make_meta(protocol))
    thesis = protocol != "clean"
    for heading in (
        "## Final accuracy",
        "## Final loss",
        "## Segmentation quality on the test images",
    ):
        assert heading in text
    for number in (1, 2, 3):
        assert (f"(thesis Table {number})" in text) is thesis
    assert ("thesis Figure" in text) is thesis
    # Published rows sit in the thesis protocols' tables; a clean run on wbc1 is held
    # against the published U-Net in a section of its own instead.
    goal = "## Against the thesis's published numbers"
    assert (goal in text) is not thesis
    assert ("published" in text.split(goal)[0]) is thesis


def test_a_plugin_model_on_clean_gets_plain_headings():
    meta = make_meta("clean", architectures=["my_plugin"])
    assert "thesis Table" not in render(meta)


@pytest.mark.parametrize("protocol", ["thesis", "thesis-noleak"])
def test_published_rows_are_never_bold_and_say_what_they_were(protocol):
    text = render(make_meta(protocol))
    published = [line for line in text.splitlines() if "thesis 2019 (published" in line]
    assert len(published) == 9  # three models in the loss, quality and cost tables
    assert all("**" not in line for line in published)
    assert all("Keras, full width, 30 epochs" in line for line in published)
    # Our losses are below the published ones and still get the bold of the best.
    assert "| unet_thesis | **0.0200** | **0.0300** |" in text
    # The quality table's best Dice is ours, though the published U-Net row is higher.
    assert "| unet_thesis | **0.9900 ± 0.0000**" in text
    assert "not comparable as a ranking with this run (30 epochs, width 0.25" in text


def test_partial_banner_counts_the_planned_cells_and_says_how_to_resume():
    meta = make_meta(seeds=[0, 1], out=None)
    meta["command"] = "bench run unet_thesis segnet_basic --seeds 0 1"
    meta["finished_utc"] = None
    cells = [cell_row("unet_thesis", 0), cell_row("unet_thesis", 1), cell_row("segnet_basic", 0)]
    per_image = per_image_rows("unet_thesis", [0.9, 0.8])
    per_image += per_image_rows("unet_thesis", [0.9, 0.8], seed=1)
    per_image += per_image_rows("segnet_basic", [0.7, 0.6])
    text = render(meta, cells, per_image, run_dir=Path("/anywhere/runs/20260101T000000Z_clean"))
    lines = text.splitlines()
    assert lines[2].startswith("> **Partial run: 3 of 4 cells finished**")
    # A default out dir is new at every invocation: the command names this one.
    assert (
        "resume with `bench run unet_thesis segnet_basic --seeds 0 1 --out "
        "runs/20260101T000000Z_clean`" in lines[2]
    )
    # Two architectures were planned: the one with results is not "the only one run".
    assert lines[4].startswith("**Verdict.** `unet_thesis` is best")


def test_an_unfinished_run_with_every_cell_gets_a_banner_too():
    meta = make_meta()
    meta["finished_utc"] = None
    banner = render(meta).splitlines()[2]
    assert banner.startswith("> **Unfinished run:** all 2 cells finished")
    assert "resume with `bench run unet_thesis segnet_basic --out runs/x`" in banner


def test_a_finished_complete_run_has_no_banner():
    text = render(make_meta())
    assert "Partial run" not in text and "Unfinished run" not in text


def test_singular_and_plural_words():
    meta = make_meta(epochs=1, architectures=["smp_unet"], seeds=[0])
    meta["architectures"]["smp_unet"]["options"] = {"encoder": "resnet18"}
    meta["environment"]["device_name"] = "CPU: Test CPU (1 threads)"  # as old runs wrote it
    cells = [cell_row("smp_unet")]
    text = render(meta, cells, per_image_rows("smp_unet", [0.9]))
    for right, wrong in (
        ("Training: 1 epoch,", "1 epochs"),
        (", seed 0.", "seeds 0"),
        ("(1 thread)", "1 threads"),
        ("over the 1 test image.", "1 test images"),
        ("over 1 test image.", "1 test images"),
    ):
        assert right in text, right
        assert wrong not in text, wrong
    assert "smp encoder `resnet18` (no pretrained weights)" in text
    two = make_meta(epochs=2, seeds=[0, 1])
    text = render(two)
    assert "Training: 2 epochs," in text and ", seeds 0, 1." in text


def test_the_encoder_line_prints_the_recorded_weights():
    meta = make_meta(architectures=["smp_unet"], encoder_weights="imagenet")
    meta["architectures"]["smp_unet"]["options"] = {"encoder": "resnet18"}
    text = render(meta, [cell_row("smp_unet")], per_image_rows("smp_unet", [0.9]))
    assert "smp encoder `resnet18` (pretrained weights: imagenet)" in text
    # Without an smp model the encoder is not part of the method.
    assert "smp encoder" not in render(make_meta())


# ---------------------------------------------------------------------- real run directories


def test_a_cut_real_run_renders_a_partial_report(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(run_argv("segnet_basic", seeds=[0, 1], epochs=1, out=out)) == 0
    (out / "cells" / f"{cell_stem('segnet_basic', 1, 0)}.json").unlink()
    meta = json.loads((out / "config.json").read_text())
    meta["finished_utc"] = None
    (out / "config.json").write_text(json.dumps(meta))
    assert main(["report", str(out)]) == 0
    text = (out / "report.md").read_text()
    banner = text.splitlines()[2]
    assert banner.startswith("> **Partial run: 1 of 2 cells finished**")
    assert f"resume with `{meta['command']}`" in banner and str(out) in banner
    assert "Only one architecture was run, `segnet_basic`" in text
    assert "1 epoch: too few to show convergence" in text
    assert "1 epochs" not in text


def test_a_partial_run_says_how_many_cells_each_architecture_has():
    """Architectures with different numbers of finished cells have means over different
    images and seeds: the banner says so with the counts, and says nothing when they agree."""
    planned = [(name, seed, fold) for name in ("a", "b", "c") for seed in (0, 1) for fold in (0, 1)]
    done = {cell for cell in planned if cell[0] == "a"} | {("b", 0, 0)}
    sentence = report.coverage_sentence(planned, done)
    assert "`a` 4 of 4, `b` 1 of 4, `c` 0 of 4" in sentence
    assert "pairs each with the best on the test images both have" in sentence
    even = {cell for cell in planned if cell[2] == 0}
    assert report.coverage_sentence(planned, even) == ""
    meta = {
        "config": {"architectures": ["a", "b", "c"], "seeds": [0, 1], "folds_run": [0, 1]},
        "command": "bench run a b c --out run",
        "finished_utc": None,
    }
    cells = [{"architecture": n, "seed": s, "fold": f} for n, s, f in sorted(done)]
    (banner, _) = report.partial_section(meta, cells)
    assert banner.startswith("> **Partial run: 5 of 12 cells finished**")
    assert sentence in banner and banner.endswith("resume with `bench run a b c --out run`.")


@pytest.mark.parametrize(
    "name",
    sorted(
        str(p.parent.relative_to(Path(__file__).parents[1] / "reports"))
        for p in Path(__file__).parents[1].glob("reports/**/report.md")
    ),
)
def test_committed_reports_are_rendered_by_this_code(name, repo_root, tmp_path, capsys):
    target = tmp_path / name
    shutil.copytree(repo_root / "reports" / name, target)
    before = (target / "report.md").read_text()
    html_before = (target / "report.html").read_bytes()
    assert main(["report", str(target)]) == 0
    assert (target / "report.md").read_text() == before
    assert (target / "report.html").read_bytes() == html_before
    lines = before.splitlines()
    if lines[2].startswith("> **Partial run"):  # a reference run still being trained
        assert "resume with `" in lines[2]
        lines = lines[2:]
    assert lines[2].startswith("**Verdict.** ")


def test_the_interrupted_message_names_bench_report_and_the_resume_command(
    monkeypatch, tmp_path, capsys
):
    def interrupted(config, argv=None):
        raise SuiteInterrupted(tmp_path / "run", "bench run segnet_basic --out run")

    monkeypatch.setattr("bench.suite.run_suite", interrupted)
    assert main(run_argv("segnet_basic", out=tmp_path / "run")) == 130
    err = capsys.readouterr().err
    assert f"`bench report {tmp_path / 'run'}`" in err
    assert "Resume with:\n  bench run segnet_basic --out run" in err


# ---------------------------------------------------------------------- the thesis's goal


def goal_row(name: str, cytoplasm: float, nucleus: float, sem: float, **values: Any):
    return summary_row(
        name,
        images=300,
        cytoplasm_dice_mean=cytoplasm,
        cytoplasm_dice_sem=sem,
        nucleus_dice_mean=nucleus,
        nucleus_dice_sem=sem,
        **values,
    )


def test_a_clean_wbc1_run_is_held_against_the_thesis_published_u_net():
    summary = [
        goal_row("short", 0.90, 0.95, 0.004),  # the whole CI below 0.970 / 0.988
        goal_row("level", 0.972, 0.987, 0.003),  # CIs contain 0 on both classes
        goal_row("above", 0.99, 0.995, 0.001),  # beats both, but flagged: not the headline
    ]
    summary[2]["flags"] = NOT_CONVERGED
    lines = report.thesis_goal_section(make_meta(), summary, report.load_thesis_reference())
    text = "\n".join(lines)
    assert lines[0] == "## Against the thesis's published numbers"
    assert "U-Net (Dice cytoplasm 0.9700 ± 0.0030, nucleus 0.9882 ± 0.0013" in text
    rows = {line.split(" |")[0].lstrip("| "): line for line in text.splitlines() if "|" in line}
    assert rows["short"].endswith("| falls short on cytoplasm and nucleus |")
    assert rows["level"].endswith("| reaches it (not told apart) |")
    assert rows["above ⚠"].endswith("| beats it on both classes |")
    # short − thesis on cytoplasm: −0.07 ± t(0.975, 171 df) × √(0.004² + 0.003²) (Welch).
    assert "-0.0700 [-0.0799, -0.0601]" in rows["short"]
    # The headline is the best unflagged architecture, not the flagged one above it.
    assert "The best unflagged architecture here, `level`" in text
    assert "reaches it (not told apart): cytoplasm +0.0020" in text
    # Not on the thesis protocols (their tables carry the published rows), nor other data.
    reference = report.load_thesis_reference()
    assert report.thesis_goal_section(make_meta("thesis"), summary, reference) == []
    synthetic = make_meta()
    synthetic["dataset"]["name"] = "synthetic"
    assert report.thesis_goal_section(synthetic, summary, reference) == []


def test_a_run_resumed_on_another_machine_names_each_invocations_machine():
    intel = {"device_name": "CPU: Intel Xeon (2 threads)", "git_commit": "a" * 40}
    amd = {"device_name": "CPU: AMD EPYC (2 threads)", "git_commit": "b" * 40}
    meta = {
        "started_utc": "2026-01-01T09:00:00Z",
        "resumed_utc": ["2026-01-01T13:00:00Z"],
        "earlier_environments": [intel],
        "environment": amd,
    }
    sentence = report.invocations_sentence(meta)
    assert "2026-01-01T09:00:00Z on CPU: Intel Xeon (2 threads) (commit `aaaaaaaaaaaa`)" in sentence
    assert "2026-01-01T13:00:00Z on CPU: AMD EPYC (2 threads) (commit `bbbbbbbbbbbb`)" in sentence
    assert "compare only between cells trained on the same machine" in sentence
    assert report.machines_line(meta) == (
        "CPU: AMD EPYC (2 threads) (earlier invocations of this run: CPU: Intel Xeon (2 threads))"
    )
    # Resumed on the same machine: no caution about times; never resumed: nothing at all.
    same = {**meta, "earlier_environments": [amd]}
    assert "compare only" not in report.invocations_sentence(same)
    assert report.machines_line(same) == "CPU: AMD EPYC (2 threads)"
    assert report.invocations_sentence({"started_utc": "x", "environment": amd}) == ""
