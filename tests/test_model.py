import pytest
import torch

from edgekit.errors import CheckpointError, ConfigError
from edgekit.model import ModelSpec, build_model, count_macs, count_parameters, load_checkpoint, save_checkpoint


def test_full_width_resnet18_has_the_published_parameter_count():
    model = build_model(ModelSpec())
    assert count_parameters(model) == 11_173_962
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_width_multiplier_scales_channels_and_macs():
    full, narrow = build_model(ModelSpec()), build_model(ModelSpec.from_width(0.25))
    assert narrow.spec.stage_channels == (16, 32, 64, 128)
    assert count_macs(narrow) < count_macs(full) / 10
    with pytest.raises(ConfigError):
        ModelSpec.from_width(0)


def test_fuse_model_keeps_outputs_and_channels_last_runs():
    model = build_model(ModelSpec.from_width(0.125))
    model.train()
    for _ in range(3):  # give BN non-trivial running statistics
        model(torch.rand(16, 3, 32, 32))
    model.eval()
    x = torch.rand(4, 3, 32, 32)
    reference = model(x)
    channels_last = model(x.contiguous(memory_format=torch.channels_last))
    model.fuse_model()
    assert torch.allclose(model(x), reference, atol=1e-5)
    assert torch.allclose(channels_last, reference, atol=1e-5)


def test_checkpoint_round_trip_and_refusals(tmp_path):
    model = build_model(ModelSpec.from_width(0.125)).eval()
    path = save_checkpoint(tmp_path / "m.pt", model, [str(i) for i in range(10)])
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(load_checkpoint(path).build()(x), model(x))

    with pytest.raises(CheckpointError, match="stage_channels"):
        load_checkpoint(path, expect=ModelSpec())  # a width-1 model cannot take width-0.125 weights
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="is not a torch file"):
        load_checkpoint(garbage)


# ---- MobileNetV2 -----------------------------------------------------------------------------


def test_mobilenet_v2_is_the_cifar_variant_with_its_published_shape():
    model = build_model(ModelSpec.from_width(1.0, arch="mobilenet_v2"))
    # torchvision's MobileNetV2 has 2,236,682 parameters at 10 classes; the CIFAR form differs only in strides
    assert count_parameters(model) == 2_236_682
    assert count_macs(model) < count_macs(build_model(ModelSpec())) / 5  # several times cheaper than ResNet18
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    depthwise = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 17 and all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    assert sum(isinstance(m, torch.nn.ReLU6) for m in model.modules()) == 2 + 16 + 17  # stem, head, expand, depthwise


def test_mobilenet_v2_width_fuse_and_checkpoint_round_trip(tmp_path):
    spec = ModelSpec.from_width(0.25, arch="mobilenet_v2")
    assert spec.stage_channels[-1] == 1280  # as torchvision, the head never narrows below 1280
    assert not spec.is_pruned
    model = build_model(spec, seed=0).train()
    for _ in range(3):
        model(torch.rand(16, 3, 32, 32))
    model.eval()
    x = torch.rand(4, 3, 32, 32)
    path = save_checkpoint(tmp_path / "m.pt", model, [str(i) for i in range(10)])
    loaded = load_checkpoint(path)
    assert loaded.spec.arch == "mobilenet_v2" and type(loaded.build()).__name__ == "MobileNetV2"
    reference = model(x)
    assert torch.equal(loaded.build()(x), reference)
    assert torch.allclose(loaded.build().fuse_model()(x), reference, atol=1e-5)

    with pytest.raises(CheckpointError, match="arch=mobilenet_v2"):
        load_checkpoint(path, expect=ModelSpec.from_width(0.25))  # a ResNet18 cannot take MobileNetV2 weights


def test_mobilenet_v2_spec_refuses_shapes_it_cannot_build():
    spec = ModelSpec.from_width(0.25, arch="mobilenet_v2")
    with pytest.raises(ValueError, match="stem"):
        ModelSpec.from_dict({**spec.to_dict(), "block_channels": [spec.stage_channels[0] + 8, *spec.block_channels[1:]]}).check()
    with pytest.raises(ValueError, match="stage_channels"):
        ModelSpec.from_dict({**spec.to_dict(), "stage_channels": list(spec.stage_channels[:4])}).check()
    with pytest.raises(ValueError, match="unknown architecture"):
        ModelSpec.from_dict({**spec.to_dict(), "arch": "vgg16"}).check()
    with pytest.raises(ConfigError, match="--arch"):
        ModelSpec.from_width(1.0, arch="vgg16")
    pruned = ModelSpec.from_dict({**spec.to_dict(), "block_channels": [spec.block_channels[0], 40, *spec.block_channels[2:]]})
    pruned.check()
    assert pruned.is_pruned and build_model(pruned).layer2[0].conv2.groups == 40


def test_mobilenet_v2_residual_adds_are_the_unpruned_networks():
    # Pruning removes channels, never an add: where a pruned first block's widths happen to meet
    # (stage 4 and stage 5 both 32 wide here), the block still has no add, and the rebuilt network
    # computes what the pruned one did.
    spec = ModelSpec.from_width(0.5, arch="mobilenet_v2")
    assert not build_model(spec).layer5[0].use_residual and build_model(spec).layer5[1].use_residual
    stages = list(spec.stage_channels)
    stages[5] = stages[4]
    met = ModelSpec.from_dict({**spec.to_dict(), "stage_channels": stages})
    met.check()
    model = build_model(met)
    assert model.layer5[0].conv3.out_channels == model.layer4[-1].conv3.out_channels  # the widths met
    assert not model.layer5[0].use_residual and not hasattr(model.layer5[0], "add")
    # At width 0.25 the stem and stage 1 are both 8 wide, so the first block is residual: its widths must stay equal
    narrow = ModelSpec.from_width(0.25, arch="mobilenet_v2")
    assert build_model(narrow).layer1[0].use_residual
    wider_stem = [16, *narrow.stage_channels[1:]]
    with pytest.raises(ValueError, match="block 0 adds its input back"):
        ModelSpec.from_dict({**narrow.to_dict(), "stage_channels": wider_stem,
                             "block_channels": [16, *narrow.block_channels[1:]]}).check()
