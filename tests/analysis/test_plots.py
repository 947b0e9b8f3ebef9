import pytest
import torch

pytest.importorskip("matplotlib")

from flatlab.analysis import (  # noqa: E402
    RelativeGradientDifference,
    plot_corruption_table,
    plot_curves_1d,
    plot_eigen_density,
    plot_relative_gradient_histogram,
    plot_surface_2d,
)


def assert_png(path):
    assert path.exists() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_all_writers(tmp_path):
    alphas = torch.linspace(-1, 1, 11)
    assert_png(
        plot_curves_1d({"SGD": (alphas, alphas**2), "SAM": (alphas, 0.5 * alphas**2)}, tmp_path / "c.png")
    )

    xs, ys = torch.linspace(-1, 1, 9), torch.linspace(-1, 1, 7)
    z = xs[:, None] ** 2 + 2 * ys[None, :] ** 2
    assert_png(plot_surface_2d(xs, ys, z, tmp_path / "sub" / "s.png", title="quadratic"))
    with pytest.raises(ValueError):
        plot_surface_2d(xs, ys, z.T, tmp_path / "bad.png")

    grid = torch.linspace(-1, 5, 200)
    density = torch.exp(-((grid - 2) ** 2))
    assert_png(
        plot_eigen_density({"SGD": (grid, density)}, tmp_path / "d.png", eigenvalues={"SGD": [2.0, 3.5]})
    )

    rgd = RelativeGradientDifference(torch.rand(2, 500) * 3, 0.05)
    assert_png(plot_relative_gradient_histogram({"a": rgd, "b": torch.rand(300)}, tmp_path / "h.png"))

    table = {"SGD": {"gaussian_noise": 0.6, "contrast": 0.7}, "S2-SAM": {"gaussian_noise": 0.65, "jpeg": 0.8}}
    assert_png(plot_corruption_table(table, tmp_path / "t.png"))
