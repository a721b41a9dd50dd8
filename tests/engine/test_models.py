"""Tests for labelsieve.models: every registered model, plus the architecture details the spec pins down."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from labelsieve.models import MODEL_NAMES, PreActResNet18, build_model

FEATURE_DIMS = {"small_cnn": 128, "preact_resnet18": 512, "tv_resnet18": 512, "tv_resnet50": 2048}


def _build(name: str, *, seed: int = 0, num_classes: int = 10, in_channels: int = 3, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name, num_classes=num_classes, in_channels=in_channels, **kwargs).eval()


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_model_names_lists_every_feature_dim() -> None:
    assert set(MODEL_NAMES) == set(FEATURE_DIMS)


# Every model on RGB 32x32 (CIFAR); the CPU-profile network also on grayscale digits (8x8) and
# Fashion-MNIST (28x28); the two CIFAR-scale networks also on 28x28 grayscale.
FORWARD_CASES = [(name, 3, 32) for name in MODEL_NAMES] + [
    ("small_cnn", 1, 8),
    ("small_cnn", 1, 28),
    ("preact_resnet18", 1, 28),
    ("tv_resnet18", 1, 28),
]


@pytest.mark.parametrize(("name", "in_channels", "size"), FORWARD_CASES)
def test_build_model_forward_equals_head_of_features(name: str, in_channels: int, size: int) -> None:
    model = _build(name, num_classes=7, in_channels=in_channels)
    x = torch.randn(3, in_channels, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(x)
        feats = model.features(x)
        via_head = model.head(feats)
    assert logits.shape == (3, 7)
    assert feats.shape == (3, FEATURE_DIMS[name])
    assert_close(logits, via_head, rtol=0, atol=0)


def test_build_model_unknown_name_lists_allowed() -> None:
    with pytest.raises(ValueError, match="allowed: small_cnn, preact_resnet18, tv_resnet18, tv_resnet50"):
        build_model("resnet18", num_classes=10, in_channels=3)


@pytest.mark.parametrize(("num_classes", "in_channels"), [(0, 3), (10, 0)])
def test_build_model_nonpositive_sizes_raise(num_classes: int, in_channels: int) -> None:
    with pytest.raises(ValueError, match=">= 1"):
        build_model("small_cnn", num_classes=num_classes, in_channels=in_channels)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_build_model_same_seed_same_weights(name: str) -> None:
    a = _build(name, seed=3, in_channels=1).state_dict()
    b = _build(name, seed=3, in_channels=1).state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_build_model_other_seed_other_weights() -> None:
    a = _build("small_cnn", seed=3).state_dict()
    b = _build("small_cnn", seed=4).state_dict()
    assert not torch.equal(a["fc.weight"], b["fc.weight"])


def test_small_cnn_param_count_c1_k10() -> None:
    # Convs carry no bias (BatchNorm follows); BN has weight + bias per channel.
    expected = (
        (1 * 32 * 9 + 2 * 32)  # conv 1->32, BN 32
        + (32 * 64 * 9 + 2 * 64)  # conv 32->64, BN 64
        + (64 * 128 * 9 + 2 * 128)  # conv 64->128, BN 128
        + (128 * 10 + 10)  # Linear(128, 10)
    )
    assert expected == 94_186
    assert _n_params(_build("small_cnn", in_channels=1)) == expected


def test_small_cnn_layer_sequence_matches_spec() -> None:
    model = _build("small_cnn", in_channels=1)
    kinds = [type(m).__name__ for m in model.body]
    assert kinds == [
        "Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d",
        "Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d",
        "Conv2d", "BatchNorm2d", "ReLU",
        "AdaptiveAvgPool2d", "Flatten",
    ]  # fmt: skip
    convs = [m for m in model.body if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (1, 32, (3, 3), (1, 1)),
        (32, 64, (3, 3), (1, 1)),
        (64, 128, (3, 3), (1, 1)),
    ]


def test_small_cnn_smallest_input_4x4() -> None:
    model = _build("small_cnn", in_channels=1)
    with torch.no_grad():
        assert model(torch.randn(2, 1, 4, 4)).shape == (2, 10)


def _preact_block_params(in_ch: int, out_ch: int) -> int:
    shortcut = in_ch * out_ch if in_ch != out_ch else 0  # 1x1 conv, only where the shape changes
    return 2 * in_ch + 9 * in_ch * out_ch + 2 * out_ch + 9 * out_ch * out_ch + shortcut


def test_preact_resnet18_param_count_c3_k10() -> None:
    expected = 3 * 64 * 9 + 2 * 64  # stem conv + BN
    in_ch = 64
    for width in (64, 128, 256, 512):
        expected += _preact_block_params(in_ch, width) + _preact_block_params(width, width)
        in_ch = width
    expected += 512 * 10 + 10
    assert expected == 11_171_274
    assert _n_params(_build("preact_resnet18")) == expected


def test_preact_resnet18_no_bn_before_pooling() -> None:
    model = _build("preact_resnet18")
    order: list[nn.Module] = []
    hooks = [
        m.register_forward_hook(lambda mod, _inp, _out: order.append(mod))
        for m in model.modules()
        if not list(m.children())
    ]
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    for h in hooks:
        h.remove()
    # Leaf modules in execution order end with: last block's conv2, pool, fc. A final BN would sit between.
    assert isinstance(order[-1], nn.Linear)
    assert isinstance(order[-2], nn.AdaptiveAvgPool2d)
    assert isinstance(order[-3], nn.Conv2d)
    assert order[-3] is model.layer4[1].conv2
    assert [n for n, m in model.named_children() if isinstance(m, nn.BatchNorm2d)] == ["bn1"]  # stem only


def test_preact_resnet18_stage_widths_and_strides() -> None:
    model = _build("preact_resnet18")
    first_blocks = [model.layer1[0], model.layer2[0], model.layer3[0], model.layer4[0]]
    assert [b.conv1.out_channels for b in first_blocks] == [64, 128, 256, 512]
    assert [b.conv1.stride for b in first_blocks] == [(1, 1), (2, 2), (2, 2), (2, 2)]
    assert model.layer1[0].shortcut is None
    assert all(b.shortcut is not None for b in first_blocks[1:])
    assert all(len(stage) == 2 for stage in (model.layer1, model.layer2, model.layer3, model.layer4))
    assert model.conv1.stride == (1, 1) and model.conv1.kernel_size == (3, 3)


def test_preact_block_projection_shortcut_uses_preactivated_input() -> None:
    model = _build("preact_resnet18")
    assert isinstance(model, PreActResNet18)
    block = model.layer2[0]
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        a = torch.relu(block.bn1(x))
        residual = block.conv2(torch.relu(block.bn2(block.conv1(a))))
        assert_close(block(x), residual + block.shortcut(a))
        identity_block = model.layer2[1]
        y = torch.randn(2, 128, 4, 4)
        b = torch.relu(identity_block.bn1(y))
        assert_close(
            identity_block(y),
            identity_block.conv2(torch.relu(identity_block.bn2(identity_block.conv1(b)))) + y,
        )


def test_tv_resnet_in_channels_1_adapts_first_conv() -> None:
    model = _build("tv_resnet18", in_channels=1)
    assert model.conv1.in_channels == 1
    assert model.fc.out_features == 10
    assert "conv1.weight" in model.state_dict()  # torchvision's own key names


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_pretrained_path_round_trip_same_outputs(name: str, tmp_path: Path) -> None:
    source = _build(name, seed=1, in_channels=1)
    # Perturb BN running stats so the test also covers buffers, not only parameters.
    for m in source.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)
    loaded = _build(name, seed=2, in_channels=1, pretrained_path=str(path))
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert_close(loaded(x), source(x), rtol=0, atol=0)


def test_pretrained_path_other_head_shape_keeps_fresh_head(tmp_path: Path) -> None:
    source = _build("tv_resnet18", seed=1, num_classes=10)
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)
    fresh = _build("tv_resnet18", seed=5, num_classes=4)
    loaded = _build("tv_resnet18", seed=5, num_classes=4, pretrained_path=path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_close(loaded.features(x), source.features(x), rtol=0, atol=0)
    assert_close(loaded.fc.weight, fresh.fc.weight, rtol=0, atol=0)
    assert_close(loaded.fc.bias, fresh.fc.bias, rtol=0, atol=0)


def test_pretrained_path_backbone_mismatch_raises(tmp_path: Path) -> None:
    path = tmp_path / "rgb.pt"
    torch.save(_build("tv_resnet18", in_channels=3).state_dict(), path)
    with pytest.raises(ValueError, match=r"shape of conv1\.weight"):
        _build("tv_resnet18", in_channels=1, pretrained_path=path)


def test_pretrained_path_other_architecture_raises(tmp_path: Path) -> None:
    path = tmp_path / "cnn.pt"
    torch.save(_build("small_cnn").state_dict(), path)
    with pytest.raises(ValueError, match=r"missing conv1\.weight"):
        _build("preact_resnet18", pretrained_path=path)


def test_pretrained_path_missing_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.pt"
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pt"):
        build_model("small_cnn", num_classes=10, in_channels=1, pretrained_path=str(path))


def test_pretrained_path_not_a_state_dict_raises(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(3)], path)
    with pytest.raises(ValueError, match="expected a state dict"):
        build_model("small_cnn", num_classes=10, in_channels=1, pretrained_path=path)


def _torchvision_file(path: Path, arch: str = "resnet18", *, drop: str = "", prefix: str = "") -> dict:
    """A state dict laid out as torchvision's published ImageNet files (1000-class fc), saved at `path`."""
    from torchvision import models

    torch.manual_seed(7)
    state = getattr(models, arch)(weights=None).state_dict()
    state = {prefix + k: v for k, v in state.items() if not (drop and k.endswith(drop))}
    torch.save(state, path)
    return state


def test_torchvision_imagenet_file_loads_the_backbone_and_replaces_the_head(tmp_path: Path, capsys) -> None:
    path = tmp_path / "resnet18-f37072fd.pth"
    state = _torchvision_file(path)
    fresh = _build("tv_resnet18", seed=3, num_classes=5)
    model = _build("tv_resnet18", seed=3, num_classes=5, pretrained_path=path)
    own = model.state_dict()
    for key, value in state.items():
        if not key.startswith("fc."):
            assert_close(own[key], value, rtol=0, atol=0, msg=key)
    assert model.fc.weight.shape == (5, 512)
    assert_close(model.fc.weight, fresh.fc.weight, rtol=0, atol=0)
    assert capsys.readouterr().err.strip() == (
        f"pretrained weights {path}: backbone loaded; its 1000-class head is replaced by a fresh 5-class fc"
    )


def test_a_file_without_batch_counters_loads(tmp_path: Path) -> None:
    path = tmp_path / "old.pth"
    state = _torchvision_file(path, drop=".num_batches_tracked")
    model = _build("tv_resnet18", num_classes=5, pretrained_path=path)
    assert_close(model.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"], rtol=0, atol=0)


def test_a_file_that_does_not_fit_names_the_keys(tmp_path: Path) -> None:
    path = tmp_path / "resnet50.pth"
    _torchvision_file(path, "resnet50")
    with pytest.raises(
        ValueError,
        match=r"does not fit the model \(0 missing, \d+ misshapen, \d+ unexpected keys\): "
        r"shape of layer1\.0\.conv1\.weight: file \(64, 64, 1, 1\) vs model \(64, 64, 3, 3\)",
    ):
        _build("tv_resnet18", pretrained_path=path)


def test_a_file_saved_from_a_ddp_wrapper_is_named_and_explained(tmp_path: Path) -> None:
    path = tmp_path / "ddp.pth"
    _torchvision_file(path, prefix="module.")
    with pytest.raises(
        ValueError, match=r"missing conv1\.weight; .*\.\.\. \d+ more \(saved from a DataParallel/DDP"
    ):
        _build("tv_resnet18", pretrained_path=path)
