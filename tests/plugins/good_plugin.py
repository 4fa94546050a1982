"""A well-behaved plugin file: one architecture, logits of the input's size."""

from torch import nn

from architectures import register_architecture


@register_architecture("test_good_plugin_net")
def good_net(num_classes: int = 3, in_channels: int = 3, width: float = 1.0) -> nn.Module:
    """Test plugin: two 3x3 convolutions."""
    channels = max(1, round(16 * width))
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(channels, num_classes, 3, padding=1),
    )
