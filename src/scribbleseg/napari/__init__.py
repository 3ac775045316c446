"""napari integration of ScribbleSeg: sample data, widgets and layer helpers.

Importing this package is cheap and imports neither napari nor Qt: napari finds the contributions
through the npe2 manifest (``scribbleseg/napari.yaml``), which names the submodules to import
(e.g. ``scribbleseg.napari._sample_data:nuclei2d``), and only then are they loaded.

Run ``python -m scribbleseg.napari --sample nuclei2d`` (or ``mri3d``) to open a viewer with a
sample image and its scribbles.
"""
