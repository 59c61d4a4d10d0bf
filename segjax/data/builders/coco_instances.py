"""COCO 2017 instances (detection + instance masks), prepared from the user's files.

Files to get (cocodataset.org): ``annotations_trainval2017.zip`` (or its
``annotations/instances_{train,val}2017.json``) and ``train2017.zip`` / ``val2017.zip``
(or the folders ``train2017/``, ``val2017/``), all in one directory::

    python -m segjax.data.prepare --dataset coco_instances --manual_dir ~/data/coco

Record ``i`` of a split is image ``i`` of the annotation file's ``images`` list:
``{"image", "image_id", "objects": {"rle" (COCO RLE counts), "bbox" (x1, y1, x2, y2),
"category_id", "crowd", "area"}}``; `segjax.data.instances.decode_instances` turns it
into masks. Class index = COCO category id (1..90; 91 classes with background, the
unused ids named "N/A"), as torchvision's detection models.

Bad input, handled as COCO's tools do or refused with the image id:

- a box partly outside the image is clipped to it, and an annotation whose clipped
  box is empty is dropped (torchvision's ``ConvertCocoPolysToMask``); its polygons are
  rasterised inside the image only;
- an image without annotations, or with crowd regions only, is kept: it has no
  training target, and COCOeval scores its detections as false positives (crowd
  regions: ignored);
- an unknown category id, a category outside COCO's 91, an annotation of an image id
  that is not in ``images``, a malformed segmentation, a missing image file or an
  image whose size differs from its ``height`` / ``width`` is an error naming the
  image id.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from segjax.data.builders import from_files

NAME = "segjax_coco_instances"
# COCO's category names by id (torchvision's list): 0 background, "N/A" for unused ids.
CLASS_NAMES: tuple[str, ...] = (
    "__background__", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train",
    "truck", "boat", "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter",
    "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra",
    "giraffe", "N/A", "backpack", "umbrella", "N/A", "N/A", "handbag", "tie", "suitcase",
    "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", "N/A", "wine glass", "cup", "fork",
    "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot",
    "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "N/A",
    "dining table", "N/A", "N/A", "toilet", "N/A", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "N/A",
    "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
NUM_CLASSES = len(CLASS_NAMES)  # 91
PALETTE = from_files.generated_palette(NUM_CLASSES)
ARCHIVES = ("annotations_trainval2017.zip", "train2017.zip", "val2017.zip")
_SPLITS = {"train": "train2017", "validation": "val2017"}
INSTRUCTIONS = f"""\
Get {", ".join(ARCHIVES)} (https://cocodataset.org), put them or their extracted folders
(annotations/, train2017/, val2017/) in a directory, then run:
  python -m segjax.data.prepare --dataset coco_instances --manual_dir DIR [--data_dir D]
"""


def _fail(image_id, what: str) -> ValueError:
    return ValueError(f"COCO image id {image_id}: {what}")


def objects_of_image(image: dict, annotations: list[dict], category_ids: set[int]) -> dict:
    """The stored objects of one COCO image (RLE masks, clipped xyxy boxes, ...).

    Raises:
      ValueError: naming the image id, for an unknown category id or a malformed
        segmentation.
    """
    from pycocotools import mask as mask_utils

    image_id, h, w = image["id"], int(image["height"]), int(image["width"])
    rles, boxes, cats, crowd, areas = [], [], [], [], []
    for ann in annotations:
        cat = ann.get("category_id")
        if cat not in category_ids:
            raise _fail(
                image_id,
                f"annotation {ann.get('id')} has category_id {cat!r}, not one of the file's "
                f"categories {sorted(category_ids)}",
            )
        x, y, bw, bh = (float(v) for v in ann["bbox"])
        x1, y1 = min(max(x, 0.0), w), min(max(y, 0.0), h)
        x2, y2 = min(max(x + bw, 0.0), w), min(max(y + bh, 0.0), h)
        if x2 <= x1 or y2 <= y1:
            continue  # empty once clipped to the image: dropped, as torchvision
        seg = ann.get("segmentation")
        try:
            if isinstance(seg, list):  # polygons
                if not seg or any(len(p) < 6 or len(p) % 2 for p in seg):
                    raise ValueError("a polygon needs at least 3 (x, y) points")
                rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
            elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):  # raw RLE
                rle = mask_utils.frPyObjects(seg, h, w)
            elif isinstance(seg, dict):  # compressed RLE
                rle = {"size": list(seg["size"]), "counts": seg["counts"]}
                if tuple(rle["size"]) != (h, w):
                    raise ValueError(f"RLE size {rle['size']} is not the image's {[h, w]}")
            else:
                raise ValueError(f"segmentation of type {type(seg).__name__}")
        except (ValueError, TypeError, KeyError) as e:
            raise _fail(image_id, f"annotation {ann.get('id')}: bad segmentation ({e})") from e
        counts = rle["counts"]
        rles.append(counts.decode("ascii") if isinstance(counts, bytes) else counts)
        boxes.append([x1, y1, x2, y2])
        cats.append(int(cat))
        crowd.append(bool(ann.get("iscrowd", 0)))
        areas.append(float(ann.get("area", mask_utils.area(rle))))
    return {
        "rle": rles,
        "bbox": np.asarray(boxes, np.float32).reshape(-1, 4),
        "category_id": np.asarray(cats, np.int64),
        "crowd": np.asarray(crowd, bool),
        "area": np.asarray(areas, np.float32),
    }


def read_annotations(data: bytes, origin: str) -> tuple[list[dict], dict[int, list], set[int]]:
    """(images, annotations by image id, category ids) of an instances_*.json file."""
    try:
        coco = json.loads(data)
        images, annotations = coco["images"], coco["annotations"]
        categories = {int(c["id"]) for c in coco["categories"]}
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{origin}: not a COCO instances file ({e})") from e
    outside = sorted(c for c in categories if not 1 <= c < NUM_CLASSES or CLASS_NAMES[c] == "N/A")
    if outside:
        raise ValueError(f"{origin}: category ids {outside} are not COCO's (1..90, used ones)")
    known = {im["id"] for im in images}
    by_image: dict[int, list] = {im["id"]: [] for im in images}
    for ann in annotations:
        if ann.get("image_id") not in known:
            raise _fail(
                ann.get("image_id"),
                f"annotation {ann.get('id')} of an image not in {origin}'s images",
            )
        by_image[ann["image_id"]].append(ann)
    return images, by_image, categories


class SegjaxCocoInstances(tfds.core.GeneratorBasedBuilder):
    """COCO 2017 instances: images, RLE masks, boxes, categories, crowd flags."""

    name = NAME
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="default", description="train / val 2017")]
    DEFAULT_CONFIG_NAME = "default"
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        """This file (see ``from_files.FromFilesBuilder.code_path``)."""
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__.splitlines()[0],
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "image_id": tfds.features.Scalar(dtype=np.int64),
                    "objects": tfds.features.Sequence(
                        {
                            "rle": tfds.features.Text(),
                            "bbox": tfds.features.Tensor(shape=(4,), dtype=np.float32),
                            "category_id": tfds.features.Scalar(dtype=np.int64),
                            "crowd": tfds.features.Scalar(dtype=np.bool_),
                            "area": tfds.features.Scalar(dtype=np.float32),
                        }
                    ),
                }
            ),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(
                num_classes=NUM_CLASSES,
                class_names=list(CLASS_NAMES),
                palette=[list(c) for c in PALETTE],
            ),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        manual_path = getattr(self, "manual_path", None)
        if not manual_path:
            raise FileNotFoundError(f"{self.name}: no manual dir given.\n{INSTRUCTIONS}")
        tree = from_files.manual_tree(manual_path, ARCHIVES, dl_manager.download_dir)
        out = {}
        for split, folder in _SPLITS.items():
            path = f"annotations/instances_{folder}.json"
            if not tree.exists(path):
                raise FileNotFoundError(f"no {path} in {tree.describe()}\n{INSTRUCTIONS}")
            out[split] = self._generate_examples(tree, path, folder)
        return out

    def _generate_examples(self, tree, path: str, folder: str) -> Iterator[tuple[int, dict]]:
        images, by_image, categories = read_annotations(tree.read(path), tree.origin(path))
        for image in images:
            name = f"{folder}/{image['file_name']}"
            if not tree.exists(name):
                raise _fail(image["id"], f"image file {name} not found in {tree.describe()}")
            data, hw = from_files.decode_image(tree.read(name), tree.origin(name))
            if tuple(hw) != (int(image["height"]), int(image["width"])):
                raise _fail(
                    image["id"],
                    f"{name} is {hw[0]}x{hw[1]}, the annotation file says "
                    f"{image['height']}x{image['width']}",
                )
            objects = objects_of_image(image, by_image[image["id"]], categories)
            yield image["id"], {"image": data, "image_id": image["id"], "objects": objects}


# Where the prepared dataset lives; whether it is prepared; open it (preparing it first).
dataset_dir, is_prepared, prepare = from_files.module_functions(
    NAME, SegjaxCocoInstances, INSTRUCTIONS
)
