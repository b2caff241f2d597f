"""Shared checks of written figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import image


def assert_real_image(path: Path) -> None:
    """A readable PNG of a sensible size that is not one flat colour."""
    assert path.exists() and path.stat().st_size > 10_000, path
    pixels = image.imread(path)
    assert pixels.shape[0] > 400 and pixels.shape[1] > 600
    rgb = pixels[..., :3]
    assert rgb.std() > 0.05, f"{path} looks blank"
    # distinct colours, each packed into one integer (np.unique over rows would take seconds a figure)
    q = (rgb * 255).astype(np.uint32)
    assert len(np.unique((q[..., 0] << 16) | (q[..., 1] << 8) | q[..., 2])) > 50
