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
