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

Both are MATLAB files in 1-based pixels; fitloop subtracts 1. Joint order: r-ankle, r-knee, r-hip, l-hip, l-knee,
l-ankle, r-wrist, r-elbow, r-shoulder, l-shoulder, l-elbow, l-wrist, neck, head-top (core.joints.LSP_JOINTS).
Box (SPIN): the tight box of the annotated joints, ``scale = 1.2·max(w, h)/200``.
Keys: ``lsp/im1010``, ``lsp-orig/im0001``, ``lspet/im00002``: the image name, which is the dataset's own id.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

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
    splits: dict[str, tuple[int, int]]  # split -> [first, last) 0-based image range


LSP_LAYOUT = _Layout(axes="cji", flag_visible=0.0, invisible_annotated=True, image_digits=4,
                     splits={"train": (0, 1000), "test": (1000, 2000), "all": (0, 2000)})
LSPET_LAYOUT = _Layout(axes="jci", flag_visible=1.0, invisible_annotated=False, image_digits=5,
                       splits={"train": (0, 10000), "all": (0, 10000)})


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

        first, last = self.layout.splits[split]
        for i in range(first, min(last, len(joints))):
            stem = f"im{i + 1:0{self.layout.image_digits}d}"
            xy, flag = joints[i, :, :2] - MATLAB_OFFSET, joints[i, :, 2]
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

    def _load(self, path: Path) -> np.ndarray:
        """``joints`` as (N, 14, 3), whichever layout the file uses; ValueError naming the mismatch."""
        mat = scipy.io.loadmat(str(path))
        if "joints" not in mat:
            raise ValueError(f"no variable 'joints' (variables: {sorted(k for k in mat if not k.startswith('__'))})")
        joints = np.asarray(mat["joints"], dtype=np.float64)
        expected = {"c": 3, "j": NUM_LSP_JOINTS}
        shape = dict(zip(self.layout.axes, joints.shape))
        if joints.ndim != 3 or any(shape[axis] != size for axis, size in expected.items()):
            described = " × ".join({"c": "3", "j": "14", "i": "N"}[a] for a in self.layout.axes)
            other = "LSP-extended (lspet)" if self.layout is LSP_LAYOUT else "LSP (lsp)"
            raise ValueError(f"joints has shape {joints.shape}, the {self.name} layout is {described}; "
                             f"is this an {other} file?")
        return np.transpose(joints, [self.layout.axes.index(a) for a in "ijc"])
