"""A plugin file whose model returns half-resolution logits (a common decoder bug)."""

from torch import nn

from architectures import register_architecture


@register_architecture("test_wrong_shape_net")
def wrong_shape(num_classes: int = 3, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    """Test plugin: a strided conv, so the output is H/2 x W/2."""
    return nn.Conv2d(in_channels, num_classes, 3, stride=2, padding=1)
