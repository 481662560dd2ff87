"""Calibration from a folder of images, for models with one image input.

Each image is decoded with Pillow, converted to the model's channel count (RGB or grayscale),
resized so its shorter side fits and centre-cropped to the input's height and width (the usual
evaluation transform, which keeps the aspect ratio), scaled to [0, 1], normalised by ``mean`` and
``std`` per channel, and laid out as NCHW or NHWC. Defaults come from the model's input where it
says (a static size; the axis holding 1 or 3 channels) and are ImageNet's mean and std otherwise
(averaged over the colours for a grayscale input).
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


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


class ImageFolder:
    """A folder of images as calibration data; ``bind`` fits it to the model's input.

    ``size`` is (height, width) or one number for both; ``layout`` "NCHW" or "NHWC"; ``mean`` and
    ``std`` one value or one per channel, applied after scaling pixels to [0, 1]."""

    def __init__(self, folder, size: int | Sequence[int] | None = None, mean: Sequence[float] | float | None = None,
                 std: Sequence[float] | float | None = None, layout: str | None = None, batch: int = 16):
        self.folder = Path(folder)
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

    def __repr__(self) -> str:
        return f"image folder {self.folder}"

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
        except ImportError:
            raise BadInputError("reading an image folder needs Pillow (pip install pillow)") from None
        try:
            with warnings.catch_warnings():  # over Pillow's pixel limit: refused, not decoded
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im = Image.open(path)
            with im:
                im = im.convert("L" if self.channels == 1 else "RGB")
                im = _resize_and_crop(im, self.size)
                x = np.asarray(im, dtype=np.float32) / 255.0
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise BadInputError(f"image {path}: {_pixels(exc)} over Pillow's limit of {Image.MAX_IMAGE_PIXELS} "
                                "pixels (a decompression bomb?)") from None
        except (OSError, ValueError) as exc:
            raise BadInputError(f"image {path}: unreadable ({type(exc).__name__})") from None
        x = x.reshape(x.shape[0], x.shape[1], -1)  # H, W, C
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
