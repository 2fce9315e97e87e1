import pytest
import torch
from torchvision.models import resnet18

from echocam.errors import WeightsUnavailable
from echocam.explain.model import (
    imagenet_cache_path,
    load_model,
    save_checkpoint,
    state_dict_sha256,
)


def test_checkpoint_sizes_fc_from_state_dict_and_keeps_class_names(species_checkpoint):
    from tests.helpers import SPECIES

    m = load_model(str(species_checkpoint))
    assert m.class_names == SPECIES and m.weights_kind == "checkpoint"
    assert m.net.fc_weight.shape == (3, 512)
    assert not m.net.training
    sd = torch.load(species_checkpoint, weights_only=True)["state_dict"]
    assert m.sha256 == state_dict_sha256(sd)


def test_forward_returns_logits_and_layer4_features_without_keeping_hooks(species_model):
    logits, feats = species_model.net(torch.zeros(2, 3, 224, 224))
    assert logits.shape == (2, 3) and feats.shape == (2, 512, 7, 7)
    assert not species_model.net.net.layer4._forward_hooks


def test_random_weights_are_seeded_and_marked():
    a, b, c = load_model("random", seed=1), load_model("random", seed=1), load_model("random")
    assert a.sha256 == b.sha256 != c.sha256
    assert a.identity["random_weights"] is True and a.weights_kind == "random"


def test_sha256_changes_with_any_weight(species_checkpoint):
    sd = torch.load(species_checkpoint, weights_only=True)["state_dict"]
    before = state_dict_sha256(sd)
    sd["fc.bias"] = sd["fc.bias"].clone()
    sd["fc.bias"][0] += 1e-6
    assert state_dict_sha256(sd) != before


def test_imagenet_from_torch_hub_cache(tmp_path, monkeypatch):
    """Offline, a cached IMAGENET1K_V1 file is used (here a stand-in with the real file name)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = imagenet_cache_path()
    path.parent.mkdir(parents=True)
    torch.save(resnet18(weights=None).state_dict(), path)
    m = load_model("imagenet")
    assert m.weights_kind == "imagenet" and len(m.class_names) == 1000
    assert m.class_names[0] == "tench" and path.name == "resnet18-f37072fd.pth"


def test_imagenet_offline_without_cache_says_how_to_provide_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailable) as exc:
        load_model("imagenet")
    msg = str(exc.value)
    assert str(imagenet_cache_path()) in msg and "ECHOCAM_WEIGHTS" in msg


@pytest.mark.parametrize("content", [b"not a checkpoint", None])
def test_bad_checkpoints_fail_clearly(tmp_path, content):
    path = tmp_path / "bad.pt"
    if content is None:
        save_checkpoint(path, {"fc.weight": torch.zeros(2, 512)}, ["a", "b"])
    else:
        path.write_bytes(content)
    with pytest.raises(WeightsUnavailable):
        load_model(str(path))
