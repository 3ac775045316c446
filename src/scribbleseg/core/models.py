"""MONAI network factory: a BasicUNet with a segmentation head and an embedding head.

The U-Net's own last 1×1 convolution is replaced by two heads on the last
decoder features: a 1×1 convolution to class logits, and a 2-layer 1×1
projection head whose (unnormalised) output feeds the contrastive loss.

Normalisation is batch norm: in eval mode every output voxel depends only on
its receptive field, so a prediction does not depend on the window or block it
was computed in (live previews, sliding windows and blockwise prediction agree).

A trained network may carry a :class:`~scribbleseg.core.pixel_classifier.ForestBlend` in
``forest_blend``: sliding-window and blockwise prediction mix its probabilities into the
network's; and prevalence factors in ``class_factors`` that re-weight the network's probabilities
first (:mod:`scribbleseg.core.prevalence`); and a CRF refinement in ``refinement`` that prediction
applies last (:mod:`scribbleseg.core.refine`). All are set by the trainer and saved and loaded
with the model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from monai.networks.nets import BasicUNet
from torch import nn

from scribbleseg.core.config import ModelConfig
from scribbleseg.errors import ConfigError

if TYPE_CHECKING:
    from scribbleseg.core.pixel_classifier import ForestBlend
    from scribbleseg.core.refine import MeanField

__all__ = ["DOWNSAMPLING", "NetworkOutput", "ScribbleNet", "build_model"]

#: Total down-sampling of the BasicUNet: spatial sizes must be multiples of this.
DOWNSAMPLING = 16


class NetworkOutput(NamedTuple):
    """What :class:`ScribbleNet` returns.

    Attributes
    ----------
    logits : (B, K, [Z,] Y, X) Tensor
    features : (B, F, [Z,] Y, X) Tensor
        Last decoder features (input of both heads).
    embedding : (B, E, [Z,] Y, X) Tensor or None
        Projection-head output, only when requested.
    """

    logits: torch.Tensor
    features: torch.Tensor
    embedding: torch.Tensor | None


class ScribbleNet(nn.Module):
    """BasicUNet backbone with segmentation and projection heads.

    Parameters
    ----------
    spatial_dims : {2, 3}
    in_channels : int
    num_classes : int
    config : ModelConfig
    """

    def __init__(self, *, spatial_dims: int, in_channels: int, num_classes: int, config: ModelConfig) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ConfigError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if in_channels < 1:
            raise ConfigError(f"in_channels must be >= 1, got {in_channels}")
        if num_classes < 2:
            raise ConfigError(f"num_classes must be >= 2, got {num_classes}")
        features = config.resolved_features
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.config = config
        self.backbone = BasicUNet(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=features[-1],
            features=features,
            norm=("batch", {"affine": True}),
            dropout=config.dropout,
        )
        # Keep the decoder features: the heads below replace the final 1x1 conv.
        self.backbone.final_conv = nn.Identity()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        width = features[-1]
        self.segmentation_head = conv(width, num_classes, kernel_size=1)
        self.projection_head = nn.Sequential(
            conv(width, width, kernel_size=1),
            nn.ReLU(inplace=True),
            conv(width, config.embedding_dim, kernel_size=1),
        )
        #: A forest whose probabilities prediction mixes into the network's (not a weight).
        self.forest_blend: ForestBlend | None = None
        #: Prevalence factors prediction applies to the network's probabilities (not a weight;
        #: :mod:`scribbleseg.core.prevalence`).
        self.class_factors: tuple[float, ...] | None = None
        #: Mean-field CRF refinement prediction applies to the final probabilities (not a weight;
        #: :mod:`scribbleseg.core.refine`).
        self.refinement: MeanField | None = None

    def forward(self, image: torch.Tensor, *, with_embedding: bool = False) -> NetworkOutput:
        """Run the network.

        Parameters
        ----------
        image : (B, C, [Z,] Y, X) Tensor
            Spatial sizes must be multiples of :data:`DOWNSAMPLING`.
        with_embedding : bool
            Also compute the projection head.
        """
        features = self.backbone(image)
        logits = self.segmentation_head(features)
        embedding = self.projection_head(features) if with_embedding else None
        return NetworkOutput(logits, features, embedding)

    def embed(self, vectors: torch.Tensor) -> torch.Tensor:
        """Projection-head output for feature vectors gathered at some voxels.

        Parameters
        ----------
        vectors : (B, F, n) Tensor
            Decoder features (``NetworkOutput.features``) at ``n`` voxels per item.

        Returns
        -------
        (B, E, n) Tensor
            The same as ``forward(..., with_embedding=True).embedding`` at those voxels (the head
            is 1x1 convolutions), at the cost of ``n`` voxels instead of the whole patch.
        """
        shaped = vectors.reshape(*vectors.shape, *([1] * (self.spatial_dims - 1)))
        return self.projection_head(shaped).reshape(vectors.shape[0], -1, vectors.shape[2])


def build_model(config: ModelConfig, *, spatial_dims: int, in_channels: int, num_classes: int) -> ScribbleNet:
    """Build the network described by ``config`` for the given data.

    Parameters
    ----------
    config : ModelConfig
    spatial_dims : {2, 3}
    in_channels : int
        Image channels.
    num_classes : int
        Number of classes (>= 2).

    Returns
    -------
    ScribbleNet
    """
    return ScribbleNet(
        spatial_dims=spatial_dims, in_channels=in_channels, num_classes=num_classes, config=config
    )
