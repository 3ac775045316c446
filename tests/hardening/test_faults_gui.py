"""A training step that raises: the GUI says so, keeps the last good model, and trains again.

The first-step failure notification is covered by
``tests/napari/test_inputs_gui.py::test_a_failure_in_the_worker_is_a_notification``; here the
failure comes in the middle of a run, inside a step (in the loss, after the forward pass), as a
bug or a driver error would.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.gui, pytest.mark.timeout(120)]


def _parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.named_parameters()}


def test_a_failing_step_is_reported_the_last_good_model_is_kept_and_training_goes_on(
    make_napari_viewer, dock_widget, qtbot, blobs2d, notifications, monkeypatch, tmp_path
):
    import scribbleseg.core.engine as engine

    image, scribbles, _ = blobs2d
    viewer = make_napari_viewer()
    viewer.add_image(image, name="image")
    viewer.add_labels(scribbles, name="scribbles")
    widget = dock_widget(viewer)
    widget.settings.max_steps.value = 6
    widget.settings.preview_interval.value = 0.1

    # The 4th loss computation raises: steps 1-3 complete, step 4 fails after its forward pass.
    real_loss = engine.partial_cross_entropy
    calls = {"count": 0, "fail_at": 4}
    after_good_steps: list[dict[str, torch.Tensor]] = []
    real_step = engine.Trainer._train_step

    def loss(*args, **kwargs):
        calls["count"] += 1
        if calls["count"] == calls["fail_at"]:
            raise RuntimeError("injected failure inside a training step")  # as torch raises them
        return real_loss(*args, **kwargs)

    def step(self):
        result = real_step(self)
        after_good_steps.append(_parameters(self.model))
        return result

    monkeypatch.setattr(engine, "partial_cross_entropy", loss)
    monkeypatch.setattr(engine.Trainer, "_train_step", step)

    widget.training_panel.train_button.click()
    qtbot.waitUntil(lambda: bool(notifications.errors()) and not widget.training.running, timeout=90_000)

    # The GUI reports it once, as a notification (no traceback dialog), and stays usable.
    errors = notifications.errors()
    assert len(errors) == 1, errors
    assert "training failed: RuntimeError: injected failure inside a training step" in errors[0]
    for button in (
        widget.training_panel.train_button,
        widget.outputs_panel.predict_button,
        widget.outputs_panel.save_button,
        widget.outputs_panel.load_button,
    ):
        assert button.isEnabled()

    # The trainer and its model are kept, with the weights of the last good step (step 3).
    trainer = widget.training.trainer
    assert trainer is not None and trainer.step == 3 and len(after_good_steps) == 3
    kept = _parameters(trainer.model)
    assert kept.keys() == after_good_steps[-1].keys()
    assert all(torch.equal(kept[name], after_good_steps[-1][name]) for name in kept)
    assert widget.current_model()[0] is trainer.model

    # That model can be saved and used.
    assert widget.save_model(str(tmp_path / "after-failure.model"))
    with qtbot.waitSignal(widget.prediction_finished, timeout=90_000):
        assert widget.predict()
    assert set(np.unique(widget.output_layers.prediction.data)) <= {1, 2}

    # Train again (the fault is gone): the same trainer goes on from the kept weights.
    calls["fail_at"] = -1
    widget.training_panel.train_button.click()
    qtbot.waitUntil(
        lambda: (
            not widget.training.running
            and widget.training.last_update is not None
            and widget.training.last_update.done
        ),
        timeout=90_000,
    )
    assert widget.training.trainer is trainer and trainer.step == 3 + 6
    assert widget.training.last_update.reason == "steps"
    assert len(notifications.errors()) == 1  # nothing new went wrong


def _tiny_model(folder):
    from scribbleseg.core.config import LossConfig, ModelConfig, TrainConfig
    from scribbleseg.core.models import build_model
    from scribbleseg.io.checkpoint import ModelMetadata, save_model

    config = ModelConfig(features=(4, 4, 8, 8, 8, 4), embedding_dim=2)
    metadata = ModelMetadata(
        model=config,
        spatial_dims=2,
        in_channels=1,
        class_values=(1, 2),
        class_names=("background", "object"),
        normalisation={"low": [0.0], "high": [1.0]},
        spacing=(1.0, 1.0),
        loss=LossConfig().to_dict(),
        train=TrainConfig(steps=1).to_dict(),
    )
    return save_model(
        folder / "model", build_model(config, spatial_dims=2, in_channels=1, num_classes=2), metadata
    )


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("pickle", "PyTorch pickle"),
        ("pickle as weights", "not a valid safetensors file"),
        ("huge network", "do not match model.json"),
        ("unknown field", "unknown field(s) 'weights'"),
    ],
)
def test_a_crafted_model_file_is_refused_in_the_gui(
    make_napari_viewer, dock_widget, notifications, tmp_path, damage, message
):
    import json
    import pickle

    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "code-ran"), "w"))

    folder = _tiny_model(tmp_path)
    path = folder
    if damage == "pickle":
        path = tmp_path / "model.pt"
        path.write_bytes(pickle.dumps({"state_dict": Payload()}))
    elif damage == "pickle as weights":
        (folder / "model.safetensors").write_bytes(pickle.dumps(Payload()))
    else:
        document = json.loads((folder / "model.json").read_text())
        if damage == "huge network":
            document["model"]["features"] = [10**6] * 6
        else:
            document["weights"] = "evil.pt"
        (folder / "model.json").write_text(json.dumps(document))
    viewer = make_napari_viewer()
    widget = dock_widget(viewer)
    settings_before = widget.settings.to_config()
    classes_before = widget.classes.values()
    assert not widget.load_model(str(path))
    errors = notifications.errors()
    assert len(errors) == 1 and message in errors[0] and "looks like a bug" not in errors[0], errors
    # Nothing changed: no model, the same classes and settings.
    assert widget.loaded is None and widget.classes.values() == classes_before
    assert widget.settings.to_config() == settings_before
    assert not (tmp_path / "code-ran").exists()


def test_model_settings_outside_the_widget_ranges_are_shown_clamped(
    make_napari_viewer, dock_widget, notifications, tmp_path
):
    """A model trained from the command line may hold settings the widget's spin boxes cannot show."""
    import json

    folder = _tiny_model(tmp_path)
    document = json.loads((folder / "model.json").read_text())
    # TrainConfig itself refuses batch sizes above 256 and seeds >= 2^31 (as the CLI does); these
    # values are valid for the library but beyond what the widget's spin boxes show.
    document["train"].update(steps=10**30, learning_rate=5.0, prevalence_correction=True, crf_refinement=2.5)
    (folder / "model.json").write_text(json.dumps(document))
    viewer = make_napari_viewer()
    widget = dock_widget(viewer)
    assert widget.load_model(str(folder)), notifications.errors()
    assert not notifications.errors()
    warnings = [str(n.message) for n in notifications.seen if str(n.severity) == "warning"]
    assert len(warnings) == 1
    for name in ("stop after steps", "learning rate"):
        assert name in warnings[0]
    settings = widget.settings
    assert settings.learning_rate.value == 1.0
    train = settings.to_config().train
    assert train.steps == settings.max_steps.max
    assert settings.prevalence_correction.value is True and train.prevalence_correction is True
    assert settings.crf_refinement.value == 2.5 and train.crf_refinement == 2.5
