"""Fixtures for every test: checkpoints the tests make, a loaded model, the trained species
model (one training per session), a Redis."""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools.services import RedisServer
from tests.helpers import SPECIES

# the species fixtures (one training per session), for every test file
from tests.trained_species import species_data, trained_species  # noqa: F401


@pytest.fixture(scope="session")
def species_checkpoint(tmp_path_factory) -> Path:
    """A 3-species ResNet-18 checkpoint, as a species model would be shipped (seeded weights)."""
    import torch
    from torchvision.models import resnet18

    from echocam.explain.model import save_checkpoint

    torch.manual_seed(1234)
    net = resnet18(weights=None, num_classes=len(SPECIES))
    path = tmp_path_factory.mktemp("ckpt") / "species.pt"
    save_checkpoint(path, net.state_dict(), SPECIES)
    return path


@pytest.fixture(scope="session")
def species_model(species_checkpoint):
    from echocam.explain.model import load_model

    return load_model(str(species_checkpoint))


@pytest.fixture(scope="module")
def redis_srv():
    with RedisServer(password="s3cret-pw") as srv:
        yield srv


@pytest.fixture
def r(redis_srv):
    client = redis_srv.client()
    client.flushdb()
    yield client
    client.close()
