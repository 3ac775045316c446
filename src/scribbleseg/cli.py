"""The ``scribbleseg`` command: train, predict, evaluate, export.

Bad input ends with exit status 2 and one line on stderr naming the problem;
never a traceback (``--debug`` shows one for unexpected errors).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any, NoReturn

from scribbleseg import __version__
from scribbleseg.errors import InputError, ScribbleSegError

__all__ = ["build_parser", "main"]

PROG = "scribbleseg"
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 1
#: Most patches per step, as in the widget: far more never fits in memory (and the sampler
#: would run for hours drawing them).
MAX_BATCH_SIZE = 256
#: Largest seed, as in the widget (torch and numpy both accept it).
MAX_SEED = 2**31 - 1


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        message = " ".join(message.split())  # it may quote arguments holding line breaks
        self.exit(EXIT_BAD_INPUT, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers like 2,1,1, got {text!r}"
        ) from None
    if not all(v > 0 and v < float("inf") for v in values):
        raise argparse.ArgumentTypeError(f"spacing values must be positive, got {text!r}")
    return values


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers like 128,128, got {text!r}"
        ) from None


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _decay(text: str) -> float:
    value = _non_negative(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def _fraction(text: str) -> float:
    value = _non_negative(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def _refinement_weight(text: str) -> float:
    value = _non_negative(text)
    if value > 100:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 100], got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _rounds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to 100, got {text!r}")
    return value


def _batch_size(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_BATCH_SIZE:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_BATCH_SIZE} patches per step, got {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to {MAX_SEED}, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("expected a number > 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``scribbleseg`` command."""
    from scribbleseg.core.config import LossConfig, TrainConfig

    defaults = LossConfig()
    parser = _Parser(
        prog=PROG,
        description="Train a segmentation network from scribbles, apply it, evaluate and export results.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show a traceback on unexpected errors")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    files = "(.tif/.tiff, .npy or .zarr; an OME-Zarr image reads level 0)"
    train = sub.add_parser(
        "train",
        help="train a model from an image and sparse labels",
        description=f"Train a model from IMAGE and sparse LABELS {files}. LABELS: 0 = unlabelled, "
        "k >= 1 = class k. An IMAGE with one more dimension than LABELS has a channel axis.",
    )
    train.add_argument("image", metavar="IMAGE")
    train.add_argument("labels", metavar="LABELS")
    train.add_argument("-o", "--output", metavar="MODEL", required=True, help="model folder to write")
    train.add_argument(
        "--points", metavar="CSV", help="point annotations (napari Points CSV with a 'class' column)"
    )
    _add_image_options(train)
    budget = train.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=_positive_int, help="number of training steps")
    budget.add_argument(
        "--time-budget",
        type=_positive_float,
        metavar="SECONDS",
        help="train for this many seconds (default 120)",
    )
    train.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    train.add_argument(
        "--init", metavar="MODEL", help="warm-start from this model (same classes and channels)"
    )
    train.add_argument("--network", choices=["small", "large"], default="small", help="network size")
    train.add_argument(
        "--patch-size", type=_ints, metavar="[Z,]Y,X", help="training patch size (multiples of 16)"
    )
    train.add_argument("--batch-size", type=_batch_size, help="patches per step (default 4 in 2D, 2 in 3D)")
    train.add_argument("--learning-rate", type=_positive_float, help="AdamW learning rate")
    train.add_argument(
        "--intensity-augmentation",
        type=_non_negative,
        default=TrainConfig.intensity_augmentation,
        metavar="S",
        help="spread of the random intensity scale/shift of training patches, as a multiple of the "
        f"default (0 = none; default {TrainConfig.intensity_augmentation})",
    )
    train.add_argument(
        "--contrastive-weight",
        type=_non_negative,
        default=defaults.contrastive_weight,
        metavar="W",
        help=f"weight of the supervised contrastive loss (0 = off; default {defaults.contrastive_weight})",
    )
    train.add_argument(
        "--crf-weight",
        type=_non_negative,
        default=defaults.crf_weight,
        metavar="W",
        help=f"weight of the dense-CRF loss (0 = off; default {defaults.crf_weight})",
    )
    train.add_argument(
        "--dynamic-crf-weight",
        type=_non_negative,
        default=defaults.dynamic_crf_weight,
        metavar="W",
        help=f"weight of the deep-feature CRF loss (0 = off; default {defaults.dynamic_crf_weight})",
    )
    train.add_argument(
        "--teacher-weight",
        type=_non_negative,
        default=defaults.teacher_weight,
        metavar="W",
        help="weight of the soft labels of a random forest on filter features, fading out over "
        f"{defaults.teacher_steps} steps (0 = off; default {defaults.teacher_weight})",
    )
    train.add_argument(
        "--teacher-refinement",
        type=_non_negative,
        default=None,
        metavar="L",
        help="weight of a mean-field CRF refinement of the forest teacher's soft labels, which moves them "
        "onto the image's edges (0 = the forest's probabilities as they are; default 1 in 2D, 0 in 3D)",
    )
    train.add_argument(
        "--teacher-self-training",
        type=_rounds,
        default=None,
        metavar="R",
        help="rounds of self-training of the forest teacher: fitted again on confident voxels of its "
        "refined map and refined again (0 = none; default 8 in 2D, 0 in 3D)",
    )
    train.add_argument(
        "--teacher-pseudo-boundary",
        type=_non_negative,
        default=LossConfig.teacher_pseudo_boundary,
        metavar="W",
        help="the self-training draws its pseudo-labels mostly within about W voxels of the class "
        f"boundaries of the teacher's map (0 = evenly; default {LossConfig.teacher_pseudo_boundary:g})",
    )
    train.add_argument(
        "--weight-average",
        type=_decay,
        default=TrainConfig.weight_average,
        metavar="D",
        help="decay of the moving average of the weights that is saved and used for prediction "
        f"(0 = off; default {TrainConfig.weight_average})",
    )
    train.add_argument(
        "--forest-blend",
        type=_fraction,
        default=TrainConfig.forest_blend,
        metavar="W",
        help="weight of the random forest's probabilities mixed into the saved model's predictions, "
        f"falling as the network trains, to 0 after {defaults.teacher_steps} steps or --forest-blend-steps "
        f"(0 = network only; default {TrainConfig.forest_blend})",
    )
    train.add_argument(
        "--forest-blend-steps",
        type=_positive_int,
        default=None,
        metavar="N",
        help="steps after which the network stands alone: the forest's weight hands over to the network "
        "from 2/3 of N to N (default 900 in 2D; in 3D none, the weight then falls over the teacher's "
        f"{defaults.teacher_steps} steps)",
    )
    train.add_argument(
        "--prevalence-correction",
        action="store_true",
        help="re-weight predictions to the class shares they imply over the image (off by default): "
        "narrows objects that come out too wide from scribbles, but can wipe out a class trained on a few "
        "point clicks and shrinks objects whose strokes cover only their core",
    )
    train.add_argument(
        "--crf-refinement",
        type=_refinement_weight,
        default=TrainConfig.crf_refinement,
        metavar="W",
        help="weight of the CRF refinement of the saved model's predictions: mean-field inference that "
        "moves boundaries to the image's edges, with an intensity width of twice the image's noise "
        f"(0 = off; default {TrainConfig.crf_refinement})",
    )
    train.add_argument("--background-class", type=int, metavar="K", help="class value that is background")
    train.add_argument("--quiet", action="store_true", help="no progress lines")
    train.set_defaults(func=_cmd_train)

    predict = sub.add_parser(
        "predict",
        help="apply a model to an image",
        description=f"Predict the classes of every voxel of IMAGE {files} with MODEL.",
    )
    predict.add_argument("model", metavar="MODEL")
    predict.add_argument("image", metavar="IMAGE")
    predict.add_argument("-o", "--output", metavar="OUT", required=True, help="labels file to write")
    predict.add_argument(
        "--probabilities", metavar="OUT", help="also write class probabilities (K, [Z,] Y, X)"
    )
    predict.add_argument(
        "--probabilities-dtype",
        choices=["float32", "float16"],
        default="float32",
        help="stored type of the probabilities (default float32)",
    )
    _add_image_options(predict)
    predict.add_argument("--tta", action="store_true", help="average over flipped copies (slower)")
    predict.add_argument(
        "--network-only",
        action="store_true",
        help="leave out the random forest the model mixes into its prediction (--forest-blend): "
        "faster on very large images, the network's own prediction",
    )
    predict.add_argument(
        "--no-crf-refinement",
        action="store_true",
        help="leave out the model's CRF refinement (--crf-refinement): boundaries as the network and "
        "the forest put them, a little faster",
    )
    predict.add_argument(
        "--float32",
        action="store_true",
        help="compute in float32 (default: bf16/fp16 mixed precision where the GPU or CPU has it natively)",
    )
    predict.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run the blocks on a dask.distributed cluster: tcp://host:8786, or local:N for N local "
        "worker processes (paths must be visible to the workers)",
    )
    predict.add_argument(
        "--block-size",
        type=_ints,
        metavar="[Z,]Y,X",
        help="voxels predicted per block, a multiple of the output chunks (default about 256^3 in 3D, "
        "2048^2 in 2D); memory grows with it",
    )
    predict.add_argument("--quiet", action="store_true", help="no progress lines")
    predict.set_defaults(func=_cmd_predict)

    evaluate = sub.add_parser(
        "evaluate",
        help="Dice and IoU of a prediction against ground truth",
        description="Print per-class Dice and IoU of PRED against GT as JSON.",
    )
    evaluate.add_argument("prediction", metavar="PRED")
    evaluate.add_argument("ground_truth", metavar="GT")
    evaluate.add_argument(
        "--background-class", type=int, metavar="K", help="leave class K out of the foreground mean"
    )
    evaluate.set_defaults(func=_cmd_evaluate)

    export = sub.add_parser(
        "export",
        help="write labels as TIFF / OME-TIFF / OME-Zarr",
        description="Convert LABELS to OUT, block by block, optionally with a class as 0: .tif (ImageJ "
        "hyperstack with spacing, BigTIFF above 4 GB, compressed), .ome.tif (OME-TIFF), .zarr (OME-Zarr "
        "labels with a multiscale pyramid) or .npy.",
    )
    export.add_argument("labels", metavar="LABELS")
    export.add_argument("-o", "--output", metavar="OUT", required=True)
    export.add_argument("--background-class", type=int, metavar="K", help="write class K as 0")
    export.add_argument("--spacing", type=_floats, metavar="[Z,]Y,X", help="physical voxel spacing to record")
    export.set_defaults(func=_cmd_export)
    return parser


def _add_image_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--channel-axis", type=int, metavar="N", help="channel axis of IMAGE (default 0)")
    parser.add_argument(
        "--spacing",
        type=_floats,
        metavar="[Z,]Y,X",
        help="physical voxel spacing (default: from the file, else 1)",
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="compute device")


# --------------------------------------------------------------------------- helpers
def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _image_source(args: argparse.Namespace, image_path: str, spatial_dims: int) -> Any:
    """Open IMAGE lazily with the channel rule of the CLI contract."""
    from scribbleseg.core.volume import ImageSource
    from scribbleseg.io.arrays import read_array

    image = read_array(image_path, lazy=True)
    ndim = image.data.ndim
    if ndim == spatial_dims + 1:
        # ImageJ TIFFs keep channels after Z (ZCYX): the file's axes say where they are.
        from_file = image.axes.index("C") if image.axes and "C" in image.axes else 0
        channel_axis = args.channel_axis if args.channel_axis is not None else from_file
        if not -ndim <= channel_axis < ndim:
            raise InputError(f"--channel-axis {channel_axis} is out of range for an image with {ndim} axes")
    elif ndim == spatial_dims:
        if args.channel_axis is not None:
            raise InputError(
                f"--channel-axis was given but IMAGE {image_path} has no extra axis "
                f"(shape {tuple(image.data.shape)}, {spatial_dims} spatial axes)"
            )
        channel_axis = None
    else:
        raise InputError(
            f"IMAGE {image_path} has shape {tuple(image.data.shape)}: expected {spatial_dims} spatial axes, "
            f"or {spatial_dims + 1} with a channel axis"
        )
    spacing = args.spacing or image.spacing
    if spacing is not None and len(spacing) != spatial_dims:
        if args.spacing is not None:
            raise InputError(
                f"--spacing has {len(spacing)} values but the image has {spatial_dims} spatial axes"
            )
        spacing = None
    return ImageSource(image.data, channel_axis=channel_axis, spacing=spacing)


def _print_progress(update: Any, last_print: float) -> float:
    now = time.perf_counter()
    if update.done or now - last_print >= 5.0:
        terms = " ".join(f"{k} {v:.4f}" for k, v in update.terms.items())
        _say(f"step {update.step:5d}  {update.elapsed:6.1f} s  loss {update.loss:.4f}  ({terms})")
        return now
    return last_print


# --------------------------------------------------------------------------- commands
def _cmd_train(args: argparse.Namespace) -> int:
    import numpy as np

    from scribbleseg.core.annotations import check_labels, labels_to_target
    from scribbleseg.core.config import LossConfig, ModelConfig, TrainConfig
    from scribbleseg.core.engine import Trainer
    from scribbleseg.io.arrays import read_array
    from scribbleseg.io.checkpoint import load_model, save_model
    from scribbleseg.io.points import read_points_csv

    labels_file = read_array(args.labels, lazy=True)
    spatial_dims = labels_file.data.ndim
    if spatial_dims not in (2, 3):
        raise InputError(
            f"LABELS {args.labels} has shape {tuple(labels_file.data.shape)}: expected a 2D or 3D array"
        )
    source = _image_source(args, args.image, spatial_dims)
    labels = np.asarray(check_labels(labels_file.data, spatial_shape=source.spatial_shape))
    points = point_classes = None
    if args.points:
        points, point_classes = read_points_csv(args.points, ndim=spatial_dims)
    train_options: dict[str, Any] = {
        "seed": args.seed,
        "device": args.device,
        "weight_average": args.weight_average,
        "forest_blend": args.forest_blend,
        "forest_blend_steps": args.forest_blend_steps,
        "prevalence_correction": args.prevalence_correction,
        "crf_refinement": args.crf_refinement,
        "intensity_augmentation": args.intensity_augmentation,
    }
    if args.steps is None and args.time_budget is None:
        train_options["time_budget"] = 120.0
    else:
        train_options.update(steps=args.steps, time_budget=args.time_budget)
    for name in ("patch_size", "batch_size", "learning_rate"):
        if getattr(args, name) is not None:
            train_options[name] = getattr(args, name)
    train_config = TrainConfig(**train_options)
    loss_config = LossConfig(
        contrastive_weight=args.contrastive_weight,
        crf_weight=args.crf_weight,
        dynamic_crf_weight=args.dynamic_crf_weight,
        teacher_weight=args.teacher_weight,
        teacher_refinement=args.teacher_refinement,
        teacher_self_training=args.teacher_self_training,
        teacher_pseudo_boundary=args.teacher_pseudo_boundary,
    )
    target = labels_to_target(
        labels,
        points=points,
        point_classes=point_classes,
        spacing=source.spacing,
        point_radius=train_config.point_radius,
        background=args.background_class,
    )
    init_model = None
    if args.init:
        init_model, init_meta = load_model(args.init, device="cpu")
        if tuple(init_meta.class_values) != tuple(target.class_map.values):
            raise InputError(
                f"--init model {args.init} was trained on classes {list(init_meta.class_values)} but LABELS "
                f"has classes {list(target.class_map.values)}"
            )
    _say(
        f"training on {source.spatial_shape} image, {source.n_channels} channel(s), classes "
        f"{list(target.class_map.values)}, {len(target.index)} labelled voxels"
    )
    trainer = Trainer(
        source,
        target,
        model_config=ModelConfig(size=args.network),
        loss_config=loss_config,
        train_config=train_config,
        init_model=init_model,
    )
    _say(f"device {trainer.device}, patch {trainer.patch_size}, batch {trainer.batch_size}")
    last_print = time.perf_counter()
    for update in trainer.run():
        if update.message:
            _say(update.message)
        if not args.quiet:
            last_print = _print_progress(update, last_print)
    path = save_model(args.output, trainer.model, trainer.metadata())
    _say(f"saved model after {trainer.step} steps ({trainer.seconds:.1f} s) to {path}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    import pathlib
    import shutil

    import zarr

    from scribbleseg.core.blockwise import BlockwiseProgress, predict_blockwise, reading_image
    from scribbleseg.core.inference import resolve_device
    from scribbleseg.distributed import ImageSpec, predict_on_cluster, prediction_id, weights_fingerprint
    from scribbleseg.io.arrays import file_format, output_path, write_array
    from scribbleseg.io.checkpoint import load_model, read_metadata
    from scribbleseg.io.zarr import lazy_zarr

    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    meta = read_metadata(args.model)
    source = _image_source(args, args.image, meta.spatial_dims)
    if source.n_channels != meta.in_channels:
        raise InputError(
            f"IMAGE {args.image} has {source.n_channels} channel(s) but model {args.model} expects "
            f"{meta.in_channels}; use --channel-axis to pick the channel axis"
        )
    if args.block_size is not None and len(args.block_size) != meta.spatial_dims:
        raise InputError(
            f"--block-size has {len(args.block_size)} values but the image has {meta.spatial_dims} "
            "spatial axes"
        )
    image_path = pathlib.Path(args.image).resolve()
    # (final file, zarr predicted into, axes) for the labels and, if asked, the probabilities
    outputs: list[tuple[pathlib.Path, pathlib.Path, str]] = []
    spatial_axes = "ZYX"[-meta.spatial_dims :]
    for name, axes in ((args.output, spatial_axes), (args.probabilities, "C" + spatial_axes)):
        if name is None:
            continue
        final = output_path(name)
        resolved = final.resolve()
        if resolved == image_path or image_path in resolved.parents:
            raise InputError(f"OUT {final} would overwrite IMAGE {args.image}: choose another name")
        # A non-zarr OUT is predicted into a hidden zarr beside it (resumable), then converted.
        target = final if file_format(final) == "zarr" else final.with_name(f".{final.name}.partial.zarr")
        outputs.append((final, target, axes))
    labels_target = outputs[0][1]
    probabilities_target = outputs[1][1] if len(outputs) > 1 else None
    with reading_image(f"IMAGE {args.image}"):
        normalisation = source.normalisation  # sampled once, shared by every block and worker

    last_print = [time.perf_counter()]

    def report(update: BlockwiseProgress) -> None:
        now = time.perf_counter()
        if args.quiet or now - last_print[0] < 10.0:
            return
        last_print[0] = now
        left = update.elapsed / update.blocks_computed * (update.blocks_total - update.blocks_done)
        _say(
            f"block {update.blocks_done}/{update.blocks_total} ({100 * update.fraction:.0f} %), "
            f"{update.elapsed:.0f} s, about {left:.0f} s left"
        )

    options: dict[str, Any] = {
        "probabilities": probabilities_target,
        "probabilities_dtype": args.probabilities_dtype,
        "block_shape": args.block_size,
        "tta": args.tta,
        "amp": not args.float32,
        "progress": report,
    }
    if args.scheduler:
        image = ImageSpec(str(image_path), source.channel_axis, source.spacing, normalisation)
        result = predict_on_cluster(
            args.model,
            image,
            labels_target,
            scheduler=args.scheduler,
            device=args.device,
            network_only=args.network_only,
            refine=not args.no_crf_refinement,
            **options,
        )
    else:
        model, _ = load_model(args.model, device=device)
        if args.network_only:
            model.forest_blend = None
        if args.no_crf_refinement:
            model.refinement = None
        result = predict_blockwise(
            model,
            source,
            labels_target,
            class_values=meta.class_values,
            device=device,
            model_id=prediction_id(
                weights_fingerprint(args.model), args.network_only, not args.no_crf_refinement
            ),
            image_name=str(image_path),
            **options,
        )
    for final, target, axes in outputs:
        if target != final:
            data = lazy_zarr(zarr.open_array(str(target), mode="r"), target)
            write_array(final, data, spacing=source.spacing, axes=axes)
            shutil.rmtree(target, ignore_errors=True)
    resumed = f", {result.blocks_skipped} already done" if result.blocks_skipped else ""
    _say(
        f"predicted {source.spatial_shape} in {result.seconds:.1f} s ({result.blocks_total} blocks"
        f"{resumed}) -> {args.output}"
    )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from scribbleseg.core.metrics import dice_iou
    from scribbleseg.io.arrays import read_array

    prediction = read_array(args.prediction, lazy=True).data
    ground_truth = read_array(args.ground_truth, lazy=True).data
    if tuple(prediction.shape) != tuple(ground_truth.shape):
        raise InputError(
            f"PRED shape {tuple(prediction.shape)} differs from GT shape {tuple(ground_truth.shape)}"
        )
    scores = dice_iou(prediction, ground_truth, ignore_value=0)
    foreground = [v for v in scores if v != args.background_class]
    report = {
        "classes": {str(v): scores[v] for v in scores},
        "mean_dice": _mean([scores[v]["dice"] for v in scores]),
        "mean_iou": _mean([scores[v]["iou"] for v in scores]),
        "mean_foreground_dice": _mean([scores[v]["dice"] for v in foreground]),
    }
    print(json.dumps(report, indent=2))
    return 0


def _mean(values: Sequence[float]) -> float | None:
    return float(sum(values) / len(values)) if values else None


def _cmd_export(args: argparse.Namespace) -> int:
    import dask.array as da

    from scribbleseg.io.arrays import default_axes, file_format, read_array, write_array
    from scribbleseg.io.ome import write_ome_zarr
    from scribbleseg.io.zarr import default_chunks

    labels = read_array(args.labels, lazy=True)
    data = labels.data
    if data.dtype.kind not in "uib":
        raise InputError(f"LABELS {args.labels} has dtype {data.dtype}; labels must be integers")
    axes = labels.axes if labels.axes and len(labels.axes) == data.ndim and "S" not in labels.axes else None
    if not isinstance(data, da.Array):  # e.g. a memory-mapped .npy: read it chunk by chunk
        chunk_axes = axes or default_axes(data.ndim)
        data = da.from_array(data, chunks=default_chunks(tuple(data.shape), chunk_axes))
    if args.background_class is not None:
        data = da.where(data == args.background_class, 0, data).astype(data.dtype)
    spacing = args.spacing or labels.spacing
    if file_format(args.output) == "zarr":
        write_ome_zarr(args.output, data, spacing=spacing, axes=axes, labels=True)
    else:
        write_array(args.output, data, spacing=spacing, axes=axes)
    _say(f"wrote {args.output}")
    return 0


# --------------------------------------------------------------------------- entry point
def _show_warning(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
    _say(f"warning: {message}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    previous = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        return int(args.func(args))
    except ScribbleSegError as exc:
        return _fail(f"error: {_one_line(exc)}", EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except MemoryError:
        return _fail(
            "error: out of memory; try a smaller --patch-size / --batch-size or a machine with more memory",
            EXIT_BAD_INPUT,
        )
    except OSError as exc:  # disk full, permission denied … on paths the user gave us
        return _fail(f"error: {_one_line(exc)}", EXIT_BAD_INPUT)
    except Exception as exc:
        if args.debug:
            raise
        message = f"internal error: {type(exc).__name__}: {_one_line(exc)} (rerun with --debug for details)"
        return _fail(message, EXIT_INTERNAL)
    finally:
        warnings.showwarning = previous


def _fail(message: str, status: int) -> int:
    """Report ``message`` as the one line of a failed command and return ``status``.

    Writes that the failure abandoned (zarr's asyncio tasks, e.g. on a full disk) would otherwise
    add "Task was destroyed but it is pending!" reports to stderr when the process exits.
    """
    _say(message)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL + 1)
    return status


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
