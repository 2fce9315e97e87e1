import io

import numpy as np
import pytest
import torch
from PIL import Image

from echocam import colormaps, render
from echocam.image import model_image, spectrogram_rgb
from echocam.settings import Params


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


@pytest.mark.parametrize("level", [0, 1, 3])
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 1), (260, 552), (33, 2)])
def test_png_decodes_to_the_same_pixels_in_any_reader(shape, level):
    rng = np.random.default_rng(sum(shape) + level)
    h, w = shape
    smooth = np.cumsum(rng.integers(0, 9, (h, w, 3)), axis=1) % 256  # wraps: Sub's modulo
    for rgb in (rng.integers(0, 256, (h, w, 3)), smooth):
        rgb = rgb.astype(np.uint8)
        for layout in (rgb, np.moveaxis(rgb, -1, 0)):  # (h, w, 3) and (3, h, w)
            data = render.encode_png(layout, compress_level=level)
            Image.open(io.BytesIO(data)).verify()  # chunk CRCs and structure
            with Image.open(io.BytesIO(data)) as im:
                assert im.mode == "RGB" and im.size == (w, h)
                np.testing.assert_array_equal(np.asarray(im), rgb)
            if min(h, w) > 1:
                np.testing.assert_array_equal(torchvision_decode(data), rgb)


def torchvision_decode(data: bytes) -> np.ndarray:
    """libpng's reading, through torchvision (a second reader beside Pillow's)."""
    import warnings

    from torchvision.io import decode_png

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29: use torchcodec
        return (
            decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8))
            .permute(1, 2, 0)
            .numpy()
        )


def test_png_rejects_levels_outside_isal():
    with pytest.raises(ValueError):
        Params(png_compress_level=4)
