import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flatlab.analysis import CIFAR10C_PARAMS, corrupt, evaluate_corruptions, jpeg_compress, list_corruptions

NAMES = list_corruptions()
RANDOM = ("gaussian_noise", "shot_noise", "impulse_noise")


def natural_images(n=3, channels=3, size=24, seed=0):
    """Smooth images with some texture, values well inside (0, 1) so clipping rarely bites."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, channels, size // 4, size // 4, generator=g)
    smooth = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    return (0.1 + 0.75 * smooth + 0.1 * torch.rand(n, channels, size, size, generator=g)).clamp(0, 1)


@pytest.fixture(scope="module")
def images():
    return natural_images()


def test_catalogue():
    assert NAMES == [
        "gaussian_noise", "shot_noise", "impulse_noise", "gaussian_blur",
        "defocus_blur", "contrast", "brightness", "jpeg",
    ]  # fmt: skip
    assert all(len(CIFAR10C_PARAMS[n]) == 5 for n in NAMES)
    assert CIFAR10C_PARAMS["gaussian_noise"] == (0.04, 0.06, 0.08, 0.09, 0.10)
    assert CIFAR10C_PARAMS["jpeg"] == (80, 65, 58, 50, 40)


@pytest.mark.parametrize("name", NAMES)
def test_error_grows_with_severity(images, name):
    errors = [float((corrupt(images, name, s, seed=0) - images).abs().mean()) for s in range(1, 6)]
    assert errors[0] > 0
    assert all(a < b for a, b in zip(errors, errors[1:])), errors


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.uint8])
def test_dtype_shape_and_range_kept(images, name, dtype):
    x = (images * 255).round().to(torch.uint8) if dtype == torch.uint8 else images.to(dtype)
    out = corrupt(x, name, 5, seed=1)
    assert out.dtype == dtype and out.shape == x.shape
    if dtype != torch.uint8:
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    single = corrupt(x[0], name, 5, seed=1)  # [C, H, W] works too
    assert single.shape == x[0].shape


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_per_seed(images, name):
    a, b = corrupt(images, name, 3, seed=7), corrupt(images, name, 3, seed=7)
    assert torch.equal(a, b)
    c = corrupt(images, name, 3, seed=8)
    if name in RANDOM:
        assert not torch.equal(a, c)
    else:  # deterministic corruptions ignore the seed
        assert torch.equal(a, c)


def test_global_rng_untouched(images):
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    corrupt(images, "gaussian_noise", 2, seed=0)
    assert torch.equal(torch.rand(3), before)


def test_invalid_arguments(images):
    with pytest.raises(ValueError):
        corrupt(images, "fog", 1)
    for bad in (0, 6, 2.5, True):
        with pytest.raises(ValueError):
            corrupt(images, "contrast", bad)
    with pytest.raises(ValueError):
        corrupt(images * 2, "contrast", 1)
    with pytest.raises(ValueError):
        corrupt(torch.rand(2, 2, 8, 8), "jpeg", 1)
    with pytest.raises(ValueError):
        jpeg_compress(images, 0)


def test_jpeg_quality_100_is_near_identity(images):
    out = jpeg_compress(images, 100)
    assert float((out - images).abs().max()) <= 3 / 255
    assert float((out - images).abs().mean()) < 1 / 255
    gray = images[:, :1]
    assert float((jpeg_compress(gray, 100) - gray).abs().max()) <= 2 / 255


def test_jpeg_matches_pil_error_level(images):
    Image = pytest.importorskip("PIL.Image")
    x = (images * 255).round().to(torch.uint8)
    for quality in (80, 40):
        ref = []
        for img in x:
            buf = io.BytesIO()
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(buf, "JPEG", quality=quality, subsampling=0)
            ref.append(np.asarray(Image.open(buf)).astype(np.float64) - img.permute(1, 2, 0).numpy())
        pil_err = np.mean(np.abs(np.stack(ref)))
        ours = float((jpeg_compress(x, quality).double() - x.double()).abs().mean())
        assert ours == pytest.approx(pil_err, rel=0.15)


def test_brightness_equals_hsv_value_shift(images):
    colors = pytest.importorskip("matplotlib.colors")
    x = images.clone()
    x[0, :, :2, :2] = 0.0  # black pixels: hue/saturation undefined, V still shifts
    for severity in (1, 5):
        c = CIFAR10C_PARAMS["brightness"][severity - 1]
        hsv = colors.rgb_to_hsv(x.permute(0, 2, 3, 1).double().numpy())
        hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
        ref = torch.from_numpy(colors.hsv_to_rgb(hsv)).permute(0, 3, 1, 2)
        torch.testing.assert_close(corrupt(x.double(), "brightness", severity), ref, rtol=0, atol=1e-9)


def test_gaussian_blur_equals_scipy(images):
    ndimage = pytest.importorskip("scipy.ndimage")
    for severity in (1, 5):
        sigma = CIFAR10C_PARAMS["gaussian_blur"][severity - 1]
        x = images.double()
        ref = ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, sigma, sigma), mode="nearest", truncate=4.0)
        torch.testing.assert_close(
            corrupt(x, "gaussian_blur", severity), torch.from_numpy(ref), rtol=0, atol=1e-10
        )


@pytest.mark.parametrize("name", ["gaussian_blur", "defocus_blur", "contrast"])
def test_constant_image_unchanged(name):
    x = torch.full((1, 3, 10, 10), 0.4, dtype=torch.float64)
    torch.testing.assert_close(corrupt(x, name, 5), x)


def test_contrast_keeps_channel_means(images):
    out = corrupt(images.double(), "contrast", 5)
    torch.testing.assert_close(out.mean(dim=(-2, -1)), images.double().mean(dim=(-2, -1)))


def test_impulse_noise_flips_expected_fraction():
    x = torch.full((4, 3, 32, 32), 0.5)
    out = corrupt(x, "impulse_noise", 5, seed=0)
    flipped = out != 0.5
    assert float(flipped.float().mean()) == pytest.approx(0.07, abs=0.01)
    assert set(out[flipped].unique().tolist()) <= {0.0, 1.0}


def test_evaluate_corruptions_table():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    x = (natural_images(n=6, size=8) * 255).round().to(torch.uint8)
    y = torch.randint(0, 4, (6,))
    model.train()
    table = evaluate_corruptions(
        model,
        [(x[:3], y[:3]), (x[3:], y[3:])],
        names=["contrast", "jpeg"],
        severities=(1, 5),
        transform=lambda t: (t - 0.5) / 0.25,
    )
    assert model.training
    assert set(table) == {"clean", "contrast", "jpeg"}
    assert set(table["jpeg"]) == {1, 5}
    assert all(0.0 <= v <= 1.0 for row in table.values() for v in row.values())
    with pytest.raises(ValueError):
        evaluate_corruptions(model, [(x, y)], names=["snow"])
