"""Calibration from a folder of images, for models with one image input.

Each image is decoded with Pillow, converted to the model's channel count (RGB or grayscale),
resized so its shorter side fits and centre-cropped to the input's height and width (the usual
evaluation transform, which keeps the aspect ratio), put in RGB or BGR order, multiplied by
``scale`` (1/255 by default: pixels in [0, 1]), normalised by ``mean`` and ``std`` per channel, and
laid out as NCHW or NHWC. Defaults come from the model's input where it says (a static size; the
axis holding 1 or 3 channels) and are ImageNet's mean and std otherwise (averaged over the
colours for a grayscale input). The CLI sets these with ``--calib-size``, ``--calib-layout``,
``--calib-bgr``, ``--calib-scale``, ``--calib-mean`` and ``--calib-std``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..errors import BadInputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: pixels 0-255 are multiplied by this before ``mean`` and ``std`` apply
DEFAULT_SCALE = 1 / 255


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


class ImageFolder:
    """A folder of images as calibration data; ``bind`` fits it to the model's input.

    ``size`` is (height, width) or one number for both; ``layout`` "NCHW" or "NHWC"; ``bgr`` puts
    colour channels in BGR order (OpenCV-trained models); pixels (0-255) are multiplied by ``scale``;
    ``mean`` and ``std`` one value or one per channel, applied after scaling."""

    def __init__(self, folder, size: int | Sequence[int] | None = None, mean: Sequence[float] | float | None = None,
                 std: Sequence[float] | float | None = None, layout: str | None = None, batch: int = 16,
                 scale: float = DEFAULT_SCALE, bgr: bool = False):
        self.folder = Path(folder)
        self.scale, self.bgr = float(scale), bool(bgr)
        self.size = (size, size) if isinstance(size, int) else (tuple(size) if size is not None else None)
        self.given = (mean, std)
        self.mean = np.atleast_1d(np.asarray(IMAGENET_MEAN if mean is None else mean, np.float32))
        self.std = np.atleast_1d(np.asarray(IMAGENET_STD if std is None else std, np.float32))
        self.layout = layout.upper() if layout else None
        self.batch = batch
        self.name: str | None = None
        self.dtype = np.dtype(np.float32)
        self.channels = 3
        if not self.folder.is_dir():
            raise BadInputError(f"image folder {self.folder}: no such folder")
        if not image_files(self.folder):
            raise BadInputError(f"image folder {self.folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        if self.layout not in (None, "NCHW", "NHWC"):
            raise BadInputError(f"image layout must be NCHW or NHWC, got {layout}")
        if (self.std == 0).any():
            raise BadInputError("image std must not be zero")
        if not np.isfinite(self.scale) or self.scale <= 0 or not (np.isfinite(self.mean).all()
                                                                  and np.isfinite(self.std).all()):
            raise BadInputError("image scale must be positive and mean and std finite")

    def __repr__(self) -> str:
        if self.name is None:
            return f"image folder {self.folder}"
        return f"image folder {self.folder} ({self.preprocessing()})"

    def preprocessing(self) -> str:
        """What is done to each image, defaults included, in the CLI's terms (for the summary)."""
        def values(v: np.ndarray) -> str:
            return ",".join(f"{x:.4g}" for x in v.tolist())

        colours = "grayscale" if self.channels == 1 else ("BGR" if self.bgr else "RGB")
        scale = "1/255" if abs(self.scale - DEFAULT_SCALE) < 1e-12 else f"{self.scale:g}"
        size = "x".join(map(str, self.size)) if self.size else "the input's size"
        return (f"{len(image_files(self.folder))} images, size {size}, layout {self.layout or 'from the input'}, "
                f"{colours}, scale {scale}, mean {values(self.mean)}, std {values(self.std)}")

    def bind(self, specs) -> "ImageFolder":
        """Take the input name, layout, size and channel count from the model's single input."""
        if len(specs) != 1:
            raise BadInputError(f"{self!r}: the model has {len(specs)} inputs; images calibrate single-input models")
        spec = specs[0]
        shape = list(spec.shape)
        if len(shape) != 4 or not np.issubdtype(spec.dtype, np.floating):
            raise BadInputError(f"{self!r}: input '{spec.name}' is not a float image batch (shape {shape})")
        fixed = [d if isinstance(d, (int, np.integer)) and d > 0 else None for d in shape]
        layout = self.layout or ("NCHW" if fixed[1] in (1, 3) else "NHWC" if fixed[3] in (1, 3) else None)
        if layout is None:
            raise BadInputError(f"{self!r}: cannot tell the layout of input '{spec.name}' {shape}; give layout")
        c, h, w = (fixed[1], fixed[2], fixed[3]) if layout == "NCHW" else (fixed[3], fixed[1], fixed[2])
        size = self.size or ((h, w) if h and w else None)
        if size is None:
            raise BadInputError(f"{self!r}: input '{spec.name}' has no fixed height and width {shape}; give size")
        self.channels = c or 3
        if self.channels == 1:  # grayscale: ImageNet's statistics averaged over the colours
            self.mean = self.mean if self.given[0] is not None else self.mean.mean(keepdims=True)
            self.std = self.std if self.given[1] is not None else self.std.mean(keepdims=True)
        for what, v in (("mean", self.mean), ("std", self.std)):
            if v.size not in (1, self.channels):
                raise BadInputError(f"{self!r}: {what} has {v.size} values for {self.channels} channels")
        self.name, self.dtype, self.layout, self.size = spec.name, np.dtype(spec.dtype), layout, tuple(size)
        return self

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        if self.name is None:
            raise BadInputError(f"{self!r}: not bound to a model input")
        images = []
        for path in image_files(self.folder):
            images.append(self._load(path))
            if len(images) == self.batch:
                yield {self.name: np.stack(images)}
                images = []
        if images:
            yield {self.name: np.stack(images)}

    def _load(self, path: Path) -> np.ndarray:
        try:
            from PIL import Image
        except ImportError as exc:
            raise BadInputError("reading an image folder needs Pillow (pip install pillow)") from exc
        try:
            with warnings.catch_warnings():  # over Pillow's pixel limit: refused, not decoded
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im = Image.open(path)
            with im:
                im = im.convert("L" if self.channels == 1 else "RGB")
                im = _resize_and_crop(im, self.size)
                x = np.asarray(im, dtype=np.float32) * np.float32(self.scale)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise BadInputError(f"image {path}: {_pixels(exc)} over Pillow's limit of {Image.MAX_IMAGE_PIXELS} "
                                "pixels (a decompression bomb?)") from exc
        except (OSError, ValueError) as exc:
            raise BadInputError(f"image {path}: unreadable ({type(exc).__name__})") from exc
        x = x.reshape(x.shape[0], x.shape[1], -1)  # H, W, C
        if self.bgr and x.shape[2] == 3:
            x = x[:, :, ::-1]
        x = (x - self.mean) / self.std
        if self.layout == "NCHW":
            x = x.transpose(2, 0, 1)
        return np.ascontiguousarray(x, dtype=self.dtype)


def _pixels(exc: Exception) -> str:
    """'1600000000 pixels,' from Pillow's message, where it says."""
    import re

    m = re.search(r"\((\d+) pixels\)", str(exc))
    return f"{m.group(1)} pixels," if m else "too many pixels,"


def _resize_and_crop(im, size: tuple[int, int]):
    """Scale so the image covers ``size`` (height, width), then cut the centre out."""
    from PIL import Image

    h, w = size
    scale = max(h / im.height, w / im.width)
    new = (max(w, round(im.width * scale)), max(h, round(im.height * scale)))
    if new != im.size:
        im = im.resize(new, Image.BILINEAR)
    left, top = (im.width - w) // 2, (im.height - h) // 2
    return im.crop((left, top, left + w, top + h))
