"""Segmentation architectures by name: the public face of the package.

``architectures.build("unet_thesis", width=0.25)``, ``architectures.available("smp_*")``,
``@architectures.register_architecture("my_net")``: this module only re-exports. What lives
where:

* :mod:`architectures.registry`: the registry (:class:`Registry`, its default instance and the
  functions re-exported here), plugin loading (entry points of group ``bench.architectures``,
  Python files) and the factory contract;
* :mod:`architectures.measure`: :func:`count_parameters`, :func:`forward_gflops` and the
  output-shape check of a built model;
* :mod:`architectures.layers`: what the built-in models share (:data:`MIN_CHANNELS`,
  :func:`memory_format_of`, Keras defaults, the thesis's output layer);
* the built-ins, one module each, imported here explicitly (no directory scanning): they
  register themselves into the default registry when imported. Add a new built-in to
  :data:`BUILTIN_MODULES`.

Import order: layers -> registry -> built-in model modules -> this face; no model module
imports this face.
"""

from __future__ import annotations

from architectures import deconvnet, segnet_basic, smp_baselines, unet_thesis
from architectures.layers import MIN_CHANNELS, memory_format_of
from architectures.measure import count_parameters, forward_gflops
from architectures.registry import (
    ArchitectureSpec,
    Registry,
    architecture_options,
    available,
    build,
    check_output_shape,
    get_spec,
    load_plugin_file,
    plugin_errors,
    register_architecture,
)
from architectures.smp_baselines import check_encoder_weights

__all__ = [
    "BUILTIN_MODULES",
    "MIN_CHANNELS",
    "ArchitectureSpec",
    "Registry",
    "architecture_options",
    "available",
    "build",
    "check_encoder_weights",
    "check_output_shape",
    "count_parameters",
    "forward_gflops",
    "get_spec",
    "load_plugin_file",
    "memory_format_of",
    "plugin_errors",
    "register_architecture",
]

# The built-in model modules, in registration order.
BUILTIN_MODULES = (deconvnet, segnet_basic, smp_baselines, unet_thesis)
