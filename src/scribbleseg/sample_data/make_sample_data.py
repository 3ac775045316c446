"""Regenerate ScribbleSeg's sample data from the stardist and nilearn wheels.

Usage (from the repository root)::

    python src/scribbleseg/sample_data/make_sample_data.py \
        --stardist stardist-0.9.2-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl \
        --nilearn nilearn-0.14.1-py3-none-any.whl

``--stardist`` and ``--nilearn`` take either the wheel itself or a folder holding the extracted
package (the folder that contains ``stardist/`` or ``nilearn/``, the package folder itself, or the
folder that holds the data files). ``--out`` defaults to the folder of this script.

The output is deterministic: every random choice is drawn from ``numpy.random.default_rng`` with
fixed seeds, and the TIFF files carry no time stamp. The script needs numpy, scipy, scikit-image and
tifffile (all ScribbleSeg dependencies); the NIfTI files are parsed with gzip + numpy, so nibabel is
not needed. It is a maintainer's tool: the package never imports it.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import itertools
import pathlib
import struct
import sys
import zipfile
from collections import deque
from dataclasses import dataclass

import numpy as np
import tifffile
from scipy import ndimage
from skimage import draw, measure, morphology

# --------------------------------------------------------------------------------------------------
# Sources (member paths inside the wheels) and their SHA-256, so a changed upstream file is noticed.
STARDIST_IMAGE = "stardist/data/images/img2d.tif"
STARDIST_MASK = "stardist/data/images/mask2d.tif"
NILEARN_DATA = "nilearn/datasets/data/"
MNI_T1 = NILEARN_DATA + "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
MNI_GM = NILEARN_DATA + "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"
MNI_WM = NILEARN_DATA + "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"
EXPECTED_SHA256 = {
    STARDIST_IMAGE: "f9ccc1571b92c861ff87e28463068b43f61bd47357ed0503f711e5cd1eb97750",
    STARDIST_MASK: "59ad5e820b7982ca9d13e946fa6e7f64e2714899e00a2ae6c69aa79aad53d46f",
    MNI_T1: "421a10e872fd6cadae7f61d358dffbcc1795a497d61ee76c5dda2503e1a1e9e6",
    MNI_GM: "97a5ca69bd24db37a9cb7b32525e1733a209af904129bf1cd36da06d24243bed",
    MNI_WM: "382d92812de4744f9c86c7a0e4f680dc317a0a50e4da1f0153618a6798c7b7db",
}

# Class values (0 = unlabelled in the scribbles).
NUCLEI_BACKGROUND, NUCLEUS = 1, 2
MRI_BACKGROUND, GREY_MATTER, WHITE_MATTER = 1, 2, 3

# MRI crop, in voxel indices of the 1 mm template after reorientation to (Z, Y, X) with Z pointing
# superior, Y pointing posterior (anterior at the top of an axial view) and X pointing to the
# subject's right. Z 52..147 is MNI z = -20 .. +75 mm (basal ganglia to just below the vertex);
# Y and X cover the whole brain with a few voxels of margin.
MRI_Z = slice(52, 148, 2)  # every 2nd axial slice -> 48 slices, 2 mm apart
MRI_Y = slice(22, 206)  # 184 rows
MRI_X = slice(22, 174)  # 152 columns
MRI_SPACING = (2.0, 1.0, 1.0)
MRI_SCRIBBLED_SLICES = (12, 20, 30, 40)  # MNI z = +4, +20, +40, +60 mm

SEED_NUCLEI = 2018
SEED_MRI = 152


# --------------------------------------------------------------------------------------------------
# Reading the sources
def read_member(source: pathlib.Path, member: str) -> bytes:
    """Return the bytes of ``member`` (a path inside a wheel) from a wheel or an extracted folder."""
    if source.is_file():
        with zipfile.ZipFile(source) as wheel:
            return wheel.read(member)
    parts = pathlib.PurePosixPath(member).parts
    # the site-packages-like root, the package folder itself, ..., the folder holding the file
    for start in range(len(parts)):
        candidate = source.joinpath(*parts[start:])
        if candidate.is_file():
            return candidate.read_bytes()
    raise FileNotFoundError(f"{member} not found in {source}")


def checked_member(source: pathlib.Path, member: str) -> bytes:
    """Read ``member`` and warn when it differs from the file this sample data was made from."""
    data = read_member(source, member)
    digest = hashlib.sha256(data).hexdigest()
    if digest != EXPECTED_SHA256[member]:
        print(f"warning: {member} has SHA-256 {digest}, expected {EXPECTED_SHA256[member]}", file=sys.stderr)
    return data


_NIFTI_DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4"}


def read_nifti(gz_bytes: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Parse a gzipped single-file NIfTI-1 volume.

    Returns
    -------
    data : (Z, Y, X) ndarray
        Voxel array in C order, i.e. NIfTI's (i, j, k) axes reversed. Scaled by ``scl_slope``
        when the header asks for it.
    affine : (4, 4) ndarray
        Voxel (i, j, k) to world (x, y, z) mm, from the sform (or the qform offsets).
    """
    raw = gzip.decompress(gz_bytes)
    endian = "<" if struct.unpack("<i", raw[:4])[0] == 348 else ">"
    if struct.unpack(endian + "i", raw[:4])[0] != 348 or raw[344:348] != b"n+1\x00":
        raise ValueError("not a single-file NIfTI-1 image")
    dim = struct.unpack(endian + "8h", raw[40:56])
    datatype = struct.unpack(endian + "h", raw[70:72])[0]
    vox_offset = int(struct.unpack(endian + "f", raw[108:112])[0])
    slope, inter = struct.unpack(endian + "2f", raw[112:120])
    qform_code, sform_code = struct.unpack(endian + "2h", raw[252:256])
    if dim[0] != 3:
        raise ValueError(f"expected a 3D volume, got {dim[0]} dimensions")
    if datatype not in _NIFTI_DTYPES:
        raise ValueError(f"unsupported NIfTI datatype {datatype}")
    shape_ijk = dim[1:4]
    dtype = np.dtype(endian + _NIFTI_DTYPES[datatype])
    count = int(np.prod(shape_ijk))
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=vox_offset)
    data = data.reshape(shape_ijk[::-1])  # Fortran (i, j, k) -> C (k, j, i)
    if slope not in (0.0, 1.0) or inter != 0.0:
        data = data * slope + inter
    if sform_code > 0:
        affine = np.eye(4)
        affine[:3] = np.array(struct.unpack(endian + "12f", raw[280:328])).reshape(3, 4)
    elif qform_code > 0:
        quatern = struct.unpack(endian + "6f", raw[256:280])
        if any(quatern[:3]):
            raise ValueError("rotated qform not supported")
        pixdim = struct.unpack(endian + "8f", raw[76:108])
        affine = np.diag([*pixdim[1:4], 1.0])
        affine[:3, 3] = quatern[3:]
    else:
        raise ValueError("NIfTI file has neither sform nor qform")
    return np.ascontiguousarray(data), affine


def to_axial_view(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Reorient a (k, j, i) array with an axis-aligned RAS+ affine for axial viewing.

    Returns a (Z, Y, X) array: Z runs inferior -> superior, Y anterior -> posterior (so the nose is
    at the top of an axial slice) and X the subject's left -> right (neurological convention: the
    subject's left is on the left of the screen).
    """
    linear = affine[:3, :3]
    if not np.allclose(linear, np.diag(np.diag(linear))) or np.any(np.diag(linear) <= 0):
        raise ValueError(f"expected an axis-aligned RAS+ affine, got\n{affine}")
    return volume[:, ::-1, :]


# --------------------------------------------------------------------------------------------------
# Strokes
def rasterise(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Return a boolean mask of the polyline through ``points`` ((N, 2) row/col, float)."""
    mask = np.zeros(shape, dtype=bool)
    rounded = np.rint(points).astype(int)
    rounded[:, 0] = rounded[:, 0].clip(0, shape[0] - 1)
    rounded[:, 1] = rounded[:, 1].clip(0, shape[1] - 1)
    if len(rounded) == 1:
        mask[rounded[0, 0], rounded[0, 1]] = True
    for (r0, c0), (r1, c1) in itertools.pairwise(rounded):
        rr, cc = draw.line(r0, c0, r1, c1)
        mask[rr, cc] = True
    return mask


def thicken(stroke: np.ndarray, radius: int) -> np.ndarray:
    """Dilate a 1-pixel stroke to a brush of the given radius (radius 1 -> about 3 px wide)."""
    if radius == 0:
        return stroke
    return ndimage.binary_dilation(stroke, structure=morphology.disk(radius))


def skeleton_path(region: np.ndarray, rng: np.random.Generator, max_length: int) -> np.ndarray:
    """Trace a stroke along the skeleton of ``region``, like a hand following a structure.

    Picks a skeleton component (weighted by size), finds its longest geodesic path (two
    breadth-first searches) and returns a random window of at most ``max_length`` pixels of it as
    (N, 2) row/col coordinates. Returns an empty array if ``region`` is empty.
    """
    skeleton = morphology.skeletonize(region)
    components, n_components = ndimage.label(skeleton, structure=np.ones((3, 3)))
    if n_components == 0:
        return np.zeros((0, 2))
    sizes = np.bincount(components.ravel())[1:].astype(float)
    chosen = rng.choice(n_components, p=sizes / sizes.sum()) + 1
    pixels = {tuple(p) for p in np.argwhere(components == chosen)}

    def farthest(start: tuple[int, int]) -> tuple[tuple[int, int], dict]:
        parents = {start: None}
        queue = deque([start])
        last = start
        while queue:
            last = queue.popleft()
            r, c = last
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    neighbour = (r + dr, c + dc)
                    if neighbour in pixels and neighbour not in parents:
                        parents[neighbour] = last
                        queue.append(neighbour)
        return last, parents

    end_a, _ = farthest(min(pixels))
    end_b, parents = farthest(end_a)
    path = [end_b]
    while parents[path[-1]] is not None:
        path.append(parents[path[-1]])
    path = np.array(path, dtype=float)
    if len(path) > max_length:
        start = rng.integers(0, len(path) - max_length + 1)
        path = path[start : start + max_length]
    return path


def free_stroke(
    allowed: np.ndarray,
    rng: np.random.Generator,
    *,
    min_length: int,
    max_length: int,
    avoid: np.ndarray | None = None,
    attempts: int = 400,
) -> np.ndarray:
    """Draw a smooth, gently curving stroke that stays inside ``allowed``.

    The pen starts at a random allowed pixel and moves one pixel per step with a heading whose
    curvature is itself a random walk: a hand-drawn wiggle rather than a straight ruler line. The
    stroke ends when it reaches its drawn length or would leave ``allowed``; strokes shorter than
    ``min_length`` or passing within ``avoid`` are rejected and retried. Returns (N, 2) row/col
    coordinates, or an empty array if no attempt succeeded.
    """
    candidates = np.argwhere(allowed & ~avoid if avoid is not None else allowed)
    if len(candidates) == 0:
        return np.zeros((0, 2))
    blocked = ~allowed if avoid is None else (~allowed | avoid)
    for _ in range(attempts):
        position = candidates[rng.integers(len(candidates))].astype(float)
        heading = rng.uniform(0, 2 * np.pi)
        curvature = 0.0
        target = rng.integers(min_length, max_length + 1)
        points = [position.copy()]
        for _ in range(target):
            curvature = 0.85 * curvature + rng.normal(0.0, 0.025)
            heading += curvature
            position = position + np.array([np.sin(heading), np.cos(heading)])
            r, c = np.rint(position).astype(int)
            if not (0 <= r < allowed.shape[0] and 0 <= c < allowed.shape[1]) or blocked[r, c]:
                break
            points.append(position.copy())
        if len(points) >= min_length:
            return np.array(points)
    return np.zeros((0, 2))


def erode(mask: np.ndarray, radius: int = 1) -> np.ndarray:
    """Binary erosion with a disk; pixels outside the array count as outside the mask."""
    return ndimage.binary_erosion(mask, structure=morphology.disk(radius))


def drop_small(mask: np.ndarray, *, min_size: int) -> np.ndarray:
    """Remove 8-connected components smaller than ``min_size`` pixels."""
    components, _ = ndimage.label(mask, structure=np.ones((3, 3)))
    sizes = np.bincount(components.ravel())
    keep = sizes >= min_size
    keep[0] = False
    return keep[components]


def paint(scribbles: np.ndarray, path: np.ndarray, value: int, *, radius: int, inside: np.ndarray) -> None:
    """Paint ``path`` with a brush of ``radius`` into ``scribbles``, clipped to ``inside``."""
    if len(path) == 0:
        return
    stroke = thicken(rasterise(path, scribbles.shape), radius) & inside
    scribbles[stroke] = value


# --------------------------------------------------------------------------------------------------
# The samples
@dataclass(frozen=True)
class Sample:
    """One generated sample: arrays plus what goes into the TIFF metadata."""

    image: np.ndarray
    ground_truth: np.ndarray
    scribbles: np.ndarray
    spacing: tuple[float, ...]
    unit: str


def make_nuclei2d(stardist: pathlib.Path) -> Sample:
    """Nuclei (DSB 2018 via stardist): 2 classes, strokes on 18 nuclei and through background."""
    image = tifffile.imread(io.BytesIO(checked_member(stardist, STARDIST_IMAGE)))
    instances = tifffile.imread(io.BytesIO(checked_member(stardist, STARDIST_MASK)))
    ground_truth = np.where(instances > 0, NUCLEUS, NUCLEI_BACKGROUND).astype(np.uint8)
    rng = np.random.default_rng(SEED_NUCLEI)
    scribbles = np.zeros(image.shape, dtype=np.uint8)

    # Nuclei: a short dash along the skeleton of each chosen (clearly visible, not cut by the
    # border) nucleus, kept 1 px inside its outline.
    regions = [
        r
        for r in measure.regionprops(instances)
        if r.area >= 250
        and r.bbox[0] > 0
        and r.bbox[1] > 0
        and r.bbox[2] < image.shape[0]
        and r.bbox[3] < image.shape[1]
    ]
    chosen = rng.choice(len(regions), size=18, replace=False)
    for index in sorted(chosen):
        nucleus = instances == regions[index].label
        path = skeleton_path(erode(nucleus, 2), rng, max_length=40)
        paint(scribbles, path, NUCLEUS, radius=1, inside=erode(nucleus))

    # Background: curving strokes between nuclei, at least 5 px from any nucleus and apart from
    # each other so that they spread over the image.
    margin = np.zeros(image.shape, dtype=bool)
    margin[4:-4, 4:-4] = True
    allowed = (ndimage.distance_transform_edt(ground_truth == NUCLEI_BACKGROUND) > 5) & margin
    for _ in range(12):
        avoid = ndimage.distance_transform_edt(scribbles != NUCLEI_BACKGROUND) < 20
        path = free_stroke(allowed, rng, min_length=70, max_length=200, avoid=avoid)
        paint(scribbles, path, NUCLEI_BACKGROUND, radius=1, inside=allowed)

    return Sample(image, ground_truth, scribbles, spacing=(1.0, 1.0), unit="pixel")


def make_mri3d(nilearn: pathlib.Path) -> Sample:
    """T1 brain (MNI ICBM152 2009a via nilearn): background / grey matter / white matter."""
    volumes = {}
    for key, member in (("t1", MNI_T1), ("gm", MNI_GM), ("wm", MNI_WM)):
        data, affine = read_nifti(checked_member(nilearn, member))
        volumes[key] = to_axial_view(data, affine)[MRI_Z, MRI_Y, MRI_X]
    image = volumes["t1"]
    gm = volumes["gm"].astype(np.float64) / 255.0
    wm = volumes["wm"].astype(np.float64) / 255.0
    # Background (outside the brain and CSF) takes the rest of the probability; ties go to the
    # lower class value.
    probabilities = np.stack([1.0 - gm - wm, gm, wm])
    ground_truth = (np.argmax(probabilities, axis=0) + 1).astype(np.uint8)

    rng = np.random.default_rng(SEED_MRI)
    scribbles = np.zeros(image.shape, dtype=np.uint8)
    away_from_edges = np.zeros(image.shape[1:], dtype=bool)
    away_from_edges[4:-4, 4:-4] = True
    for z in MRI_SCRIBBLED_SLICES:
        truth = ground_truth[z]
        drawn = scribbles[z]  # a view: painting into it paints the volume

        # White matter: three 3-px strokes traced along the middle of the white matter.
        white = truth == WHITE_MATTER
        inner_white = erode(white, 2)
        for _ in range(3):
            free_of_strokes = inner_white & (ndimage.distance_transform_edt(drawn == 0) > 12)
            path = skeleton_path(free_of_strokes, rng, max_length=90)
            paint(drawn, path, WHITE_MATTER, radius=1, inside=erode(white))

        # Grey matter: the cortical ribbon is 2-4 mm thick, so a fine brush along its skeleton.
        grey = truth == GREY_MATTER
        for _ in range(3):
            free_of_strokes = grey & (ndimage.distance_transform_edt(drawn == 0) > 12)
            path = skeleton_path(free_of_strokes, rng, max_length=90)
            paint(drawn, path, GREY_MATTER, radius=1, inside=grey)

        # Background: three strokes in the air around the brain, and one through a ventricle / CSF
        # pocket when the slice has one.
        background = truth == MRI_BACKGROUND
        components, _ = ndimage.label(background)
        border_labels = np.unique(
            np.concatenate([components[0], components[-1], components[:, 0], components[:, -1]])
        )
        outside = np.isin(components, border_labels[border_labels > 0])
        allowed = (ndimage.distance_transform_edt(outside) > 3) & away_from_edges
        for _ in range(3):
            avoid = ndimage.distance_transform_edt(drawn != MRI_BACKGROUND) < 15
            path = free_stroke(allowed, rng, min_length=60, max_length=130, avoid=avoid)
            paint(drawn, path, MRI_BACKGROUND, radius=1, inside=allowed)
        inner_csf = drop_small(erode(background & ~outside), min_size=20)
        path = skeleton_path(inner_csf, rng, max_length=40)
        paint(drawn, path, MRI_BACKGROUND, radius=1, inside=erode(background))

    return Sample(image, ground_truth, scribbles, spacing=MRI_SPACING, unit="mm")


# --------------------------------------------------------------------------------------------------
# Writing and reporting
def write_tiff(path: pathlib.Path, array: np.ndarray, spacing: tuple[float, ...], unit: str) -> None:
    """Write an ImageJ-compatible, deflate-compressed TIFF that records the voxel spacing."""
    metadata = {"axes": "ZYX" if array.ndim == 3 else "YX", "unit": unit}
    if array.ndim == 3:
        metadata["spacing"] = spacing[0]
    tifffile.imwrite(
        path,
        array,
        imagej=True,
        resolution=(1.0 / spacing[-1], 1.0 / spacing[-2]),
        metadata=metadata,
        compression="zlib",
        compressionargs={"level": 9},
    )


def check(name: str, sample: Sample) -> None:
    """Refuse to write a sample whose scribbles break the agreed rules."""
    labelled = sample.scribbles > 0
    fraction = labelled.mean()
    if not np.array_equal(sample.scribbles[labelled], sample.ground_truth[labelled]):
        raise AssertionError(f"{name}: scribbles disagree with the ground truth")
    if fraction > 0.03:
        raise AssertionError(f"{name}: {fraction:.2%} of pixels scribbled, more than 3 %")
    if set(np.unique(sample.scribbles)) != {0, *np.unique(sample.ground_truth)}:
        raise AssertionError(f"{name}: a class has no scribble")


def report(name: str, sample: Sample) -> str:
    """Return a Markdown table row per class with the labelled fractions."""
    total = sample.scribbles.size
    rows = []
    for value in np.unique(sample.ground_truth):
        scribbled = int(np.count_nonzero(sample.scribbles == value))
        in_truth = int(np.count_nonzero(sample.ground_truth == value))
        rows.append(
            f"| {name} | {value} | {scribbled} | {scribbled / total:.3%} | {in_truth / total:.1%} "
            f"| {scribbled / in_truth:.3%} |"
        )
    scribbled = int(np.count_nonzero(sample.scribbles))
    rows.append(f"| {name} | all | {scribbled} | {scribbled / total:.3%} | 100 % | |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """Generate every sample file into ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stardist", type=pathlib.Path, required=True, help="stardist wheel or folder")
    parser.add_argument("--nilearn", type=pathlib.Path, required=True, help="nilearn wheel or folder")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path(__file__).resolve().parent)
    args = parser.parse_args(argv)

    samples = {"nuclei2d": make_nuclei2d(args.stardist), "mri3d": make_mri3d(args.nilearn)}
    args.out.mkdir(parents=True, exist_ok=True)
    print("| sample | class | scribbled px | of all px | class in GT | of the class |")
    print("|---|---|---|---|---|---|")
    for name, sample in samples.items():
        check(name, sample)
        for kind in ("image", "ground_truth", "scribbles"):
            array = getattr(sample, kind)
            write_tiff(args.out / f"{name}_{kind}.tif", array, sample.spacing, sample.unit)
        print(report(name, sample))
    return 0


if __name__ == "__main__":
    sys.exit(main())
