"""npe2 contributions: the dock widget (Plugins and Layers > Segment menus), sample data, the writer."""

from __future__ import annotations

import numpy as np
import pytest

from scribbleseg.io.arrays import read_array
from scribbleseg.napari._writer import write_labels

npe2 = pytest.importorskip("npe2")


def _manifest():
    return npe2.PluginManifest.from_distribution("scribbleseg")


def test_manifest_contributes_widget_menu_samples_and_writer():
    contributions = _manifest().contributions
    assert [w.display_name for w in contributions.widgets] == ["ScribbleSeg"]
    assert [s.key for s in contributions.sample_data] == ["nuclei2d", "mri3d"]
    assert {c.id for c in contributions.commands} >= {
        "scribbleseg.sample_nuclei2d",
        "scribbleseg.sample_mri3d",
        "scribbleseg.widget",
        "scribbleseg.write_labels",
    }
    segment_menu = contributions.menus["napari/layers/segment"]
    assert [item.command for item in segment_menu] == ["scribbleseg.widget"]
    (writer,) = contributions.writers
    assert set(writer.filename_extensions) == {".tif", ".tiff", ".zarr"}
    assert [str(t) for t in writer.layer_types] == ["labels"]


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_writer_writes_labels_with_their_spacing(tmp_path, suffix):
    labels = np.zeros((4, 6, 8), np.uint8)
    labels[1, 2:4, 3:5] = 2
    path = tmp_path / f"labels{suffix}"
    assert write_labels(str(path), labels, {"scale": (2.0, 1.0, 1.0), "name": "prediction"}) == [str(path)]
    written = read_array(path)
    assert np.array_equal(np.asarray(written.data), labels)
    assert tuple(written.spacing) == (2.0, 1.0, 1.0)


@pytest.mark.gui
def test_open_sample_and_save_selected_labels_through_napari(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    layers = viewer.open_sample("scribbleseg", "mri3d")
    assert [layer.name for layer in layers] == ["mri3d", "scribbles"]
    scribbles = viewer.layers["scribbles"]
    assert tuple(scribbles.scale) == (2.0, 1.0, 1.0)
    path = tmp_path / "scribbles.tif"
    assert scribbles.save(str(path), plugin="scribbleseg") == [str(path)]
    assert np.array_equal(np.asarray(read_array(path).data), scribbles.data)


@pytest.mark.gui
def test_launcher_opens_the_sample_with_the_widget_docked(monkeypatch, make_napari_viewer):
    import napari

    from scribbleseg.napari import __main__ as launcher
    from scribbleseg.napari._widget import ScribbleSegWidget

    viewers = []
    # The launcher's viewer comes from the fixture (which closes it and checks for leaks), and
    # napari.run returns at once.
    monkeypatch.setattr(
        napari, "Viewer", lambda **kwargs: viewers.append(make_napari_viewer(**kwargs)) or viewers[-1]
    )
    monkeypatch.setattr(napari, "run", lambda: None)
    assert launcher.main(["--sample", "nuclei2d"]) == 0
    (viewer,) = viewers
    widgets = [w for w in viewer.window.dock_widgets.values() if isinstance(w, ScribbleSegWidget)]
    assert len(widgets) == 1
    assert [layer.name for layer in widgets[0].inputs.image_layers()] == ["nuclei2d"]
    assert widgets[0].inputs.scribbles_layer() is viewer.layers["scribbles"]
