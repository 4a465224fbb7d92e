import pytest
import torch
from torch import nn

from mlic.models import build_model
from mlic.models.seed_cnn import SeedCNN


def test_seed_cnn_structure_matches_the_seed():
    model = build_model("seed_cnn", num_classes=7)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (3, 32, (3, 3)),
        (32, 64, (3, 3)),
        (64, 128, (3, 3)),
        (128, 256, (3, 3)),
    ]
    assert len([m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]) == 4
    # three max-pools: none after the fourth block
    assert len([m for m in model.modules() if isinstance(m, nn.MaxPool2d)]) == 3
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.features[3])
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(256, 512), (512, 7)]
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == 1 and dropouts[0].p == 0.5


@pytest.mark.parametrize("size", [32, 64, 97])
def test_output_shape_and_raw_logits(size):
    torch.manual_seed(0)
    model = build_model("seed_cnn", num_classes=5).eval()
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (3, 5)
    assert torch.isfinite(out).all()
    # logits, not probabilities: some fall outside [0, 1] for random input
    assert (out < 0).any() or (out > 1).any()
    assert model.forward_features(x).shape == (3, 256, size // 8, size // 8)


def test_width_dropout_configurable_and_reset_classifier():
    model = SeedCNN(num_classes=3, widths=(8, 16, 16, 32), hidden=64, drop_rate=0.2)
    assert model.num_features == 32 and model.pre_logits[2].p == 0.2
    model.reset_classifier(9)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 9)


def test_backward_has_finite_grads():
    model = build_model("seed_cnn", num_classes=4)
    loss = model(torch.randn(2, 3, 32, 32)).sum()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'resnet9000'"):
        build_model("resnet9000", num_classes=2)


def test_folding_batchnorm_keeps_outputs_and_removes_every_norm(tiny_checkpoint):
    from mlic.inference.predictor import Predictor
    from mlic.models.fold import count_batchnorm, fold_batchnorm

    torch.manual_seed(0)
    model = build_model("seed_cnn", 5, widths=[8, 16, 16, 32], hidden=16)
    for m in model.modules():  # trained-looking statistics, so folding has something to get wrong
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2), m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    model.eval()
    x = torch.randn(4, 3, 40, 40)
    folded = fold_batchnorm(model)
    assert count_batchnorm(model) == 4 and count_batchnorm(folded) == 0
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5, rtol=1e-4)
        assert not torch.allclose(folded.features[0][0].weight, model.features[0][0].weight)
    assert count_batchnorm(model) == 4  # the original is untouched
    assert count_batchnorm(Predictor.from_checkpoint(tiny_checkpoint, device="cpu").model) == 0
