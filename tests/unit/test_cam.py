"""CAM against independent oracles: the logit identity, captum's LayerGradCam, and display maps
against where the network's receptive fields really are (input gradients)."""

import copy

import numpy as np
import pytest
import torch

from echocam.explain.cam import CellGrid, class_activation_maps, display_maps, explain
from echocam.explain.model import set_output_stride
from echocam.settings import Params
from echocam.signal.audio import decode
from echocam.signal.colormaps import table
from echocam.signal.image import model_image, normalise, spectrogram_rgb
from echocam.signal.spectrogram import MelSpectrogramDB
from echocam.signal.windows import frame, window_starts
from tests.helpers import recordings


@pytest.fixture(autouse=True)
def exact_float32():
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@pytest.fixture(scope="module")
def images():
    """Model inputs from a real recording (spinetail, also in samples/): 4 windows of 5 s."""
    p = Params()
    mel = MelSpectrogramDB.from_params(p)
    if not recordings():
        pytest.skip("shared recordings not found")
    y = decode(
        recordings()[-1].read_bytes(),
        sample_rate=p.sample_rate,
        min_samples=p.n_fft,
        max_duration_s=600,
        max_bytes=10**9,
    ).samples
    wins = frame(
        y, window_starts(len(y), window=5 * p.sample_rate, hop=5 * p.sample_rate), 5 * p.sample_rate
    )[:4]
    rgb = spectrogram_rgb(mel(torch.from_numpy(np.ascontiguousarray(wins))), lut=table("magma"))
    return normalise(model_image(rgb))


def test_cam_mean_plus_bias_is_the_logit(species_model, images):
    net = species_model.net
    ex = explain(net, images, top_k=3)
    fc = net.net.fc
    recon = ex.cams.mean(dim=(-2, -1)) + fc.bias[ex.class_ids]
    torch.testing.assert_close(recon, ex.logits.gather(1, ex.class_ids), rtol=1e-4, atol=1e-4)
    # top-k is sorted by probability
    assert (ex.probs.gather(1, ex.class_ids).diff(dim=1) <= 0).all()


def test_raw_cam_equals_captum_layer_gradcam_times_hw(species_model, images):
    from captum.attr import LayerGradCam

    net = species_model.net
    ex = explain(net, images, top_k=1)
    target = ex.class_ids[:, 0]
    gc = LayerGradCam(lambda x: net(x)[0], net.net.layer4)
    with torch.enable_grad():
        ref = gc.attribute(
            images.clone().requires_grad_(True), target=target, relu_attributions=False
        )
    h, w = ex.cams.shape[-2:]
    torch.testing.assert_close(ex.cams[:, 0], ref[:, 0] * h * w, rtol=1e-4, atol=1e-4)


def test_display_map_keeps_each_cell_value_at_its_receptive_field_centre():
    """At 224 × 224 (the model image) pixel (32i, 32j) is where layer4 cell (i, j) is centred:
    the display map there is the cell's ReLU'd, min-max-scaled value, exactly."""
    cams = torch.randn(3, 2, 7, 7)
    maps = display_maps(cams, size=(224, 224))
    at_centres = maps[..., ::32, ::32]
    ref = cams.relu()
    lo, hi = ref.amin((-2, -1), keepdim=True), ref.amax((-2, -1), keepdim=True)
    torch.testing.assert_close(at_centres, (ref - lo) / (hi - lo), rtol=0, atol=1e-6)
    # On a spectrogram-sized map (260 mels × 552 frames) a one-cell CAM peaks at the same
    # place as a fraction of the image, within a pixel.
    one = torch.zeros(1, 1, 7, 7)
    one[0, 0, 2, 4] = 1
    peak = divmod(int(display_maps(one, size=(260, 552)).argmax()), 552)
    assert abs(peak[0] + 0.5 - (32 * 2 + 0.5) * 260 / 224) <= 1
    assert abs(peak[1] + 0.5 - (32 * 4 + 0.5) * 552 / 224) <= 1


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stride", "cells", "tolerance"),
    [(32, [(3, 2), (3, 4), (2, 3), (4, 3)], 4), (16, [(6, 4), (6, 8), (4, 6), (8, 6)], 3)],
)
def test_cell_receptive_fields_are_centred_where_display_maps_draw_them(stride, cells, tolerance):
    """The claim behind display_maps' resampling, checked on the network itself: the input
    gradient of layer4 cell j is centred on pixel stride · j (not on stride · j + stride / 2,
    where bilinear upsampling with align_corners=False draws the cell), at ResNet-18's own
    stride and at 16 (layer4 without its stride, dilated).  Gradient energy of a seeded random
    ResNet-18 over random images, centroid within ±40 px of the cell's centre, and a one-cell
    map drawn at that stride peaks there."""
    from torchvision.models import resnet18

    torch.manual_seed(0)
    net = resnet18(weights=None).eval()
    set_output_stride(net, stride)
    body = torch.nn.Sequential(*list(net.children())[:-2])
    x = torch.randn(8, 3, 224, 224, requires_grad=True)
    features = body(x)
    n = 224 // stride
    assert features.shape[-2:] == (n, n)
    pixel = torch.arange(224, dtype=torch.float64) + 0.5
    for i, j in cells:
        (grad,) = torch.autograd.grad(features[:, :, i, j].sum(), x, retain_graph=True)
        energy = (grad.double() ** 2).sum((0, 1))  # (224, 224)
        for profile, cell in ((energy.sum(1), i), (energy.sum(0), j)):
            near = (pixel - (stride * cell + 0.5)).abs() <= 40
            centroid = float((profile * pixel)[near].sum() / profile[near].sum())
            assert abs(centroid - (stride * cell + 0.5)) < tolerance, (i, j, cell, centroid)
        one = torch.zeros(1, 1, n, n)
        one[0, 0, i, j] = 1
        shown = display_maps(one, size=(224, 224), grid=CellGrid(stride=stride))
        assert divmod(int(shown.argmax()), 224) == (stride * i, stride * j)


def test_cams_for_named_classes_are_one_einsum():
    feats = torch.randn(2, 512, 7, 7)
    w = torch.randn(5, 512)
    ids = torch.tensor([[4, 1], [0, 2]])
    cams = class_activation_maps(feats, w, ids)
    for b in range(2):
        for k in range(2):
            ref = (w[ids[b, k]][:, None, None] * feats[b]).sum(0)
            torch.testing.assert_close(cams[b, k], ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
        ),
    ],
)
def test_cams_are_float32_from_the_features_under_bf16_autocast(species_model, images, device):
    """The CUDA path runs the forward under bf16 autocast: layer4's features come out in bf16, but
    the CAM over them (a sum over 512 channels) must be computed in float32.  So it is compared,
    on every image and class, at float32 tolerances with a float64 einsum of the *same* features
    (taken by a second hook on layer4), not with an fp32 forward's maps.  Summed in bf16 and
    converted afterwards, the maps are off by ~4e-3 on maps of magnitude ~1 (this check: 1e-5
    of the largest value; float32 gives ~4e-7)."""
    net = copy.deepcopy(species_model.net).to(device)
    x = images.to(device)
    every_class = torch.arange(net.fc_weight.shape[0], device=device)
    seen = []
    hook = net.net.layer4.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16):
            ex = explain(net, x, class_ids=every_class)
    finally:
        hook.remove()
    (features,) = seen
    assert features.dtype == torch.bfloat16  # the forward really ran in bf16
    assert {ex.cams.dtype, ex.logits.dtype, ex.probs.dtype} == {torch.float32}
    weights = net.fc_weight.detach().double()[ex.class_ids]  # (b, k, 512)
    ref = torch.einsum("bkc,bchw->bkhw", weights, features.double())
    assert ex.cams.shape == ref.shape == (x.shape[0], len(every_class), 7, 7)
    scale = ref.abs().max().item()
    torch.testing.assert_close(ex.cams.double(), ref, rtol=1e-4, atol=1e-5 * scale)
    # The bf16 forward still draws the fp32 forward's picture (measured: at most 0.035 apart).
    with torch.inference_mode():
        fp32 = explain(net, x, class_ids=every_class)
    size = (Params().n_mels, 552)
    diff = (display_maps(ex.cams, size=size) - display_maps(fp32.cams, size=size)).abs()
    assert diff.amax().item() < 0.1


def test_unresized_inputs_give_finer_cells_drawn_where_their_fields_are():
    """``input_size`` 0: the model sees the spectrogram itself (260 x 552 at the defaults), a
    layer4 grid of 9 x 18 cells of 29 bands by 0.28 s (the 224 square's are 37 by 0.72 s), and
    display maps put cell (i, j) on pixel (32 i, 32 j) of that image, not stretched over 32
    pixels a cell as a resized square's are."""
    from echocam.explain.model import HookedResNet18
    from echocam.signal.frontend import FrontEnd

    p = Params(input_size=0)
    fe = FrontEnd(p)
    waves = torch.from_numpy(np.random.default_rng(0).standard_normal((2, p.window_samples)))
    db = fe.db(waves.float())
    levels, rgb, image = fe.colours(db)
    assert image.shape == (2, 3, p.n_mels, db.shape[-1]) == (2, 3, 260, 552)
    assert torch.equal(image, rgb.permute(0, 3, 1, 2))  # no resize: the RGB itself
    _, features = HookedResNet18(num_classes=3)(fe.model_input(image))
    assert features.shape[-2:] == (9, 18)
    frames = db.shape[-1]
    for i, j in [(0, 0), (4, 9), (8, 17), (2, 11)]:
        one = torch.zeros(1, 1, 9, 18)
        one[0, 0, i, j] = 1
        shown = display_maps(one, size=(260, frames), grid=CellGrid(unresized=True))
        row, col = divmod(int(shown.argmax()), frames)
        assert (row, col) == (min(32 * i, 259), min(32 * j, frames - 1))
    # a resized square keeps its 32 pixels a cell over the display's extent
    one = torch.zeros(1, 1, 7, 7)
    one[0, 0, 3, 3] = 1
    row, col = divmod(int(display_maps(one, size=(260, frames)).argmax()), frames)
    # (pixel 96's centre, 96.5 of 224, scaled to the display; within a pixel)
    assert abs(row + 0.5 - 96.5 * 260 / 224) <= 1 and abs(col + 0.5 - 96.5 * frames / 224) <= 1
    with pytest.raises(ValueError, match="multiple of 32"):
        Params(input_size=100)


def test_the_fingerprint_of_the_default_input_size_is_that_of_runs_before_it():
    """Runs fingerprinted before ``input_size`` existed stay done: at 224 it is left out.

    (Their outputs were the defaults before ``embeddings``: a run that now writes embeddings
    has other outputs, so another fingerprint.)
    """
    from echocam.settings import fingerprint

    before = ("spectrogram", "overlay", "cam", "detections")
    assert fingerprint(Params(outputs=before), "ab" * 32) == (
        "3e8db27f83a3a989a5dfebba62108eb016651a9f4f14508ef40534f949369c05"
    )
    assert fingerprint(Params(top_k=3, n_mels=128, outputs=before), "cd" * 32) == (
        "76948b8fb8cb34676d008d46c7ee0efa7b87bf502579bfa0fd9f8ec348e64ec5"
    )
    assert fingerprint(Params(input_size=0), "ab" * 32) != fingerprint(Params(), "ab" * 32)
    assert fingerprint(Params(), "ab" * 32) != fingerprint(Params(outputs=before), "ab" * 32)
