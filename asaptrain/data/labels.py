"""Cityscapes label definitions, taken from the official ``cityscapesscripts`` package.

Label maps are stored as the ``*_gtFine_labelIds.png`` files store them: one uint8 id per pixel,
ids 0..33 (``cityscapesscripts``' ``json2labelImg`` never draws the license plate, id -1, so it
cannot appear in a labelIds PNG). Instance maps follow ``*_gtFine_instanceIds.png``: a pixel of
an instance of class ``c`` holds ``c * 1000 + k``; any other pixel holds its class id.

    from asaptrain.data import labels
    rgb = labels.colorize(ids)          # (H, W) uint8 ids -> (H, W, 3) uint8 official colours
"""

from __future__ import annotations

import numpy as np
from cityscapesscripts.helpers.labels import labels as _CITYSCAPES_LABELS
from cityscapesscripts.helpers.labels import name2label

LABELS = tuple(_CITYSCAPES_LABELS)
"""Every Cityscapes label (namedtuple: name, id, trainId, category, hasInstances, color, ...)."""
ID_TO_NAME: dict[int, str] = {label.id: label.name for label in LABELS}
LICENSE_PLATE_ID = name2label["license plate"].id  # -1: defined, never drawn into labelIds PNGs
MAX_ID = max(ID_TO_NAME)  # 33
VALID_IDS = frozenset(i for i in ID_TO_NAME if i >= 0)
"""The values a labelIds PNG may hold (0..33)."""
INSTANCE_CLASS_IDS = frozenset(label.id for label in LABELS if label.hasInstances and label.id >= 0)
"""Classes whose pixels carry instance ids (person 24 .. bicycle 33)."""
INSTANCE_OFFSET = 1000
"""instanceIds encoding: class id * 1000 + instance index."""

# The classes the synthetic street scenes draw, by their official names.
UNLABELED = name2label["unlabeled"].id
ROAD = name2label["road"].id
SIDEWALK = name2label["sidewalk"].id
BUILDING = name2label["building"].id
VEGETATION = name2label["vegetation"].id
SKY = name2label["sky"].id
PERSON = name2label["person"].id
CAR = name2label["car"].id

PALETTE = np.zeros((256, 3), dtype=np.uint8)
"""Official colour per id (index = uint8 label id); ids outside 0..33 stay black."""
for _label in LABELS:
    if _label.id >= 0:
        PALETTE[_label.id] = _label.color


def colorize(ids: np.ndarray) -> np.ndarray:
    """(H, W) integer label ids -> (H, W, 3) uint8 image in the official Cityscapes colours."""
    return PALETTE[np.asarray(ids).astype(np.uint8)]


def unknown_ids(ids: np.ndarray) -> list[int]:
    """The values in a label map that are not Cityscapes ids (empty when the map is valid)."""
    present = np.unique(np.asarray(ids))
    return [int(v) for v in present if int(v) not in VALID_IDS]


def instance_id(label_id: int, index: int) -> int:
    """The instanceIds value of the ``index``-th instance of class ``label_id``."""
    return label_id * INSTANCE_OFFSET + index


def instance_classes(instances: np.ndarray) -> np.ndarray:
    """The class id of every pixel of an instanceIds map (instance pixels hold id * 1000 + k)."""
    instances = np.asarray(instances).astype(np.int64)
    return np.where(instances >= INSTANCE_OFFSET, instances // INSTANCE_OFFSET, instances)


__all__ = [
    "LABELS", "ID_TO_NAME", "LICENSE_PLATE_ID", "MAX_ID", "VALID_IDS", "INSTANCE_CLASS_IDS",
    "INSTANCE_OFFSET", "PALETTE", "colorize", "unknown_ids", "instance_id", "instance_classes",
    "UNLABELED", "ROAD", "SIDEWALK", "BUILDING", "VEGETATION", "SKY", "PERSON", "CAR",
]
