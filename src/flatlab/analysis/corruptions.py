"""Common image corruptions, generated offline with tensor ops, for robustness tables.

S2-SAM (Ji et al., NeurIPS 2024 poster), "Robustness to Perturbations" / Table 5, compares test
accuracy on corrupted test sets with and without S2-SAM (ImageNet-C there). This module re-creates a
subset of the common corruptions of Hendrycks & Dietterich (ICLR 2019, "Benchmarking Neural Network
Robustness to Common Corruptions and Perturbations") with the **CIFAR-10-C parameters** of their
`make_cifar_c.py`, for batches of images without any image library:

=============== ============================================ ==================================
name            parameter per severity 1..5                  operation
=============== ============================================ ==================================
gaussian_noise  std 0.04, 0.06, 0.08, 0.09, 0.10             x + N(0, c^2)
shot_noise      photons 500, 250, 100, 75, 50                Poisson(x * c) / c
impulse_noise   amount 0.01, 0.02, 0.03, 0.05, 0.07          salt-and-pepper, per element, 50/50
gaussian_blur   sigma 0.4, 0.6, 0.7, 0.8, 1.0                separable Gaussian, truncate 4 sigma,
                                                             edge-replicate border (skimage)
defocus_blur    (radius, alias sigma) (0.3, 0.4), (0.4, 0.5), disk kernel on a 17x17 support,
                (0.5, 0.6), (1, 0.2), (1.5, 0.1)             blurred by a 3x3 Gaussian; reflect
                                                             border (cv2 filter2D default)
contrast        factor 0.75, 0.5, 0.4, 0.3, 0.15             (x - mean) * c + mean, mean per
                                                             image and channel
brightness      shift 0.05, 0.1, 0.15, 0.2, 0.3              V += c in HSV (see below)
jpeg            quality 80, 65, 58, 50, 40                   JPEG round trip (see below)
=============== ============================================ ==================================

Results are clipped to [0, 1] as in the reference. Deviations, all deliberate:

* Randomness comes from a `torch.Generator` seeded with `seed` (drawn on the CPU, so a seed gives
  the same corruption on every device), not NumPy's global RNG: same seed, same images.
* brightness is computed without an HSV round trip: with hue and saturation fixed, HSV->RGB gives
  every channel proportional to V, so "V += c" equals `x * V'/V` with `V = max_c x` and
  `V' = clip(V + c, 0, 1)` (a black pixel, whose saturation is 0, becomes grey `V'`). This is
  the same map as skimage's `rgb2hsv`/`hsv2rgb` up to rounding, and extends to any channel
  count (for one channel it is `clip(x + c)`).
* jpeg is a JPEG codec in torch: JFIF RGB->YCbCr (3 channels) or the plain gray level (1 channel),
  8x8 block DCT-II of level-shifted samples, quantisation with the standard ITU-T T.81 Annex K
  luminance table (Y) and chrominance table (Cb, Cr), both scaled by quality as in libjpeg
  (`scale = 5000/q` below 50, else `200 - 2q`), dequantisation, inverse DCT, back to RGB and to
  8-bit levels. There is no chroma subsampling (PIL's default 4:2:0 would also blur colour) and no
  entropy coding (lossless, so irrelevant). Quality 100 is therefore close to the identity.
* uint8 inputs are converted to [0, 1], corrupted, and rounded back to uint8 (the reference
  truncates with `np.uint8`).

Output dtype, shape and device equal the input's; floating inputs must lie in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import Batch, ProgressFn, materialize, model_device, preserved, report, to_device

__all__ = ["CIFAR10C_PARAMS", "list_corruptions", "corrupt", "jpeg_compress", "evaluate_corruptions"]

# Hendrycks & Dietterich (2019), make_cifar_c.py, severities 1..5.
CIFAR10C_PARAMS: dict[str, tuple] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "shot_noise": (500, 250, 100, 75, 50),
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1)),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    "jpeg": (80, 65, 58, 50, 40),
}


def list_corruptions() -> list[str]:
    """Names accepted by `corrupt`, in the order of the table above.

    Example:
        ```python
        for name in list_corruptions():
            x_c = corrupt(x, name, severity=3)
        ```
    """
    return list(CIFAR10C_PARAMS)


def _noise_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _gaussian_noise(x: Tensor, c: float, g: torch.Generator) -> Tensor:
    noise = torch.randn(x.shape, generator=g, dtype=torch.float64).to(x)
    return x + c * noise


def _shot_noise(x: Tensor, c: float, g: torch.Generator) -> Tensor:
    rate = (x.detach().to("cpu", torch.float64) * c).clamp_min(0)
    return (torch.poisson(rate, generator=g) / c).to(x)


def _impulse_noise(x: Tensor, c: float, g: torch.Generator) -> Tensor:
    flipped = (torch.rand(x.shape, generator=g) < c).to(x.device)
    salted = (torch.rand(x.shape, generator=g) < 0.5).to(x.device)
    x = torch.where(flipped & salted, torch.ones_like(x), x)
    return torch.where(flipped & ~salted, torch.zeros_like(x), x)


def _pad(x: Tensor, pad: int, mode: str) -> Tensor:
    if pad == 0:
        return x
    if mode == "reflect" and (pad >= x.shape[-1] or pad >= x.shape[-2]):
        mode = "replicate"  # reflection needs pad < size; tiny images fall back to edge replication
    return F.pad(x, (pad, pad, pad, pad), mode=mode)


def _gaussian_kernel1d(sigma: float, radius: int) -> Tensor:
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _gaussian_blur(x: Tensor, sigma: float, _g) -> Tensor:
    # scipy.ndimage.gaussian_filter (behind skimage.filters.gaussian): radius int(4 sigma + 0.5),
    # mode 'nearest'; separable, so two 1-D depthwise convolutions instead of one 2-D one.
    radius = int(4.0 * sigma + 0.5)
    k = _gaussian_kernel1d(sigma, radius).to(x)
    c = x.shape[1]
    y = _pad(x, radius, "replicate")
    y = F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)


def _disk_kernel(radius: float, alias_blur: float) -> Tensor:
    # make_cifar_c.disk for radius <= 8: aliased disk on [-8, 8]^2, normalised, then
    # cv2.GaussianBlur(ksize=(3, 3), sigma=alias_blur) with its default reflect-101 border.
    coords = torch.arange(-8, 9, dtype=torch.float64)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    disk = ((xx**2 + yy**2) <= radius**2).to(torch.float64)
    disk = disk / disk.sum()
    g = _gaussian_kernel1d(alias_blur, 1)
    padded = F.pad(disk[None, None], (1, 1, 1, 1), mode="reflect")
    blurred = F.conv2d(F.conv2d(padded, g.view(1, 1, 3, 1)), g.view(1, 1, 1, 3))[0, 0]
    # Drop the all-zero border so small images need less padding; the result is unchanged.
    rows = blurred.abs().sum(1).nonzero().flatten()
    cols = blurred.abs().sum(0).nonzero().flatten()
    half = int(max(8 - rows.min(), rows.max() - 8, 8 - cols.min(), cols.max() - 8))
    return blurred[8 - half : 9 + half, 8 - half : 9 + half]


def _defocus_blur(x: Tensor, c: tuple[float, float], _g) -> Tensor:
    kernel = _disk_kernel(*c).to(x)
    half = kernel.shape[-1] // 2
    ch = x.shape[1]
    return F.conv2d(_pad(x, half, "reflect"), kernel.expand(ch, 1, -1, -1), groups=ch)


def _contrast(x: Tensor, c: float, _g) -> Tensor:
    means = x.mean(dim=(-2, -1), keepdim=True)
    return (x - means) * c + means


def _brightness(x: Tensor, c: float, _g) -> Tensor:
    v = x.amax(dim=1, keepdim=True)
    v_new = (v + c).clamp(0, 1)
    scaled = x * (v_new / v.clamp_min(torch.finfo(x.dtype).tiny))
    return torch.where(v > 0, scaled, v_new.expand_as(x))


# ITU-T T.81 Annex K, Tables K.1 (luminance) and K.2 (chrominance).
_LUMA_Q = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
_CHROMA_Q = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
) + ((99,) * 8,) * 4

# JFIF full-range RGB -> YCbCr (offsets of 128 on Cb, Cr are added separately).
_RGB2YCBCR = (
    (0.299, 0.587, 0.114),
    (-0.168735892, -0.331264108, 0.5),
    (0.5, -0.418687589, -0.081312411),
)


def _quant_table(base, quality: int) -> Tensor:
    q = min(max(int(quality), 1), 100)
    scale = 5000 / q if q < 50 else 200 - 2 * q
    t = torch.floor((torch.tensor(base, dtype=torch.float64) * scale + 50) / 100)
    return t.clamp(1, 255)


def _dct_matrix() -> Tensor:
    n = torch.arange(8, dtype=torch.float64)
    d = torch.cos(math.pi * (2 * n[None, :] + 1) * n[:, None] / 16) * math.sqrt(2 / 8)
    d[0] /= math.sqrt(2)
    return d  # orthonormal DCT-II; equals JPEG's FDCT normalisation


def jpeg_compress(images: Tensor, quality: int) -> Tensor:
    """JPEG round trip at `quality` (1..100) of 1- or 3-channel images in [0, 1] or uint8 (see the
    module docstring for what is and is not modelled).

    Example:
        ```python
        x_q = jpeg_compress(x, quality=50)
        ```
    """
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    return _apply(images, lambda x: _jpeg(x, quality))


def _jpeg(x: Tensor, quality: int, _g=None) -> Tensor:
    n, c, h, w = x.shape
    if c not in (1, 3):
        raise ValueError(f"jpeg needs 1 or 3 channels, got {c}")
    work = torch.float64
    x = x.to(work) * 255.0
    if c == 3:
        m = torch.tensor(_RGB2YCBCR, dtype=work, device=x.device)
        x = torch.einsum("ij,njhw->nihw", m, x)
        x[:, 1:] += 128.0
        tables = [_quant_table(_LUMA_Q, quality)] + [_quant_table(_CHROMA_Q, quality)] * 2
    else:
        tables = [_quant_table(_LUMA_Q, quality)]
    q = torch.stack(tables).to(x.device)  # (c, 8, 8)
    ph, pw = (-h) % 8, (-w) % 8
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")  # libjpeg pads partial blocks by edge replication
    hb, wb = x.shape[-2] // 8, x.shape[-1] // 8
    blocks = x.reshape(n, c, hb, 8, wb, 8).permute(0, 1, 2, 4, 3, 5) - 128.0
    d = _dct_matrix().to(x.device)
    coeff = d @ blocks @ d.T
    qv = q[None, :, None, None]
    coeff = torch.round(coeff / qv) * qv
    blocks = d.T @ coeff @ d + 128.0
    x = blocks.permute(0, 1, 2, 4, 3, 5).reshape(n, c, hb * 8, wb * 8)[..., :h, :w]
    if c == 3:
        x = x.clone()
        x[:, 1:] -= 128.0
        m_inv = torch.linalg.inv(torch.tensor(_RGB2YCBCR, dtype=work, device=x.device))
        x = torch.einsum("ij,njhw->nihw", m_inv, x)
    return torch.round(x).clamp(0, 255) / 255.0


_CORRUPTIONS: dict[str, Callable] = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "gaussian_blur": _gaussian_blur,
    "defocus_blur": _defocus_blur,
    "contrast": _contrast,
    "brightness": _brightness,
    "jpeg": _jpeg,
}


def _apply(images: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
    if not isinstance(images, Tensor):
        raise TypeError("images must be a torch.Tensor")
    squeeze = images.dim() == 3
    x = images.unsqueeze(0) if squeeze else images
    if x.dim() != 4:
        raise ValueError(f"images must be [N, C, H, W] or [C, H, W], got shape {tuple(images.shape)}")
    if x.dtype == torch.uint8:
        out = fn(x.to(torch.float32) / 255.0)
        out = (out.clamp(0, 1) * 255.0).round().to(torch.uint8)
    elif x.is_floating_point():
        if x.numel() and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
            raise ValueError("floating-point images must lie in [0, 1]")
        work = x if x.dtype in (torch.float32, torch.float64) else x.to(torch.float32)
        out = fn(work).clamp(0, 1).to(x.dtype)
    else:
        raise TypeError(f"images must be uint8 or floating point, got {x.dtype}")
    return out.squeeze(0) if squeeze else out


def corrupt(images: Tensor, name: str, severity: int, seed: int = 0) -> Tensor:
    """Apply corruption `name` at `severity` (1..5, CIFAR-10-C parameters) to a batch of images.

    `images`: uint8 or floating [N, C, H, W] (or [C, H, W]) with values in [0, 1] (floating) or
    0..255 (uint8). Random corruptions are a deterministic function of `seed`. Unknown names and
    severities outside 1..5 raise `ValueError`.

    Example:
        ```python
        x = torch.rand(8, 3, 32, 32)
        x_noisy = corrupt(x, "gaussian_noise", severity=3, seed=0)
        ```
    """
    if name not in _CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose from {list_corruptions()}")
    if isinstance(severity, bool) or not isinstance(severity, int) or not 1 <= severity <= 5:
        raise ValueError(f"severity must be an integer in 1..5, got {severity!r}")
    param = CIFAR10C_PARAMS[name][severity - 1]
    fn = _CORRUPTIONS[name]
    generator = _noise_generator(seed)
    return _apply(images, lambda x: fn(x, param, generator))


@torch.no_grad()
def evaluate_corruptions(
    model: nn.Module,
    batches: Iterable[Batch],
    names: Sequence[str] | None = None,
    severities: Sequence[int] = (1, 2, 3, 4, 5),
    *,
    seed: int = 0,
    transform: Callable[[Tensor], Tensor] | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, dict[int, float]]:
    """Top-1 accuracy of `model` (eval mode) on corrupted copies of `batches`.

    `batches` hold raw images (uint8 or [0, 1] floats) and integer labels; `transform` (e.g. the
    dataset normalisation) is applied after corrupting (and after converting uint8 to [0, 1] floats),
    right before the model. Returns
    `{"clean": {0: acc}, name: {severity: acc, ...}, ...}`; batch `i` is corrupted with seed
    `seed + i` so every (name, severity) sees the same noise stream. `progress(done, total)` is
    called after each batch of each evaluation (clean, then every name and severity).

    Example:
        ```python
        table = evaluate_corruptions(model, [(x_uint8, y)], transform=normalize)
        plot_corruption_table({"SGD": {k: v[3] for k, v in table.items() if k != "clean"}}, "c.png")
        ```
    """
    batches = materialize(batches)
    names = list_corruptions() if names is None else list(names)
    for name in names:
        if name not in _CORRUPTIONS:
            raise ValueError(f"unknown corruption {name!r}; choose from {list_corruptions()}")
    for s in severities:
        if isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= 5:
            raise ValueError(f"severity must be an integer in 1..5, got {s!r}")
    device = model_device(model)
    work = (1 + len(names) * len(severities)) * len(batches)
    done = 0

    def accuracy(make: Callable[[Tensor, int], Tensor]) -> float:
        nonlocal done
        correct, total = 0, 0
        with preserved(model, train=False, params=False):
            for i, (x, y) in enumerate(batches):
                x, y = to_device((make(x, i), y), device)
                x = x.float() / 255.0 if x.dtype == torch.uint8 else x
                out = model(transform(x) if transform is not None else x)
                correct += int((out.argmax(dim=1) == y).sum())
                total += int(y.shape[0])
                done += 1
                report(progress, done, work)
        return correct / total

    table: dict[str, dict[int, float]] = {"clean": {0: accuracy(lambda x, i: x)}}
    for name in names:
        table[name] = {
            s: accuracy(lambda x, i, s=s, name=name: corrupt(x, name, s, seed + i)) for s in severities
        }
    return table
