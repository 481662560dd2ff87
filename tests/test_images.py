"""Calibration from a folder of real photos (scikit-image's sample images)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphs import GraphBuilder

from onnxprune import prune
from onnxprune.calibration.data import Calibration, InputSpec
from onnxprune.calibration.images import IMAGENET_MEAN, IMAGENET_STD, ImageFolder
from onnxprune.errors import BadInputError

skdata = pytest.importorskip("skimage.data")
Image = pytest.importorskip("PIL.Image")

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for i, name in enumerate(PHOTOS):
        Image.fromarray(getattr(skdata, name)()).save(folder / f"{name}.{'png' if i % 2 else 'jpg'}", quality=95)
    (folder / "notes.txt").write_text("not an image")
    return folder


def spec(shape) -> list[InputSpec]:
    return [InputSpec("image", np.dtype(np.float32), tuple(shape))]


def test_normalised_and_laid_out_as_the_model_expects(photos):
    astronaut = skdata.astronaut().astype(np.float32) / 255  # 512 x 512: no resize, no crop
    expected = (astronaut - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    nchw = next(iter(Calibration(ImageFolder(photos, batch=1), spec(["n", 3, 512, 512]))))["image"]
    assert nchw.shape[1:] == (3, 512, 512) and nchw.dtype == np.float32  # images regrouped in chunks
    # the first file in name order is astronaut.jpg (lossy): compare with a tolerance
    assert np.abs(nchw[0].transpose(1, 2, 0) - expected).mean() < 0.05
    nhwc = next(iter(Calibration(ImageFolder(photos, batch=1), spec(["n", 512, 512, 3]))))["image"]
    np.testing.assert_array_equal(nhwc[0], nchw[0].transpose(1, 2, 0))


def test_resized_cropped_and_batched(photos):
    cal = Calibration(ImageFolder(photos, batch=3, mean=0.5, std=0.25), spec([1, 3, 64, 48]))
    batches = [b["image"] for b in cal]
    assert sum(len(b) for b in batches) == len(PHOTOS)
    assert all(b.shape[1:] == (3, 64, 48) for b in batches)
    assert all(-2.0 - 1e-6 <= b.min() and b.max() <= 2.0 + 1e-6 for b in batches)  # (x - 0.5) / 0.25, x in [0, 1]
    gray = next(iter(Calibration(ImageFolder(photos), spec(["n", 1, 32, 32]))))["image"]
    assert gray.shape[1:] == (1, 32, 32)


def test_a_plain_folder_path_is_read_as_images(photos):
    cal = Calibration(str(photos), spec(["n", 3, 32, 32]))
    assert "image folder" in cal.description and sum(len(b["image"]) for b in cal) == len(PHOTOS)


def test_errors_name_the_problem(photos, tmp_path):
    with pytest.raises(BadInputError, match="give size"):
        Calibration(ImageFolder(photos), spec(["n", 3, "h", "w"]))
    with pytest.raises(BadInputError, match="layout"):
        Calibration(ImageFolder(photos), spec(["n", 5, 32, 32]))
    with pytest.raises(BadInputError, match="2 values for 3 channels"):
        Calibration(ImageFolder(photos, mean=(0.1, 0.2)), spec(["n", 3, 32, 32]))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(BadInputError, match="broken.png"):
        Calibration(ImageFolder(tmp_path), spec(["n", 3, 32, 32]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="no images"):
        ImageFolder(tmp_path / "empty")


def test_prune_a_cnn_calibrated_on_photos(photos):
    b = GraphBuilder(0)
    x = b.input(["batch", 3, 32, 32], name="image")
    h = b.act(b.bn(b.conv(x, 12)))
    h = b.act(b.bn(b.conv(h, 16)))
    b.output(b.gemm(b.flatten(b.gap(h)), 4))
    model = b.model()
    result = prune(model, ratio=0.5, calibration=str(photos))
    onnx.checker.check_model(result.model, full_check=True)
    assert result.context.options.criterion == "obs"
    assert result.report["reconstruction"]["layers"]


def test_an_image_folder_tells_its_sample_total_before_reading(photos):
    from onnxprune.calibration.data import runs_of, sample_total

    cal = Calibration(ImageFolder(photos, batch=3), spec(["n", 3, 32, 32]))
    assert sample_total(cal) == len(PHOTOS) == sum(run.samples for run in runs_of(cal))
    assert sample_total(Calibration(photos, spec(["n", 3, 32, 32]), max_samples=3)) == 3
