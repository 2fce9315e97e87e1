import io

import numpy as np
import pytest
import torch
from PIL import Image

from echocam.explain import render
from echocam.settings import Params
from echocam.signal import colormaps
from echocam.signal.image import minmax, model_image, spectrogram_levels, spectrogram_rgb


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
    assert rgb.dtype == torch.uint8 and rgb.shape == (1, 260, 50, 3)
    top = colormaps.lut("magma")[255]
    np.testing.assert_array_equal(rgb[0, -1, 0].numpy(), top)  # bottom row: loudest
    np.testing.assert_array_equal(rgb[0, 0, 0].numpy(), colormaps.lut("magma")[0])


def test_model_image_is_224_uint8():
    rgb = torch.randint(0, 256, (2, 260, 552, 3), dtype=torch.uint8)
    img = model_image(rgb)
    assert img.shape == (2, 3, 224, 224) and img.dtype == torch.uint8
    # the same numbers as resizing a channels-first copy: the layout is only a layout
    ref = model_image(rgb.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1))
    assert torch.equal(img, ref)


def test_model_image_is_pillows_resize_as_in_the_notebook():
    # The notebook resized a PIL image (torchvision Resize): bilinear with antialiasing.
    rgb = spectrogram_rgb(torch.randn(1, 260, 552).cumsum(-1), lut=colormaps.table("magma"))
    pil = np.asarray(Image.fromarray(rgb[0].numpy()).resize((224, 224), Image.BILINEAR))
    ours = model_image(rgb)[0].permute(1, 2, 0).numpy().astype(int)
    assert np.abs(ours - pil).max() <= 1 and (ours != pil).mean() < 0.01
    # the float path (what CUDA runs) rounds differently, never by more than one level
    floats = model_image(rgb, uint8_kernel=False)
    assert floats.shape == (1, 3, 224, 224) and floats.dtype == torch.uint8
    assert np.abs(floats[0].permute(1, 2, 0).numpy().astype(int) - pil).max() <= 1


@pytest.mark.parametrize("level", [0, 1, 3])
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 1), (260, 552), (33, 2)])
def test_png_decodes_to_the_same_pixels_in_any_reader(shape, level):
    rng = np.random.default_rng(sum(shape) + level)
    h, w = shape
    smooth = np.cumsum(rng.integers(0, 9, (h, w, 3)), axis=1) % 256  # wraps: Sub's modulo
    for rgb in (rng.integers(0, 256, (h, w, 3)), smooth):
        rgb = rgb.astype(np.uint8)
        data = render.encode_png(rgb, compress_level=level)
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


def test_overlay_blends_the_colormapped_cam_over_the_spectrogram():
    rng = np.random.default_rng(0)
    levels = torch.from_numpy(rng.integers(0, 256, (2, 5, 7), dtype=np.int32))
    levels[0, 0, :2] = torch.tensor([0, 255])  # both ends of the table
    maps = torch.from_numpy(rng.random((2, 3, 5, 7), dtype=np.float32))  # k = 3 classes
    maps[1, 2, 0, :3] = torch.tensor([0.0, 1.0, 255.5 / 256])  # both ends of the table
    magma, plasma = colormaps.table("magma"), colormaps.table("plasma")
    rgb = magma.numpy()[levels.numpy()].astype(float)  # the spectrogram's colours
    heat = colormaps.apply(maps, plasma).numpy().astype(float)
    for alpha in (0.0, 0.3, 0.5, 1.0):
        ov = render.overlay(levels, maps, table=colormaps.blend(magma, plasma, alpha=alpha))
        assert ov.shape == (2, 3, 5, 7, 3) and ov.dtype == torch.uint8
        want = (1 - alpha) * rgb[:, None] + alpha * heat
        assert np.abs(ov.numpy() - want).max() <= 0.5 + 1e-6  # rounded to the nearest level


def test_the_blend_table_is_the_per_pixel_blend_exactly():
    """One lookup gives the very bytes of the per-pixel blend (the overlay before the table)."""
    magma, plasma = colormaps.table("magma"), colormaps.table("plasma")
    under, over = torch.meshgrid(torch.arange(256), torch.arange(256), indexing="ij")
    for alpha in (0.25, 0.5, 0.7):
        per_pixel = torch.lerp(magma[under].float(), plasma[over].float(), alpha).round_()
        table = colormaps.blend(magma, plasma, alpha=alpha)
        assert torch.equal(table.view(256, 256, 3), per_pixel.to(torch.uint8))


def test_spectrogram_rgb_is_the_colour_of_its_levels():
    db = torch.randn(3, 260, 40).cumsum(-1)
    db[2] = -80.0  # a constant window: all the first colour
    levels = spectrogram_levels(db)
    assert levels.dtype == torch.int32 and int(levels.min()) == 0 and int(levels.max()) == 255
    # the definition, min-max then matplotlib's indexing, flipped: to the bit
    assert torch.equal(levels, colormaps.levels(minmax(db).flip(-2)))
    assert int(levels[2].max()) == 0
    rgb = spectrogram_rgb(db, lut=colormaps.table("magma"))
    np.testing.assert_array_equal(rgb.numpy(), colormaps.lut("magma")[levels.numpy()])


def test_stitch_lays_windows_along_time_later_ones_on_top():
    a = np.full((2, 4, 3), 1, np.uint8)  # (h, t, 3)
    b = np.full((2, 4, 3), 2, np.uint8)
    out = render.stitch([a, b], np.array([0, 3]))  # the last window end-aligned: overlaps 1
    assert out.shape == (2, 7, 3)
    np.testing.assert_array_equal(out[0, :, 0], [1, 1, 1, 2, 2, 2, 2])
    bands = render.stitch([np.stack([a, b]), np.stack([b, a])], np.array([0, 4]))  # (k, h, t, 3)
    assert bands.shape == (2, 2, 8, 3)
    np.testing.assert_array_equal(bands[1, 0, :, 0], [2, 2, 2, 2, 1, 1, 1, 1])
