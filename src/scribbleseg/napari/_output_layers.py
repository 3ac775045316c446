"""The persistent prediction and uncertainty layers, and the corrections made in them.

Only the main thread calls these methods. Predictions are written into the data of ONE
prediction Labels layer, region by region, followed by ``layer.refresh()``; the layer is never
replaced, so the user can edit it. A :class:`~scribbleseg.napari._model.PredictionRecord`
remembers what was written, so edits survive later previews and can become scribbles.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from scribbleseg.napari._layers import (
    ensure_prediction_layer,
    ensure_uncertainty_layer,
    layer_data,
)
from scribbleseg.napari._model import PredictionRecord, Region

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Labels, Layer

__all__ = ["OutputLayers"]


class OutputLayers:
    """Writes predictions and uncertainty into their layers; turns edits into scribbles.

    Parameters
    ----------
    viewer : napari.Viewer
    """

    def __init__(self, viewer: napari.Viewer) -> None:
        self.viewer = viewer
        self.prediction: Labels | None = None
        self.uncertainty: Image | None = None
        self.record: PredictionRecord | None = None

    def prepare(
        self, reference: Image, spatial_shape: Sequence[int], *, max_value: int, below: Layer | None = None
    ) -> Labels:
        """Make sure both layers exist for this image (reusing them when they fit).

        Parameters
        ----------
        reference : napari.layers.Image
            The image layer whose placement (scale, translation) the outputs take.
        spatial_shape : tuple of int
            Its spatial shape.
        max_value : int
            The largest class value to be written.
        below : napari layer, optional
            A new prediction layer goes just below it (the scribbles stay on top).

        Returns
        -------
        napari.layers.Labels
            The prediction layer.
        """
        active = self.viewer.layers.selection.active
        layer = ensure_prediction_layer(
            self.viewer, reference, spatial_shape, max_value=max_value, below=below
        )
        if (
            layer is not self.prediction
            or self.record is None
            or self.record.written.dtype != layer.data.dtype
        ):
            # A new layer (or new data): what it holds now counts as written by us.
            self.record = PredictionRecord(spatial_shape, layer.data.dtype)
            self.record.written[...] = np.asarray(layer_data(layer))
        self.prediction = layer
        self.uncertainty = ensure_uncertainty_layer(self.viewer, reference, spatial_shape)
        if active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active  # e.g. keep painting in the scribbles
        return layer

    def _alive(self, layer: Layer | None) -> bool:
        return layer is not None and layer in self.viewer.layers

    def write(self, region: Region, labels: np.ndarray, uncertainty: np.ndarray | None = None) -> bool:
        """Write a prediction over ``region``, keeping the voxels the user edited.

        Returns
        -------
        bool
            False when the prediction layer was deleted meanwhile (nothing written).
        """
        if not self._alive(self.prediction) or self.record is None:
            return False
        assert self.prediction is not None
        data = self.prediction.data
        current = np.asarray(data[region])
        data[region] = self.record.merge(current, region, labels)
        self.prediction.refresh()
        if uncertainty is not None and self._alive(self.uncertainty):
            assert self.uncertainty is not None
            self.uncertainty.data[region] = uncertainty
            self.uncertainty.refresh()
        return True

    def edited_voxels(self) -> int:
        """How many voxels of the prediction layer the user changed to a class."""
        if not self._alive(self.prediction) or self.record is None:
            return 0
        assert self.prediction is not None
        return int(self.record.edited(np.asarray(layer_data(self.prediction))).sum())

    def corrections_to_scribbles(self, scribbles: Labels) -> int:
        """Turn the user's edits of the prediction into scribbles of the edited class.

        Voxels already scribbled keep their value. The write goes through
        ``Labels.data_setitem``, so it can be undone and emits the ``paint`` event that sends it
        to a running trainer.

        Returns
        -------
        int
            Number of voxels added to the scribbles.
        """
        if not self._alive(self.prediction) or self.record is None:
            return 0
        assert self.prediction is not None
        prediction = np.asarray(layer_data(self.prediction))
        scribbles_data = layer_data(scribbles)
        if tuple(scribbles_data.shape) != prediction.shape:
            return 0
        indices, values = self.record.corrections(prediction, np.asarray(scribbles_data))
        if len(values) == 0:
            return 0
        scribbles.data_setitem(indices, values.astype(scribbles_data.dtype, copy=False))
        return len(values)
