"""bench: an honest benchmark harness for semantic segmentation architectures.

The command-line entry point is ``bench`` (:mod:`bench.cli`). Library users import
the pieces directly: :mod:`bench.data` (datasets), :mod:`bench.protocols` (splits and
preprocessing), :mod:`bench.metrics` (pure metric functions), :mod:`bench.runner`
(the training loop) and the :mod:`architectures` registry.
"""

__version__ = "0.1.0"
