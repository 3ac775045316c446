"""Headless core: numpy / torch / MONAI only. Never imports Qt or napari."""
