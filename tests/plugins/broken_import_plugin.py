"""A plugin file whose import fails (a missing dependency)."""

import a_module_that_does_not_exist  # noqa: F401

from architectures import register_architecture


@register_architecture("test_never_registered")
def never(num_classes: int = 3, in_channels: int = 3, width: float = 1.0):
    raise AssertionError("unreachable")
