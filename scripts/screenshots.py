"""Make the screenshots of docs/user_guide.md: the ScribbleSeg widget training on the samples.

Needs a display; on a headless machine run it under Xvfb::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/screenshots.py

For each sample the viewer opens as ``python -m scribbleseg.napari --sample NAME`` does (the
widget docked through the npe2 manifest), Train is pressed, and after ``--seconds`` of training
the whole window is captured while training still runs. Images are written as palette PNGs
(128 colours, < 300 KB each) to ``docs/images/``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WINDOW_SIZE = (1500, 940)


def _wait(app, seconds: float, until=None) -> bool:
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        app.processEvents()
        if until is not None and until():
            return True
        time.sleep(0.005)
    return until is None


def _save_small_png(array: np.ndarray, path: Path, *, max_width: int) -> int:
    """Write an RGB(A) screenshot as a 128-colour PNG no wider than ``max_width``; return its size."""
    from PIL import Image

    image = Image.fromarray(np.asarray(array)[..., :3])
    if image.width > max_width:
        image = image.resize((max_width, round(image.height * max_width / image.width)), Image.LANCZOS)
    image.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        path, optimize=True
    )
    return path.stat().st_size


def shoot(
    sample: str,
    seconds: float,
    out: Path,
    *,
    show_uncertainty: bool = False,
    max_width: int,
) -> Path:
    """Train on ``sample`` for ``seconds`` and capture the window; return the PNG path."""
    import napari
    from napari.settings import get_settings
    from qtpy.QtWidgets import QApplication

    from scribbleseg.napari.__main__ import WIDGET_NAME, add_sample_layers

    get_settings().application.gui_notification_level = "error"  # no warning toasts over the picture
    viewer = napari.Viewer(title="ScribbleSeg", show=True)
    app = QApplication.instance()
    try:
        viewer.window.resize(*WINDOW_SIZE)
        add_sample_layers(viewer, sample)
        _, widget = viewer.window.add_plugin_dock_widget("scribbleseg", WIDGET_NAME)
        _wait(app, 1.0)
        previews: list[int] = []
        widget.training.preview_written.connect(previews.append)
        widget.training_panel.train_button.click()
        if not _wait(app, 120.0, until=lambda: bool(previews)):
            raise RuntimeError(f"{sample}: no preview within 120 s")
        _wait(app, seconds)
        count = len(previews)
        _wait(app, 30.0, until=lambda: len(previews) > count)  # capture just after a fresh preview
        if show_uncertainty:
            viewer.layers["uncertainty"].visible = True
            viewer.layers["prediction"].visible = False
        _wait(app, 0.5)
        path = out / f"{sample}_{'uncertainty' if show_uncertainty else 'training'}.png"
        size = _save_small_png(viewer.screenshot(canvas_only=False, flash=False), path, max_width=max_width)
        update = widget.training.last_update
        print(f"{path.relative_to(ROOT)}: {size / 1000:.0f} KB, step {update.step}, loss {update.loss:.3f}")
        widget.training_panel.stop_button.click()
        _wait(app, 10.0, until=lambda: not widget.training.running)
    finally:
        viewer.close()
    return path


def main(argv: list[str] | None = None) -> int:
    """Make the screenshots; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--seconds-2d", type=float, default=20.0, help="training time before the 2D shot")
    parser.add_argument("--seconds-3d", type=float, default=120.0, help="training time before the 3D shot")
    parser.add_argument(
        "--only", choices=("nuclei2d", "mri3d"), help="make the screenshots of one sample only"
    )
    parser.add_argument("--max-width", type=int, default=1100, help="width of the PNGs in pixels")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    options = {"max_width": args.max_width}
    if args.only in (None, "nuclei2d"):
        shoot("nuclei2d", args.seconds_2d, args.out, **options)
        shoot("nuclei2d", args.seconds_2d, args.out, show_uncertainty=True, **options)
    if args.only in (None, "mri3d"):
        shoot("mri3d", args.seconds_3d, args.out, **options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
