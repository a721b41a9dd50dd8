"""A real crawl fine-tuned from torchvision's ImageNet weights (README "Real crawls with a pretrained
backbone"), on the CPU: a tiny RGB image folder, the `web_resnet18` preset at 32 px instead of 224 (ResNets
do not care) and a state dict in the layout of torchvision's published file standing in for the user's."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from labelsieve.config import load_params
from labelsieve.engine import loop
from labelsieve.stages import ingest, inject_noise, warmup

pytestmark = pytest.mark.integration

CLASSES = ("cat", "dog", "fox")


def _rgb_folder(root, per_class: int = 8, size: int = 40):
    """root/<class>/<i>.png: random RGB images, each class with its own dominant colour."""
    rng = np.random.default_rng(0)
    for c, label in enumerate(CLASSES):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 128, (size, size, 3), dtype=np.uint8)
            pixels[..., c] += 127
            Image.fromarray(pixels, mode="RGB").save(root / label / f"{i}.png")
    return root


def test_warmup_starts_from_the_torchvision_file_with_a_fresh_head(tmp_path, monkeypatch, capsys):
    from torchvision import models

    torch.manual_seed(11)
    weights = tmp_path / "resnet18-f37072fd.pth"
    state = models.resnet18(weights=None).state_dict()  # fc: 1000 classes, as the published file
    torch.save(state, weights)
    params = load_params(
        None,
        presets=["web_resnet18"],
        overrides=[
            f"ingest.source={_rgb_folder(tmp_path / 'crawl')}",
            "ingest.val_fraction=0.2",
            "ingest.test_fraction=0.25",
            "inject_noise.rate=0",
            f"model.pretrained_path={weights}",
            "data.image_size=32",
            "model.batch_size=8",
            "model.crop_padding=2",
            "warmup.epochs=1",
            "runtime.device=cpu",
            "runtime.threads=1",
            "runtime.progress=never",
        ],
    )
    assert (params.model.name, params.data.channels) == ("tv_resnet18", 3)
    ingest.run(params, out_dir=tmp_path / "dataset")
    inject_noise.run(params, dataset_dir=tmp_path / "dataset", out_dir=tmp_path / "labels")
    built = []
    real = loop.build_networks

    def spy(*args, **kwargs):
        networks = real(*args, **kwargs)
        built.extend({k: v.detach().clone() for k, v in net.state_dict().items()} for net in networks)
        return networks

    monkeypatch.setattr(loop, "build_networks", spy)
    out = tmp_path / "warmup"
    warmup.run(params, dataset_dir=tmp_path / "dataset", labels_dir=tmp_path / "labels", out_dir=out)

    assert len(built) == params.warmup.networks == 2
    for start in built:  # before training: the file's backbone, a 3-class head
        for key in ("conv1.weight", "layer4.1.conv2.weight", "layer4.1.bn2.running_mean"):
            torch.testing.assert_close(start[key], state[key], rtol=0, atol=0, msg=key)
        assert start["fc.weight"].shape == (3, 512)
    trained = torch.load(out / "net1.pt", weights_only=True)
    assert trained["fc.weight"].shape == (3, 512)
    assert not torch.equal(trained["conv1.weight"], state["conv1.weight"])  # fine-tuned, not frozen
    meta = json.loads((out / "networks.json").read_text())
    assert (meta["model"], meta["in_channels"], meta["num_classes"]) == ("tv_resnet18", 3, 3)
    replaced = (
        f"pretrained weights {weights}: backbone loaded; its 1000-class head is replaced by a fresh 3-class"
    )
    assert capsys.readouterr().err.count(replaced) == 2  # once per network
