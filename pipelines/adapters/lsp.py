"""Leeds Sports Pose (LSP) and LSP-extended (LSPET): one person per image, 14 joints in ``joints.mat``.

The two ``joints`` arrays look alike and are not:

* **LSP** (``lsp_dataset``, and ``lsp_dataset_original`` with the full-size images): ``joints`` is
  **3 × 14 × 2000** (x; y; flag), **flag 0 = visible, 1 = occluded**. Every joint is annotated (occluded ones
  where the annotator judged them to be), so all get confidence 1, occluded ones ``occluded_confidence``.
  Images ``images/im0001.jpg`` … ``im2000.jpg``. Splits as the literature uses them: images 1–1000 train,
  1001–2000 test. SPIN trains on the original-size images ("lsp-orig") and tests on the small ones ("lsp").
* **LSPET** (``lspet_dataset``): ``joints`` is **14 × 3 × 10000** (joint; x, y, flag; image), **flag 1 =
  visible** — inverted against LSP. Joints with flag 0 often carry placeholder coordinates (0 or negative), so
  they are treated as not annotated (confidence 0). Images ``im00001.jpg`` … (5 digits). All 10,000 are train.

Both are MATLAB files in 1-based pixels; fitloop subtracts 1. A MATLAB v7.3 (HDF5) save of ``joints`` is read too
(h5py). A ``joints`` in neither layout is one error line stating its shape and both layouts. A flag other than 0 or
1 makes the image a ``malformed_annotation`` reject (as COCO's adapter rejects a visibility flag COCO does not
define). LSP's splits are by image index: a file of fewer than 2000 images is read as the images from im0001 on
(a subset, as the synthetic generator writes, within the train split), but a split it covers part-way after its
first image (``test`` of a file of 1001–1999 images: cut short) is an error, never a test set of a few images;
``all`` reads every image the file holds, as LSPET's splits do. Joint order: r-ankle, r-knee, r-hip, l-hip, l-knee,
l-ankle, r-wrist, r-elbow, r-shoulder, l-shoulder, l-elbow, l-wrist, neck, head-top (core.joints.LSP_JOINTS).
Box (SPIN): the tight box of the annotated joints, ``scale = 1.2·max(w, h)/200``.
Keys: ``lsp/im1010``, ``lsp-orig/im0001``, ``lspet/im00002``: the image name, which is the dataset's own id.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np
import scipy.io

from core.joints import LSP_JOINTS, to_canonical
from pipelines.adapters.base import (
    PARSER_ERRORS,
    AnnotationFileError,
    CheckConfig,
    DatasetError,
    Output,
    RecordBuilder,
    check_split,
    display_path,
    image_folder,
    joint_confidence,
    keypoint_box,
    occluded_names,
    resolve_under,
)
from shards.schema import make_key

NUM_LSP_JOINTS = len(LSP_JOINTS)  # 14
MATLAB_OFFSET = 1.0  # 1-based MATLAB pixels -> 0-based


@dataclass(frozen=True, kw_only=True)
class LspConfig(CheckConfig):
    """Options of the LSP and LSPET adapters (the checks: `CheckConfig`).

    Attributes:
        joints_file: the ``joints.mat``, absolute or relative to the root. Default ``<root>/joints.mat``.
        image_dir: folder of the images. Default ``<root>/images``.
        bbox_expand: box side = ``bbox_expand ·`` the larger side of the joints' tight box (SPIN: 1.2).
    """

    joints_file: Path | None = None
    image_dir: Path | None = None
    bbox_expand: float = 1.2


@dataclass(frozen=True)
class _Layout:
    """How one of the two ``joints.mat`` variants is laid out and what its flag means."""

    axes: str                 # order of (c)oordinate/flag, (j)oint, (i)mage axes in the file
    flag_visible: float       # the flag value that means "visible"
    invisible_annotated: bool  # True: a not-visible joint is annotated but occluded; False: not annotated
    image_digits: int         # im%04d.jpg or im%05d.jpg
    images: int               # how many images the dataset's joints.mat holds
    splits: dict[str, tuple[int, int] | None]  # split -> [first, last) 0-based image range; None: every image
    flag_names: tuple[str, str]  # what flags 0 and 1 mean, for messages
    title: str                # the dataset, for messages
    adapters: str             # the adapters that read this layout, for messages

    def described(self) -> str:
        """The layout in words: ``3 x 14 x N (x, y, flag; joint; image)``."""
        sizes = {"c": ("3", "x, y, flag"), "j": ("14", "joint"), "i": ("N", "image")}
        return (" x ".join(sizes[a][0] for a in self.axes) + " (" + "; ".join(sizes[a][1] for a in self.axes)
                + ")")


LSP_LAYOUT = _Layout(axes="cji", flag_visible=0.0, invisible_annotated=True, image_digits=4, images=2000,
                     splits={"train": (0, 1000), "test": (1000, 2000), "all": None},
                     flag_names=("visible", "occluded"), title="LSP", adapters="lsp or lsp-orig")
LSPET_LAYOUT = _Layout(axes="jci", flag_visible=1.0, invisible_annotated=False, image_digits=5, images=10000,
                       splits={"train": None, "all": None}, flag_names=("not visible", "visible"),
                       title="LSP-extended", adapters="lspet")
LAYOUTS = (LSP_LAYOUT, LSPET_LAYOUT)
FLAGS = (0.0, 1.0)  # the only flag values either layout has


class LspAdapter:
    """LSP ("lsp", "lsp-orig") or LSP-extended ("lspet"), by the layout given; see the module docstring."""

    config_type = LspConfig

    def __init__(self, name: str, layout: _Layout) -> None:
        self.name = name
        self.layout = layout
        self.splits = tuple(layout.splits)

    def read(self, root: Path, split: str, config: LspConfig | None = None) -> Iterator[Output]:
        """Yield one `PersonRecord` or `Reject` per image of the split, in image order; `AnnotationFileError`
        when the joints file cannot be read as this layout."""
        config = config or LspConfig()
        check_split(self, split)
        root = Path(root)
        path = resolve_under(root, config.joints_file) or root / "joints.mat"
        if not path.is_file():
            raise DatasetError(f"{self.name}: joints file {path} does not exist")
        image_root, image_dir = image_folder(root, resolve_under(root, config.image_dir) or root / "images")
        builder = RecordBuilder(self.name, split, config, root=root)
        source = display_path(path, root)
        try:
            joints = self._load(path)  # (N, 14, 3): x, y, flag per image and joint
        except PARSER_ERRORS as err:
            raise AnnotationFileError(path, f"an {self.name} joints.mat", err) from None

        first, last = self.layout.splits[split] or (0, len(joints))
        if 0 < first < len(joints) < last:  # a subset stops within the first split; this one reaches into a later
            raise DatasetError(
                f"{path}: holds {len(joints)} images where {self.layout.title}'s holds {self.layout.images}; its "
                f"splits are by image index ({self._split_ranges()}), so split {split!r} would hold "
                f"{len(joints) - first} of its {last - first} images: is the file cut short? (Split 'all' converts "
                f"every image the file holds.)")
        for i in range(first, min(last, len(joints))):
            stem = f"im{i + 1:0{self.layout.image_digits}d}"
            xy, flag = joints[i, :, :2] - MATLAB_OFFSET, joints[i, :, 2]
            bad = [f"{name} {value:g}" for name, value in zip(LSP_JOINTS, flag) if value not in FLAGS]
            if bad:  # as COCO rejects a visibility flag it does not define: a guess would mislabel the joint
                yield builder.reject(source, stem, "malformed_annotation", (
                    f"joint flags must be 0 ({self.layout.flag_names[0]}) or 1 ({self.layout.flag_names[1]}); got "
                    f"{', '.join(bad)}"), make_key(self.name, stem))
                continue
            visible = flag == self.layout.flag_visible
            annotated = np.ones(NUM_LSP_JOINTS, bool) if self.layout.invisible_annotated else visible
            occluded = annotated & ~visible
            conf = joint_confidence(annotated, occluded, config.occluded_confidence)
            keypoints = to_canonical(np.column_stack([xy, conf]), "lsp")
            center, scale = keypoint_box(keypoints, config.bbox_expand) or (None, None)
            yield builder.person(
                key=make_key(self.name, stem), source=source, record=stem, image_root=image_root,
                image_path=(image_dir / f"{stem}.jpg").as_posix(), center=center, scale=scale, keypoints_2d=keypoints,
                extra={"occluded": occluded_names(occluded, LSP_JOINTS)})

    def _split_ranges(self) -> str:
        digits = self.layout.image_digits
        return ", ".join(f"{split}: im{first + 1:0{digits}d}-im{last:0{digits}d}"
                         for split, (first, last) in ((s, r) for s, r in self.layout.splits.items() if r))

    def _load(self, path: Path) -> np.ndarray:
        """``joints`` as (N, 14, 3), whichever layout the file uses; ValueError naming the mismatch."""
        joints = read_joints_mat(path)
        expected = {"c": 3, "j": NUM_LSP_JOINTS}
        shape = dict(zip(self.layout.axes, joints.shape))
        if joints.ndim != 3 or any(shape[axis] != size for axis, size in expected.items()):
            layouts = ", ".join(f"{layout.title}'s is {layout.described()}" for layout in LAYOUTS)
            other = [layout for layout in LAYOUTS if layout is not self.layout and joints.ndim == 3
                     and all(dict(zip(layout.axes, joints.shape))[a] == n for a, n in expected.items())]
            hint = f"; is this an {other[0].title} ({other[0].adapters}) file?" if other else ""
            raise ValueError(f"joints has shape {joints.shape}; {self.name} reads {self.layout.title}'s joints.mat: "
                             f"{layouts}{hint}")
        return np.transpose(joints, [self.layout.axes.index(a) for a in "ijc"])


def read_joints_mat(path: Path) -> np.ndarray:
    """The ``joints`` array of a MATLAB file as MATLAB shows it, float64: a v5/v7 file (scipy) or a v7.3 file
    (HDF5, h5py: MATLAB's column order reverses the axes, so the array is transposed back).

    ValueError when the file has no numeric ``joints``; scipy's and h5py's errors for a damaged file pass on.
    """
    try:
        mat = scipy.io.loadmat(str(path))
    except NotImplementedError as err:  # scipy reads v4–v7 only; a v7.3 file is HDF5 with a MATLAB header
        if "7.3" not in str(err):
            raise
        return _read_joints_v73(path)
    if "joints" not in mat:
        raise ValueError(f"no variable 'joints' (variables: {sorted(k for k in mat if not k.startswith('__'))})")
    return np.asarray(mat["joints"], dtype=np.float64)


def _read_joints_v73(path: Path) -> np.ndarray:
    try:
        with h5py.File(path, "r") as h5:
            if "joints" not in h5:
                raise ValueError(f"no variable 'joints' (variables: {sorted(k for k in h5 if not k.startswith('#'))})")
            node = h5["joints"]
            if not isinstance(node, h5py.Dataset) or node.dtype.kind not in "fiub":
                raise ValueError(f"'joints' is not a numeric array ({node})")
            return np.asarray(node[()], dtype=np.float64).T
    except (OSError, ValueError) as err:
        raise ValueError(f"a MATLAB v7.3 (HDF5) MAT file whose joints cannot be read ({err}); save it again "
                         f"with MATLAB's save -v7") from None
