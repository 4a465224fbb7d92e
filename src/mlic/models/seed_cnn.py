"""The seed model: the from-scratch CNN mlic started as, kept exactly as the default.

Four conv blocks Conv3x3 -> BatchNorm -> ReLU -> MaxPool2 with 32/64/128/256 channels (no pool
after the 4th), global average pooling, then Linear(256->512) -> ReLU -> Dropout(0.5) ->
Linear(512->num_classes). It returns raw logits; the sigmoid belongs to inference, because
BCEWithLogitsLoss fuses it with the loss for numerical stability.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_block(in_ch: int, out_ch: int, pool: bool) -> nn.Sequential:
    # bias=False: BatchNorm's shift makes a conv bias redundant. The seed used the Keras-style
    # default with a bias; it changes nothing the model can express.
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class SeedCNN(nn.Module):
    """The seed CNN, following timm's small model contract (forward_features / forward_head)."""

    def __init__(
        self,
        *,
        num_classes: int,
        in_chans: int = 3,
        widths: tuple[int, ...] = (32, 64, 128, 256),
        hidden: int = 512,
        drop_rate: float = 0.5,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        chans = (in_chans, *widths)
        # Every block pools except the last, as in the seed.
        self.features = nn.Sequential(
            *[_conv_block(chans[i], chans[i + 1], pool=i < len(widths) - 1) for i in range(len(widths))]
        )
        self.num_features = widths[-1]
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.pre_logits = nn.Sequential(
            nn.Linear(self.num_features, hidden), nn.ReLU(inplace=True), nn.Dropout(drop_rate)
        )
        self.hidden = hidden
        self.classifier = nn.Linear(hidden, num_classes)
        self.num_classes = num_classes
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images -> (B, 256, H/8, W/8) feature map (the Grad-CAM target)."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Feature map -> (B, num_classes) logits, or the (B, hidden) embedding if ``pre_logits``."""
        x = self.pool(x).flatten(1)
        x = self.pre_logits(x)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def group_matcher(self, coarse: bool = False) -> dict[str, str]:
        """Parameter groups by depth, in timm's format (for layer-wise lr decay): the stem is the first conv block,
        then one group per block; the hidden layer and the classifier, matched by neither, count as the head."""
        return {"stem": r"^features\.0\.", "blocks": r"^features\.(\d+)\."}

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        """New head for another label set; the backbone is kept."""
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.hidden, num_classes)
        nn.init.zeros_(self.classifier.bias)
