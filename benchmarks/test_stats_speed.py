"""Speed benchmarks (pytest-benchmark), not tests: the bootstrap CI of :mod:`bench.stats`
against :func:`scipy.stats.bootstrap` doing the same thing.

    .venv/bin/python -m pytest benchmarks/test_stats_speed.py --benchmark-enable \
        --benchmark-group-by=param:n

Both draw the same 10,000 resamples (``Generator.integers(0, n, (resamples, n))`` from
``default_rng(0)``) of n paired differences and take the median of each and the 2.5/97.5
percentiles of the medians (scipy: ``method="percentile"``, one sample, ``batch=1000`` as
bench's chunks); n = 30 and 300 test images. ``bench.stats``'s module docstring quotes the
result. The two intervals agree to 1e-12 (``tests/test_stats.py``).

Host memory is retained, as ``bench run`` does by default: under glibc's defaults whichever
runs first in the process pays page faults for its 2.4 MB chunks until malloc's mmap
threshold has risen (up to 1.7x slower at n=300, for either implementation).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from bench import host_memory
from bench.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, bootstrap_median_ci


@pytest.fixture(scope="module", autouse=True)
def retained_host_memory() -> None:
    host_memory.apply("retain")  # as bench run does by default


def scipy_median_ci(differences: np.ndarray) -> tuple[float, float]:
    result = scipy_stats.bootstrap(
        (differences,),
        np.median,
        n_resamples=BOOTSTRAP_RESAMPLES,
        batch=1000,
        vectorized=True,
        method="percentile",
        rng=np.random.default_rng(BOOTSTRAP_SEED),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


@pytest.mark.parametrize("n", [30, 300])
@pytest.mark.parametrize("implementation", ["bench", "scipy"])
def test_bootstrap_median_ci(benchmark, implementation: str, n: int) -> None:
    differences = np.random.default_rng(n).normal(-0.02, 0.05, n)
    function = bootstrap_median_ci if implementation == "bench" else scipy_median_ci
    low, high = benchmark(function, differences)
    assert low <= np.median(differences) <= high
