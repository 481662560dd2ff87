"""What a new user meets first: the help, the warning without calibration, image preprocessing
from the command line, and honest summary lines."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_cli import run_cli

from onnxprune.calibration.data import Calibration, InputSpec
from onnxprune.calibration.images import ImageFolder

MODELS = Path(__file__).resolve().parent.parent / "models"
Image = pytest.importorskip("PIL.Image")


@pytest.fixture
def digits(tmp_path: Path) -> Path:
    shutil.copy(MODELS / "digits_cnn.onnx", tmp_path / "digits.onnx")
    return tmp_path / "digits.onnx"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Three 20x30 images whose red, green and blue channels hold 10, 100 and 200."""
    folder = tmp_path_factory.mktemp("images")
    pixels = np.zeros((20, 30, 3), np.uint8) + np.array([10, 100, 200], np.uint8)
    for i in range(3):
        Image.fromarray(pixels).save(folder / f"{i}.png")
    return folder


def test_top_level_help_shows_the_prune_options_grouped_and_the_commands():
    out = run_cli("--help").stdout
    headings = ["Input:", "What to prune:", "Calibration", "Reconstruction:", "Targets", "Output and reports:",
                "Commands:"]
    positions = [out.index(h) for h in headings]
    assert positions == sorted(positions)
    for option in ("--calib ", "--ratio", "--calib-mean", "--target-latency", "--html", "--reconstruct"):
        assert option in out
    for command in ("analyze", "bench", "profile"):
        assert f"  {command}  " in out
    assert out.count("-h, --help") == 1
    assert run_cli("prune", "--help").stdout.index("What to prune:") < run_cli("prune", "--help").stdout.index(
        "Output and reports:")


def test_bare_command_prints_the_help_not_an_error():
    res = run_cli()
    assert res.returncode == 2
    assert res.stdout.startswith("Usage:") and "Commands:" in res.stdout
    assert not res.stderr and "error:" not in res.stdout and "(see --help)" not in res.stdout


def test_pruning_without_calibration_warns_once_and_not_with_quiet(digits):
    res = run_cli(str(digits), "--ratio", "0.3")
    assert res.returncode == 0
    warned = [line for line in res.stderr.splitlines() if "accuracy is not preserved" in line]
    assert len(warned) == 1 and "--calib" in warned[0]
    assert "accuracy is not preserved" not in run_cli(str(digits), "--ratio", "0.3", "--force", "-q").stderr
    calibrated = run_cli(str(digits), "--calib", str(MODELS / "digits_calib.npz"), "--force")
    assert calibrated.returncode == 0 and "accuracy is not preserved" not in calibrated.stderr
    assert "accuracy is not preserved" not in run_cli(str(digits), "--ratio", "0", "--force").stderr  # nothing cut


def _first_pixel(folder: ImageFolder, shape) -> np.ndarray:
    batch = next(iter(Calibration(folder, [InputSpec("x", np.dtype(np.float32), tuple(shape))])))["x"]
    return batch[0, :, 0, 0] if shape[1] in (1, 3) else batch[0, 0, 0, :]


def test_image_preprocessing_options(images):
    np.testing.assert_allclose(_first_pixel(ImageFolder(images, scale=1, mean=0, std=1), ["n", 3, 8, 8]),
                               [10, 100, 200])
    np.testing.assert_allclose(_first_pixel(ImageFolder(images, scale=1, mean=0, std=1, bgr=True), ["n", 3, 8, 8]),
                               [200, 100, 10])
    np.testing.assert_allclose(_first_pixel(ImageFolder(images, mean=0.5, std=0.5), ["n", 8, 8, 3]),
                               (np.array([10, 100, 200]) / 255 - 0.5) / 0.5, rtol=1e-6)
    folder = ImageFolder(images, size=(6, 9), layout="NHWC")
    batch = next(iter(Calibration(folder, [InputSpec("x", np.dtype(np.float32), ("n", "h", "w", 3))])))["x"]
    assert batch.shape == (3, 6, 9, 3)


def _one_conv_model(path: Path) -> Path:
    from graphs import GraphBuilder

    b = GraphBuilder(0)
    x = b.input(["batch", 3, 8, 8], name="image")
    b.output(b.gemm(b.flatten(b.gap(b.act(b.conv(b.act(b.conv(x, 8)), 8)))), 4))
    import onnx

    onnx.save(b.model(), path)
    return path


def test_calib_flags_reach_the_image_folder_and_the_summary_prints_them(images, tmp_path):
    model = _one_conv_model(tmp_path / "m.onnx")
    res = run_cli(str(model), "--calib", str(images), "-o", str(tmp_path / "a.onnx"))
    assert res.returncode == 0, res.stderr
    assert "scale 1/255, mean 0.485,0.456,0.406, std 0.229,0.224,0.225" in res.stdout  # the defaults, printed
    assert "RGB" in res.stdout and "layout NCHW" in res.stdout
    res = run_cli(str(model), "--calib", str(images), "--calib-bgr", "--calib-scale", "1", "--calib-mean", "0",
                  "--calib-std", "127.5", "--calib-size", "8x8", "-o", str(tmp_path / "b.onnx"))
    assert res.returncode == 0, res.stderr
    assert "BGR, scale 1, mean 0, std 127.5" in res.stdout and "size 8x8" in res.stdout
    res = run_cli(str(model), "--calib", str(images), "--calib-size", "8", "-o", str(tmp_path / "d.onnx"))
    assert res.returncode == 0 and "size 8x8" in res.stdout, res.stderr
    (tmp_path / "prune.toml").write_text('calib-mean = [0.5, 0.5, 0.5]\ncalib-std = "0.5"\ncalib-layout = "NCHW"\n')
    res = run_cli(str(model), "--calib", str(images), "--config", str(tmp_path / "prune.toml"), "-o",
                  str(tmp_path / "c.onnx"))
    assert res.returncode == 0, res.stderr
    assert "mean 0.5,0.5,0.5, std 0.5" in res.stdout


@pytest.mark.parametrize("args, needle", [
    (["--calib-mean", "0.5"], "give --calib"),
    (["--calib", str(MODELS / "digits_calib.npz"), "--calib-bgr"], "need a folder of images"),
    (["--calib", "IMAGES", "--calib-mean", "a,b"], "--calib-mean 'a,b'"),
    (["--calib", "IMAGES", "--calib-size", "0x4"], "--calib-size '0x4'"),
    (["--calib", "IMAGES", "--calib-scale", "1/0"], "--calib-scale '1/0'"),
    (["--calib", "IMAGES", "--calib-std", "0"], "std must not be zero"),
    (["--calib", "IMAGES", "--calib-mean", "0,1"], "mean has 2 values for 3 channels"),
])
def test_bad_preprocessing_is_one_line_exit_2(args, needle, images, tmp_path):
    model = _one_conv_model(tmp_path / "m.onnx")
    res = run_cli(str(model), *[str(images) if a == "IMAGES" else a for a in args], "-o", str(tmp_path / "o.onnx"))
    assert res.returncode == 2 and needle in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "o.onnx").exists()


def test_already_met_says_nothing_was_removed(digits):
    res = run_cli(str(digits), "--target-params", "100%")
    assert res.returncode == 0
    assert "nothing removed: the original already meets the target (4 of 5 groups prunable, 112 channels)" \
        in res.stdout
    assert "removed 0 of 0" not in res.stdout


def test_html_header_reads_like_the_command_line_and_claims_no_unmeasured_sensitivity(digits, tmp_path):
    page = tmp_path / "r.html"
    res = run_cli(str(digits), "--ratio", "0.3", "--input-shape", "input:2x1x8x8", "--html", str(page))
    assert res.returncode == 0, res.stderr
    text = page.read_text()
    assert "prune heads,channels" in text and "input-shapes input:2x1x8x8" in text
    assert "[" not in text.split("<h2>")[0].split("<body>")[1]  # no Python list reprs in the header
    assert "not measured" in text and "fraction of each pruned group" not in text
    assert "FLOPs counted at input 2x1x8x8 (--input-shape)" in text


def test_bench_prints_model_names_whole():
    from onnxprune.bench import format_bench

    timing = {"rounds": 5, "p50_ms": 1.0, "p90_ms": 1.0, "p99_ms": 1.0, "throughput_per_s": 1000.0,
              "round_median_min_ms": 1.0, "round_median_max_ms": 1.0}
    names = ["experiments/2026-12-01/resnet50-channels-pruned-0.3-obs-lstsq/model.onnx",
             "experiments/2026-12-01/resnet50-channels-pruned-0.5-obs-lstsq/model.onnx"]
    text = format_bench({"provider": "cpu", "threads": 1, "models": [{"name": n, **timing} for n in names],
                         "ratios_vs_first": [{"name": names[1], "median": 1.0, "min": 1.0, "max": 1.0}]})
    assert all(text.count(n) == 2 for n in names) and "…" not in text
