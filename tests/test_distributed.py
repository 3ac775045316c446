"""Blockwise prediction on a dask.distributed LocalCluster equals the single-process result."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from scribbleseg.core.annotations import labels_to_target
from scribbleseg.core.blockwise import predict_blockwise
from scribbleseg.core.config import LossConfig, ModelConfig, TrainConfig
from scribbleseg.core.models import build_model
from scribbleseg.core.pixel_classifier import ForestBlend, ForestTeacher
from scribbleseg.core.refine import MeanField
from scribbleseg.core.volume import ImageSource
from scribbleseg.distributed import ImageSpec, parse_scheduler, predict_on_cluster, weights_fingerprint
from scribbleseg.errors import ConfigError, InputError
from scribbleseg.io.arrays import read_array, write_array
from scribbleseg.io.checkpoint import ModelMetadata, load_model, save_model

distributed = pytest.importorskip("distributed")


def save_tiny_model(folder, *, spatial_dims=3, in_channels=2, class_values=(1, 2, 4), forest=None):
    torch.manual_seed(0)
    config = ModelConfig(features=(4, 4, 8, 8, 16, 4))
    model = build_model(
        config, spatial_dims=spatial_dims, in_channels=in_channels, num_classes=len(class_values)
    )
    model.forest_blend = forest
    metadata = ModelMetadata(
        model=config,
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        class_values=class_values,
        class_names=tuple(f"class {v}" for v in class_values),
        normalisation={"low": [0.0] * in_channels, "high": [1.0] * in_channels},
        spacing=(1.0,) * spatial_dims,
        loss=LossConfig().to_dict(),
        train=TrainConfig().to_dict(),
    )
    return save_model(folder, model, metadata)


@pytest.fixture(scope="module")
def cluster():
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=50
        ) as local,
        distributed.Client(local) as client,
    ):
        yield client


def test_cluster_output_equals_single_process_and_resumes_it(tmp_path, cluster):
    torch.set_num_threads(1)
    model_path = save_tiny_model(tmp_path / "model")
    image = np.random.default_rng(0).random((2, 20, 40, 36), dtype=np.float32)
    write_array(tmp_path / "image.zarr", image, axes="CZYX", chunks=(1, 8, 16, 16))
    source = ImageSource(read_array(tmp_path / "image.zarr", lazy=True).data, channel_axis=0)
    model, meta = load_model(model_path)
    spec = ImageSpec(str((tmp_path / "image.zarr").resolve()), 0, source.spacing, source.normalisation)
    options = {"chunks": (8, 16, 16), "block_shape": (8, 16, 16), "roi_size": (16, 32, 32)}

    single = predict_blockwise(
        model,
        source,
        tmp_path / "single.zarr",
        class_values=meta.class_values,
        probabilities=tmp_path / "single_p.zarr",
        device="cpu",
        model_id=weights_fingerprint(model_path),
        image_name=spec.path,
        **options,
    )
    assert single.blocks_computed == 3 * 3 * 3

    # Start the same prediction in this process, stop it after 4 blocks ...
    def stop_after_4(update):
        if update.blocks_computed == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        predict_blockwise(
            model,
            source,
            tmp_path / "cluster.zarr",
            class_values=meta.class_values,
            probabilities=tmp_path / "cluster_p.zarr",
            device="cpu",
            model_id=weights_fingerprint(model_path),
            image_name=spec.path,
            progress=stop_after_4,
            **options,
        )
    # ... and let the cluster finish it: it computes only the missing blocks.
    seen = []
    result = predict_on_cluster(
        model_path,
        spec,
        tmp_path / "cluster.zarr",
        scheduler=cluster,
        probabilities=tmp_path / "cluster_p.zarr",
        device="cpu",
        torch_threads=1,
        progress=seen.append,
        **options,
    )
    assert (result.blocks_skipped, result.blocks_computed) == (4, 27 - 4)
    assert len(seen) == 23 and max(u.blocks_done for u in seen) == 27
    workers = cluster.run(lambda: __import__("os").getpid())
    assert len(set(workers.values())) == 2

    np.testing.assert_array_equal(
        read_array(tmp_path / "cluster.zarr").data, read_array(tmp_path / "single.zarr").data
    )
    np.testing.assert_allclose(
        zarr.open_array(str(tmp_path / "cluster_p.zarr"))[...],
        zarr.open_array(str(tmp_path / "single_p.zarr"))[...],
        atol=1e-6,
        rtol=0,
    )

    # The workers loaded the model once each, not once per block.
    def loads_of(path):
        from scribbleseg.distributed import MODEL_LOADS

        return MODEL_LOADS.count(path)

    loads = cluster.run(loads_of, str(model_path.resolve()))
    assert sorted(loads.values()) == [1, 1], loads


def test_the_forest_blend_reaches_the_workers_or_is_left_out(tmp_path, cluster, blobs2d):
    torch.set_num_threads(1)
    image, scribbles, _ = blobs2d
    write_array(tmp_path / "image.zarr", image, axes="YX", chunks=(32, 40))
    source = ImageSource(read_array(tmp_path / "image.zarr", lazy=True).data)
    teacher = ForestTeacher(source, labels_to_target(scribbles), trees=5, threads=1)
    assert teacher.fit()
    forest = ForestBlend(teacher.forest, teacher.spec, 0.6, 2)
    model_path = save_tiny_model(
        tmp_path / "model", spatial_dims=2, in_channels=1, class_values=(1, 2), forest=forest
    )
    model, meta = load_model(model_path)
    spec = ImageSpec(str((tmp_path / "image.zarr").resolve()), None, source.spacing, source.normalisation)
    options = {"chunks": (32, 40), "block_shape": (32, 40), "roi_size": (32, 48), "device": "cpu"}

    def single(name):
        predict_blockwise(
            model,
            source,
            tmp_path / f"{name}.zarr",
            class_values=meta.class_values,
            probabilities=tmp_path / f"{name}_p.zarr",
            **options,
        )
        return zarr.open_array(str(tmp_path / f"{name}_p.zarr"))[...]

    def on_cluster(name, **extra):
        result = predict_on_cluster(
            model_path,
            spec,
            tmp_path / f"{name}.zarr",
            scheduler=cluster,
            torch_threads=1,
            probabilities=tmp_path / f"{name}_p.zarr",
            **options,
            **extra,
        )
        return result, zarr.open_array(str(tmp_path / f"{name}_p.zarr"))[...]

    blended = single("blended")
    model.forest_blend = None
    network = single("network")
    assert np.abs(blended - network).max() > 0.05  # the forest does change the probabilities
    _, remote = on_cluster("remote")
    np.testing.assert_allclose(remote, blended, atol=1e-6, rtol=0)
    # Leaving the forest out into the same output starts afresh: no block of the blend is kept.
    result, remote = on_cluster("remote", network_only=True)
    assert result.blocks_skipped == 0
    np.testing.assert_allclose(remote, network, atol=1e-6, rtol=0)


def test_the_refinement_reaches_the_workers_or_is_left_out(tmp_path, cluster, blobs2d):
    torch.set_num_threads(1)
    image, _, _ = blobs2d
    write_array(tmp_path / "image.zarr", image, axes="YX", chunks=(32, 40))
    source = ImageSource(read_array(tmp_path / "image.zarr", lazy=True).data)
    model_path = save_tiny_model(tmp_path / "model", spatial_dims=2, in_channels=1, class_values=(1, 2))
    model, meta = load_model(model_path)
    model.refinement = MeanField((0.05,), weight=3.0)
    save_model(model_path, model, meta)
    spec = ImageSpec(str((tmp_path / "image.zarr").resolve()), None, source.spacing, source.normalisation)
    options = {"chunks": (32, 40), "block_shape": (32, 40), "roi_size": (32, 48), "device": "cpu"}

    def single(name):
        predict_blockwise(
            model,
            source,
            tmp_path / f"{name}.zarr",
            class_values=(1, 2),
            probabilities=tmp_path / f"{name}_p.zarr",
            **options,
        )
        return zarr.open_array(str(tmp_path / f"{name}_p.zarr"))[...]

    refined = single("refined")
    model.refinement = None
    plain = single("plain")
    assert np.abs(refined - plain).max() > 0.01
    for refine, expected in ((True, refined), (False, plain)):
        result = predict_on_cluster(
            model_path,
            spec,
            tmp_path / "remote.zarr",
            scheduler=cluster,
            torch_threads=1,
            probabilities=tmp_path / "remote_p.zarr",
            refine=refine,
            **options,
        )
        assert result.blocks_skipped == 0  # switching the refinement off starts afresh
        np.testing.assert_allclose(zarr.open_array(str(tmp_path / "remote_p.zarr"))[...], expected, atol=1e-5)


def test_worker_errors_reach_the_client(tmp_path, cluster):
    model_path = save_tiny_model(tmp_path / "model", spatial_dims=2, in_channels=1, class_values=(1, 2))
    write_array(tmp_path / "image.zarr", np.ones((40, 40), dtype=np.float32), chunks=(16, 16))
    spec = ImageSpec(str(tmp_path / "image.zarr")).resolved()
    # Delete a chunk after the client sampled the image: a worker fails to read it.
    (tmp_path / "image.zarr" / "c" / "1" / "1").write_bytes(b"not a chunk")
    with pytest.raises(InputError, match="corrupt"):
        predict_on_cluster(
            model_path, spec, tmp_path / "out.zarr", scheduler=cluster, chunks=(16, 16), block_shape=(16, 16)
        )
    assert zarr.open_array(str(tmp_path / "out.zarr")).attrs["scribbleseg"]["complete"] is False


def test_parse_scheduler():
    assert parse_scheduler("local:3") == ("local", 3)
    assert parse_scheduler("tcp://10.0.0.1:8786") == ("tcp://10.0.0.1:8786", None)
    with pytest.raises(ConfigError):
        parse_scheduler("local:zero")
