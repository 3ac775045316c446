"""Blockwise prediction on a ``dask.distributed`` cluster.

The client prepares the outputs exactly as the single-process
:func:`~scribbleseg.core.blockwise.predict_blockwise` does (same plan, same
fingerprint, same resuming), then submits one task per pending block. Each
task runs :func:`~scribbleseg.core.blockwise.run_block` on a worker, which
reads its windows from the image, writes its block of the output and marks it
done; the client marks the outputs complete when every block is done. The
output is therefore identical to a single-process run, and a run interrupted
on a cluster can be finished by either.

What travels to the workers is small: the plan, the model *path* and the
image *path* (with channel axis, spacing and the normalisation computed once
by the client). Each worker process loads the model once (a cache keyed by
path, weights hash and device) and reopens the image once. The paths must
therefore be visible to the workers under the same names (a shared file
system), and the worker environment must have ScribbleSeg installed.

``scheduler`` is a scheduler address (``tcp://host:8786``) or ``local:N`` for
a :class:`distributed.LocalCluster` of ``N`` worker processes on this machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pathlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from scribbleseg.core.volume import ImageSource, Normalisation
from scribbleseg.errors import ConfigError, InputError

if TYPE_CHECKING:
    from distributed import Client

    from scribbleseg.core.blockwise import BlockwisePlan, BlockwiseProgress, BlockwiseResult, ProbabilityDtype
    from scribbleseg.core.models import ScribbleNet

__all__ = [
    "ImageSpec",
    "cluster_client",
    "parse_scheduler",
    "predict_on_cluster",
    "weights_fingerprint",
]

#: Seconds to wait for a remote scheduler before giving up.
CONNECT_TIMEOUT = 20.0


@dataclass(frozen=True)
class ImageSpec:
    """How a worker opens the image: a path and the facts the client resolved.

    Attributes
    ----------
    path : str
        The image file (``.zarr``, ``.tif``, ``.npy``), as the workers see it.
    channel_axis : int or None
        Channel axis of the stored array.
    spacing : tuple of float or None
        Physical spacing ``([Z,] Y, X)``.
    normalisation : Normalisation or None
        Intensity normalisation; :meth:`resolved` fills it from a sample so
        that every worker uses the same.
    """

    path: str
    channel_axis: int | None = None
    spacing: tuple[float, ...] | None = None
    normalisation: Normalisation | None = None

    def open(self) -> ImageSource:
        """Open the image lazily as an :class:`ImageSource`."""
        from scribbleseg.io.arrays import read_array

        data = read_array(self.path, lazy=True).data
        return ImageSource(
            data, channel_axis=self.channel_axis, spacing=self.spacing, normalisation=self.normalisation
        )

    def resolved(self, source: ImageSource | None = None) -> ImageSpec:
        """Return a copy with the normalisation estimated (once, here) if it was unset."""
        if self.normalisation is not None:
            return self
        from scribbleseg.core.blockwise import reading_image

        source = source if source is not None else self.open()
        with reading_image(f"{self.path} (normalisation sample)"):
            normalisation = source.normalisation
        return ImageSpec(self.path, self.channel_axis, self.spacing, normalisation)


def weights_fingerprint(model_path: str | os.PathLike[str]) -> str:
    """SHA-256 of a model folder's weights and forest files (identifies the model for resuming)."""
    from scribbleseg.io.checkpoint import FOREST_FILE, METADATA_FILE, WEIGHTS_FILE, model_folder

    folder = model_folder(model_path)
    digest = hashlib.sha256()
    # model.json holds the forest's blend weight.
    for name in (WEIGHTS_FILE, FOREST_FILE, METADATA_FILE):
        if not (folder / name).is_file():
            continue
        with open(folder / name, "rb") as handle:
            for block in iter(lambda: handle.read(2**20), b""):
                digest.update(block)
    return digest.hexdigest()


def prediction_id(model_id: str, network_only: bool, refine: bool = True) -> str:
    """Identify what a resumable prediction used: the model, without its forest or refinement."""
    identity = f"{model_id} network only" if network_only else model_id
    return identity if refine else f"{identity} unrefined"


def parse_scheduler(scheduler: str) -> tuple[str, int | None]:
    """Split ``scheduler`` into ``("local", n_workers)`` or ``("address", None)``.

    Raises
    ------
    ConfigError
        For ``local:N`` with N not a positive integer.
    """
    text = scheduler.strip()
    if text == "local" or text.startswith("local:"):
        count = text.partition(":")[2] or str(max(1, (os.cpu_count() or 1) // 2))
        if not count.isdigit() or int(count) < 1:
            raise ConfigError(f"--scheduler local:N needs a number of workers N >= 1, got {scheduler!r}")
        return "local", int(count)
    if not text:
        raise ConfigError("the scheduler address is empty; give e.g. tcp://host:8786 or local:2")
    return text, None


@contextlib.contextmanager
def cluster_client(scheduler: str | Client) -> Iterator[tuple[Client, int | None]]:
    """Yield a connected client and, for ``local:N``, the CPU cores per worker.

    A :class:`distributed.Client` given in is used as it is (and not closed).

    Raises
    ------
    InputError
        If the scheduler cannot be reached.
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise InputError(
            "--scheduler needs the 'distributed' package (pip install 'scribbleseg[distributed]')"
        ) from exc

    if not isinstance(scheduler, str):
        yield scheduler, None
        return
    address, workers = parse_scheduler(scheduler)
    if workers is not None:
        cores = max(1, (os.cpu_count() or 1) // workers)
        with (
            LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.CRITICAL,  # a failed block is reported once, by the client
            ) as cluster,
            Client(cluster) as client,
        ):
            yield client, cores
        return
    try:
        client = Client(address, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError) as exc:
        raise InputError(
            f"cannot connect to the dask scheduler at {address} ({type(exc).__name__}: {exc}) — is it "
            "running, and is the address right (e.g. tcp://host:8786)?"
        ) from exc
    with client:
        yield client, None


# ---------------------------------------------------------------------------
# worker side: one model and one image per process, loaded once
# ---------------------------------------------------------------------------

_CACHE_LOCK = threading.Lock()
#: One forward pass at a time per process (one GPU, or one torch thread pool).
_COMPUTE_LOCK = threading.Lock()
_MODELS: dict[tuple[str, str, str, bool], tuple[ScribbleNet, Any]] = {}
_SOURCES: dict[ImageSpec, ImageSource] = {}
_THREADS_SET: list[int] = []
#: Models loaded by this process (diagnostics: one per worker and model is expected).
MODEL_LOADS: list[str] = []


def _worker_model(
    model_path: str, model_id: str, device: str, network_only: bool = False, refine: bool = True
) -> tuple[ScribbleNet, Any]:
    from scribbleseg.core.inference import resolve_device
    from scribbleseg.io.checkpoint import load_model

    key = (model_path, model_id, device, network_only, refine)
    with _CACHE_LOCK:
        if key not in _MODELS:
            if weights_fingerprint(model_path) != model_id:
                raise InputError(
                    f"model {model_path} changed on disk while the prediction ran — run it again"
                )
            dev = resolve_device(device)
            model, _ = load_model(model_path, device=dev)
            if network_only:
                model.forest_blend = None
            if not refine:
                model.refinement = None
            MODEL_LOADS.append(model_path)
            _MODELS.clear()  # keep one model per process
            _MODELS[key] = (model, dev)
        return _MODELS[key]


def _worker_source(image: ImageSpec) -> ImageSource:
    with _CACHE_LOCK:
        if image not in _SOURCES:
            _SOURCES.clear()
            _SOURCES[image] = image.open()
        return _SOURCES[image]


def _predict_block_task(
    index: tuple[int, ...],
    plan: BlockwisePlan,
    model_path: str,
    model_id: str,
    image: ImageSpec,
    device: str,
    torch_threads: int | None,
    network_only: bool = False,
    refine: bool = True,
) -> tuple[int, ...]:
    """Run on a worker: predict, write and mark one block."""
    import dask
    import torch

    from scribbleseg.core.blockwise import run_block

    if torch_threads is not None and not _THREADS_SET:
        torch.set_num_threads(torch_threads)
        _THREADS_SET.append(torch_threads)
    model, dev = _worker_model(model_path, model_id, device, network_only, refine)
    source = _worker_source(image)
    # Reads inside a task: compute the image's dask graph here, not as new cluster tasks.
    with _COMPUTE_LOCK, dask.config.set(scheduler="synchronous"):
        run_block(plan, model, source, index, device=dev)
    return index


# ---------------------------------------------------------------------------
# client side
# ---------------------------------------------------------------------------


def predict_on_cluster(
    model_path: str | os.PathLike[str],
    image: ImageSpec,
    labels: str | os.PathLike[str],
    *,
    scheduler: str | Client,
    probabilities: str | os.PathLike[str] | None = None,
    probabilities_dtype: ProbabilityDtype = "float32",
    chunks: Sequence[int] | None = None,
    block_shape: Sequence[int] | None = None,
    roi_size: Sequence[int] | None = None,
    overlap: float = 0.25,
    batch_size: int | None = None,
    tta: bool = False,
    device: str = "auto",
    amp: bool = True,
    torch_threads: int | None = None,
    network_only: bool = False,
    refine: bool = True,
    progress: Callable[[BlockwiseProgress], None] | None = None,
) -> BlockwiseResult:
    """Predict a whole image block by block on a dask cluster, into zarr arrays.

    The same outputs, blocks and resuming as
    :func:`~scribbleseg.core.blockwise.predict_blockwise` with the model
    loaded from ``model_path``.

    Parameters
    ----------
    model_path : path-like
        Model folder, readable by the workers under the same path.
    image : ImageSpec
        The image, readable by the workers under the same path.
    labels : path-like
        Output ``.zarr`` array of class values.
    scheduler : str or distributed.Client
        ``tcp://host:port``, ``local:N``, or a connected client.
    probabilities : path-like, optional
        Also write probabilities to this ``.zarr`` array.
    probabilities_dtype : {"float32", "float16"}
    chunks, block_shape, roi_size, overlap, batch_size, tta, amp
        See :func:`~scribbleseg.core.blockwise.predict_blockwise`.
    device : {"auto", "cpu", "cuda"}
        Resolved on each worker.
    torch_threads : int, optional
        CPU threads for torch on each worker; ``local:N`` defaults to the
        machine's cores divided by N.
    network_only : bool
        Leave out the model's forest blend (faster; the network's own prediction).
    refine : bool
        Apply the model's CRF refinement, if it has one (:mod:`scribbleseg.core.refine`).
    progress : callable, optional
        Called with a :class:`~scribbleseg.core.blockwise.BlockwiseProgress`
        as blocks finish (in completion order); an exception it raises cancels
        the remaining blocks (the output stays resumable).

    Returns
    -------
    BlockwiseResult

    Raises
    ------
    InputError
        If the model, the image or the scheduler cannot be used, or a worker
        could not read the image or write the output.
    """
    from scribbleseg.core.blockwise import (
        BlockwiseProgress,
        BlockwiseResult,
        finish_prediction,
        image_facts,
        prepare_prediction,
    )
    from scribbleseg.io.checkpoint import read_metadata

    clock = time.perf_counter()
    model_path = str(pathlib.Path(model_path).resolve())
    metadata = read_metadata(model_path)
    model_id = weights_fingerprint(model_path)
    image = ImageSpec(
        str(pathlib.Path(image.path).resolve()), image.channel_axis, image.spacing, image.normalisation
    )
    source = image.open()
    image = image.resolved(source)
    source = ImageSource(
        source.array,
        channel_axis=image.channel_axis,
        spacing=image.spacing,
        normalisation=image.normalisation,
    )
    if source.n_channels != metadata.in_channels or source.spatial_dims != metadata.spatial_dims:
        raise InputError(
            f"image {image.path} has {source.n_channels} channel(s) and {source.spatial_dims} spatial axes "
            f"but model {model_path} expects {metadata.in_channels} and {metadata.spatial_dims}"
        )
    plan = prepare_prediction(
        labels,
        image_shape=source.spatial_shape,
        class_values=metadata.class_values,
        model_id=prediction_id(model_id, network_only, refine),
        image_id=image_facts(source, image.path),
        probabilities=probabilities,
        probabilities_dtype=probabilities_dtype,
        spacing=source.spacing,
        chunks=chunks,
        block_shape=block_shape,
        roi_size=roi_size,
        overlap=overlap,
        batch_size=batch_size,
        tta=tta,
        amp=amp,
    )
    pending = plan.pending_blocks()
    skipped = plan.n_blocks - len(pending)
    computed = 0
    if pending:
        with cluster_client(scheduler) as (client, cores):
            from distributed import as_completed

            threads = torch_threads if torch_threads is not None else cores
            futures = client.map(
                _predict_block_task,
                pending,
                plan=plan,
                model_path=model_path,
                model_id=model_id,
                image=image,
                device=device,
                torch_threads=threads,
                network_only=network_only,
                refine=refine,
                pure=False,
            )
            try:
                for future in as_completed(futures):
                    index = future.result()  # re-raises a worker's exception here
                    computed += 1
                    if progress is not None:
                        progress(
                            BlockwiseProgress(
                                blocks_done=skipped + computed,
                                blocks_total=plan.n_blocks,
                                blocks_computed=computed,
                                blocks_skipped=skipped,
                                region=plan.block_region(index),
                                elapsed=time.perf_counter() - clock,
                            )
                        )
            except BaseException:
                client.cancel(futures)
                raise
    finish_prediction(plan)
    return BlockwiseResult(
        labels=pathlib.Path(plan.labels),
        probabilities=pathlib.Path(plan.probabilities) if plan.probabilities is not None else None,
        blocks_total=plan.n_blocks,
        blocks_computed=computed,
        blocks_skipped=skipped,
        seconds=time.perf_counter() - clock,
    )
