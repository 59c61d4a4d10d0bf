"""COCO panoptic (2017): 133 categories (80 things, 53 stuff), from the official files.

Files to get (cocodataset.org; put them, or their extracted folders, in one manual dir):

* ``train2017.zip`` and ``val2017.zip`` (``{train,val}2017/<id>.jpg``);
* ``panoptic_annotations_trainval2017.zip``, which holds
  ``annotations/panoptic_{train,val}2017.json`` and the PNG archives
  ``annotations/panoptic_{train,val}2017.zip``: extract it into the manual dir (the inner
  zips may stay zipped, or be extracted into ``annotations/panoptic_{train,val}2017/``).

Splits: ``train`` (118,287 images) and ``validation`` (5,000). Each annotation PNG holds a
segment id per pixel (``R + 256 G + 256^2 B``, 0 = void) and the JSON lists each segment's
``category_id`` and ``iscrowd``. Records: ``label`` = the category's index in
``CATEGORIES`` (sorted by COCO id: person = 0, ..., rug-merged = 132; 255 = void),
``instance`` = 1, 2, ... for the non-crowd segments of thing categories (in the JSON's
order), 0 for stuff and for crowd regions (the panoptic metric's crowd).

Errors, each naming the PNG and the segment id: an id in the PNG that its JSON entry does
not list, a listed id with no pixel, an id listed twice (two segments claiming the same
pixels), a ``category_id`` that is not one of the 133.

Prepare::

    python -m segjax.data.prepare --dataset coco_panoptic --manual_dir ~/data/coco
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from segjax.data.builders import from_files, panoptic_files

NAME = "segjax_coco_panoptic"
# (COCO id, name, isthing, colour) of panopticapi's panoptic_coco_categories.json.
CATEGORIES = (
    (1, "person", 1, (220, 20, 60)), (2, "bicycle", 1, (119, 11, 32)),
    (3, "car", 1, (0, 0, 142)), (4, "motorcycle", 1, (0, 0, 230)),
    (5, "airplane", 1, (106, 0, 228)), (6, "bus", 1, (0, 60, 100)),
    (7, "train", 1, (0, 80, 100)), (8, "truck", 1, (0, 0, 70)),
    (9, "boat", 1, (0, 0, 192)), (10, "traffic light", 1, (250, 170, 30)),
    (11, "fire hydrant", 1, (100, 170, 30)), (13, "stop sign", 1, (220, 220, 0)),
    (14, "parking meter", 1, (175, 116, 175)), (15, "bench", 1, (250, 0, 30)),
    (16, "bird", 1, (165, 42, 42)), (17, "cat", 1, (255, 77, 255)),
    (18, "dog", 1, (0, 226, 252)), (19, "horse", 1, (182, 182, 255)),
    (20, "sheep", 1, (0, 82, 0)), (21, "cow", 1, (120, 166, 157)),
    (22, "elephant", 1, (110, 76, 0)), (23, "bear", 1, (174, 57, 255)),
    (24, "zebra", 1, (199, 100, 0)), (25, "giraffe", 1, (72, 0, 118)),
    (27, "backpack", 1, (255, 179, 240)), (28, "umbrella", 1, (0, 125, 92)),
    (31, "handbag", 1, (209, 0, 151)), (32, "tie", 1, (188, 208, 182)),
    (33, "suitcase", 1, (0, 220, 176)), (34, "frisbee", 1, (255, 99, 164)),
    (35, "skis", 1, (92, 0, 73)), (36, "snowboard", 1, (133, 129, 255)),
    (37, "sports ball", 1, (78, 180, 255)), (38, "kite", 1, (0, 228, 0)),
    (39, "baseball bat", 1, (174, 255, 243)), (40, "baseball glove", 1, (45, 89, 255)),
    (41, "skateboard", 1, (134, 134, 103)), (42, "surfboard", 1, (145, 148, 174)),
    (43, "tennis racket", 1, (255, 208, 186)), (44, "bottle", 1, (197, 226, 255)),
    (46, "wine glass", 1, (171, 134, 1)), (47, "cup", 1, (109, 63, 54)),
    (48, "fork", 1, (207, 138, 255)), (49, "knife", 1, (151, 0, 95)),
    (50, "spoon", 1, (9, 80, 61)), (51, "bowl", 1, (84, 105, 51)),
    (52, "banana", 1, (74, 65, 105)), (53, "apple", 1, (166, 196, 102)),
    (54, "sandwich", 1, (208, 195, 210)), (55, "orange", 1, (255, 109, 65)),
    (56, "broccoli", 1, (0, 143, 149)), (57, "carrot", 1, (179, 0, 194)),
    (58, "hot dog", 1, (209, 99, 106)), (59, "pizza", 1, (5, 121, 0)),
    (60, "donut", 1, (227, 255, 205)), (61, "cake", 1, (147, 186, 208)),
    (62, "chair", 1, (153, 69, 1)), (63, "couch", 1, (3, 95, 161)),
    (64, "potted plant", 1, (163, 255, 0)), (65, "bed", 1, (119, 0, 170)),
    (67, "dining table", 1, (0, 182, 199)), (70, "toilet", 1, (0, 165, 120)),
    (72, "tv", 1, (183, 130, 88)), (73, "laptop", 1, (95, 32, 0)),
    (74, "mouse", 1, (130, 114, 135)), (75, "remote", 1, (110, 129, 133)),
    (76, "keyboard", 1, (166, 74, 118)), (77, "cell phone", 1, (219, 142, 185)),
    (78, "microwave", 1, (79, 210, 114)), (79, "oven", 1, (178, 90, 62)),
    (80, "toaster", 1, (65, 70, 15)), (81, "sink", 1, (127, 167, 115)),
    (82, "refrigerator", 1, (59, 105, 106)), (84, "book", 1, (142, 108, 45)),
    (85, "clock", 1, (196, 172, 0)), (86, "vase", 1, (95, 54, 80)),
    (87, "scissors", 1, (128, 76, 255)), (88, "teddy bear", 1, (201, 57, 1)),
    (89, "hair drier", 1, (246, 0, 122)), (90, "toothbrush", 1, (191, 162, 208)),
    (92, "banner", 0, (255, 255, 128)), (93, "blanket", 0, (147, 211, 203)),
    (95, "bridge", 0, (150, 100, 100)), (100, "cardboard", 0, (168, 171, 172)),
    (107, "counter", 0, (146, 112, 198)), (109, "curtain", 0, (210, 170, 100)),
    (112, "door-stuff", 0, (92, 136, 89)), (118, "floor-wood", 0, (218, 88, 184)),
    (119, "flower", 0, (241, 129, 0)), (122, "fruit", 0, (217, 17, 255)),
    (125, "gravel", 0, (124, 74, 181)), (128, "house", 0, (70, 70, 70)),
    (130, "light", 0, (255, 228, 255)), (133, "mirror-stuff", 0, (154, 208, 0)),
    (138, "net", 0, (193, 0, 92)), (141, "pillow", 0, (76, 91, 113)),
    (144, "platform", 0, (255, 180, 195)), (145, "playingfield", 0, (106, 154, 176)),
    (147, "railroad", 0, (230, 150, 140)), (148, "river", 0, (60, 143, 255)),
    (149, "road", 0, (128, 64, 128)), (151, "roof", 0, (92, 82, 55)),
    (154, "sand", 0, (254, 212, 124)), (155, "sea", 0, (73, 77, 174)),
    (156, "shelf", 0, (255, 160, 98)), (159, "snow", 0, (255, 255, 255)),
    (161, "stairs", 0, (104, 84, 109)), (166, "tent", 0, (169, 164, 131)),
    (168, "towel", 0, (225, 199, 255)), (171, "wall-brick", 0, (137, 54, 74)),
    (175, "wall-stone", 0, (135, 158, 223)), (176, "wall-tile", 0, (7, 246, 231)),
    (177, "wall-wood", 0, (107, 255, 200)), (178, "water-other", 0, (58, 41, 149)),
    (180, "window-blind", 0, (183, 121, 142)), (181, "window-other", 0, (255, 73, 97)),
    (184, "tree-merged", 0, (107, 142, 35)), (185, "fence-merged", 0, (190, 153, 153)),
    (186, "ceiling-merged", 0, (146, 139, 141)), (187, "sky-other-merged", 0, (70, 130, 180)),
    (188, "cabinet-merged", 0, (134, 199, 156)), (189, "table-merged", 0, (209, 226, 140)),
    (190, "floor-other-merged", 0, (96, 36, 108)), (191, "pavement-merged", 0, (96, 96, 96)),
    (192, "mountain-merged", 0, (64, 170, 64)), (193, "grass-merged", 0, (152, 251, 152)),
    (194, "dirt-merged", 0, (208, 229, 228)), (195, "paper-merged", 0, (206, 186, 171)),
    (196, "food-other-merged", 0, (152, 161, 64)),
    (197, "building-other-merged", 0, (116, 112, 0)),
    (198, "rock-merged", 0, (0, 114, 143)), (199, "wall-other-merged", 0, (102, 102, 156)),
    (200, "rug-merged", 0, (250, 141, 255)),
)  # fmt: skip
CLASS_NAMES: tuple[str, ...] = tuple(name for _, name, _, _ in CATEGORIES)
PALETTE: tuple[tuple[int, int, int], ...] = tuple(c for _, _, _, c in CATEGORIES)
THING_CLASSES: tuple[bool, ...] = tuple(bool(t) for _, _, t, _ in CATEGORIES)
NUM_CLASSES = len(CLASS_NAMES)
CATEGORY_INDEX: dict[int, int] = {cat_id: k for k, (cat_id, *_) in enumerate(CATEGORIES)}
ARCHIVES = (
    "train2017.zip",
    "val2017.zip",
    "annotations/panoptic_train2017.zip",
    "annotations/panoptic_val2017.zip",
)
_SPLITS = {"train": "train2017", "validation": "val2017"}
INSTRUCTIONS = f"""\
Get {ARCHIVES[0]}, {ARCHIVES[1]} and panoptic_annotations_trainval2017.zip from
https://cocodataset.org/#download, put the first two (or their extracted folders) in one
directory DIR, extract the annotations zip there (DIR/annotations/panoptic_*2017.json and
DIR/annotations/panoptic_*2017.zip), then run:
  python -m segjax.data.prepare --dataset coco_panoptic --manual_dir DIR [--data_dir D]
"""


def read_segment_ids(data: bytes, name: str) -> np.ndarray:
    """int64 [H, W] segment ids of a COCO panoptic PNG (R + 256 G + 256^2 B)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            rgb = np.asarray(im.convert("RGB"), np.int64)
    except Exception as e:
        raise ValueError(f"{name}: cannot decode panoptic PNG ({e})") from e
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def panoptic_maps(
    ids: np.ndarray, segments_info: list[dict], name: str, json_name: str
) -> tuple[np.ndarray, np.ndarray]:
    """`(label, instance)` of one image from its id map and JSON `segments_info`.

    Raises:
      ValueError: naming `name` (the PNG) and the segment id, for an id of the PNG that
        `segments_info` lacks, a listed id without pixels or listed twice, or an unknown
        `category_id`.
    """
    listed: dict[int, dict] = {}
    for seg in segments_info:
        sid = int(seg["id"])
        if sid in listed:
            raise ValueError(
                f"{name}: segment id {sid} is listed twice in {json_name} (overlapping "
                "segments: two segments claim the same pixels)"
            )
        cat = seg.get("category_id")
        if cat not in CATEGORY_INDEX:
            raise ValueError(
                f"{name}: segment id {sid} has category_id {cat!r}, not one of the "
                f"{NUM_CLASSES} COCO panoptic categories"
            )
        listed[sid] = seg
    present = [int(i) for i in np.unique(ids) if i != 0]
    unlisted = [i for i in present if i not in listed]
    if unlisted:
        raise ValueError(
            f"{name}: segment ids {unlisted[:10]} are in the PNG but missing from its "
            f"segments_info in {json_name}"
        )
    label = np.full(ids.shape, 255, np.uint8)
    instance = np.zeros(ids.shape, np.uint16)
    objects = 0
    for sid, seg in listed.items():
        mask = ids == sid
        if not mask.any():
            raise ValueError(f"{name}: segment id {sid} of {json_name} has no pixel in the PNG")
        k = CATEGORY_INDEX[seg["category_id"]]
        label[mask] = k
        if THING_CLASSES[k] and not seg.get("iscrowd", 0):
            objects += 1
            instance[mask] = objects
    return label, instance


class SegjaxCocoPanoptic(panoptic_files.PanopticFilesBuilder):
    """COCO panoptic 2017: 133 categories, things with instance ids."""

    name = NAME
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="default", description="train / val 2017.")]
    DEFAULT_CONFIG_NAME = "default"
    CLASS_NAMES = CLASS_NAMES
    PALETTE = PALETTE
    THING_CLASSES = THING_CLASSES
    ARCHIVES = ARCHIVES
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

    def split_pairs(self, tree: from_files.FileTree) -> dict[str, list[from_files.Pair]]:
        self._segments: dict[str, tuple[list[dict], str]] = {}
        out = {}
        for split, folder in _SPLITS.items():
            json_path = f"annotations/panoptic_{folder}.json"
            if not tree.exists(json_path):
                raise FileNotFoundError(f"{json_path} not found in {tree.describe()}")
            json_name = tree.origin(json_path)
            try:
                data = json.loads(tree.read(json_path))
                images = {int(im["id"]): im["file_name"] for im in data["images"]}
                annotations = data["annotations"]
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{json_name}: not a COCO panoptic JSON ({e!r})") from e
            pairs = []
            for ann in annotations:
                png = self._png_path(tree, folder, ann["file_name"])
                image_id = int(ann["image_id"])
                if image_id not in images:
                    raise ValueError(
                        f"{json_name}: annotation {png} has unknown image_id {image_id}"
                    )
                image = f"{folder}/{images[image_id]}"
                if not tree.exists(image):
                    raise FileNotFoundError(
                        f"{image} (image {image_id}) not found in {tree.describe()}"
                    )
                stem = os.path.splitext(os.path.basename(image))[0]
                pairs.append(from_files.Pair(stem, image, png))
                self._segments[png] = (ann["segments_info"], json_name)
            out[split] = pairs
        return out

    @staticmethod
    def _png_path(tree: from_files.FileTree, folder: str, file_name: str) -> str:
        # Extracted into annotations/panoptic_<folder>/, or still in the inner zip.
        for candidate in (
            f"annotations/panoptic_{folder}/{file_name}",
            f"panoptic_{folder}/{file_name}",
        ):
            if tree.exists(candidate):
                return candidate
        raise FileNotFoundError(
            f"panoptic PNG {file_name} not found under annotations/panoptic_{folder}/ "
            f"(folder or zip) in {tree.describe()}"
        )

    def read_panoptic(self, tree, pair):
        segments_info, json_name = self._segments[pair.label]
        name = tree.origin(pair.label)
        ids = read_segment_ids(tree.read(pair.label), name)
        return panoptic_maps(ids, segments_info, name, json_name)


dataset_dir, is_prepared, prepare = from_files.module_functions(
    NAME, SegjaxCocoPanoptic, INSTRUCTIONS
)
