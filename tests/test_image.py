import numpy as np
import torch

from echocam import colormaps
from echocam.image import model_image, spectrogram_rgb


def test_luts_equal_matplotlib():
    import matplotlib

    for name in ("magma", "plasma"):
        ref = matplotlib.colormaps[name](np.linspace(0, 1, 1000), bytes=True)[:, :3]
        got = colormaps.apply(torch.linspace(0, 1, 1000), colormaps.table(name))
        np.testing.assert_array_equal(got.numpy(), ref)


def test_low_frequencies_are_at_the_bottom_and_range_spans_the_colormap():
    db = torch.full((1, 260, 50), -80.0)
    db[0, :10] = 0.0  # loudest energy in the lowest mel bands
    rgb = spectrogram_rgb(db, lut=colormaps.table("magma"))
    assert rgb.dtype == torch.uint8 and rgb.shape == (1, 3, 260, 50)
    top = colormaps.lut("magma")[255]
    np.testing.assert_array_equal(rgb[0, :, -1, 0].numpy(), top)  # bottom row: loudest
    np.testing.assert_array_equal(rgb[0, :, 0, 0].numpy(), colormaps.lut("magma")[0])


def test_model_image_is_224_uint8():
    rgb = torch.randint(0, 256, (2, 3, 260, 552), dtype=torch.uint8)
    img = model_image(rgb)
    assert img.shape == (2, 3, 224, 224) and img.dtype == torch.uint8
