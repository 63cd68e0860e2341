"""The registry's own contract: names, lookup, duplicates, needs_input_grad masking."""

import pytest
import torch
import torch.nn.functional as F

from gradcheck_kit import manual
from gradcheck_kit.manual import registry
from gradcheck_kit.manual._sampling import Maker, describe


def test_every_rule_named_in_issue_2_is_registered():
    wanted = """conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d pad linear
    matmul mm bmm relu leaky_relu threshold hardtanh elu gelu sigmoid tanh softplus max_pool1d
    max_pool2d max_pool3d avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool2d unfold fold
    mse_loss l1_loss smooth_l1_loss huber_loss cross_entropy nll_loss binary_cross_entropy
    binary_cross_entropy_with_logits softmax log_softmax batch_norm layer_norm add sub mul div
    pow exp log sin cos abs sqrt sum mean norm dot strided_conv_loss conv_relu_conv_loss
    unfold_conv2d unfold_conv2d_custom""".split()
    missing = sorted(set(wanted) - set(manual.names()))
    assert not missing, f"rules missing from the registry: {missing}"


def test_rule_records_the_function_it_mirrors():
    assert manual.get("conv2d").mirrors is F.conv2d
    assert manual.get("conv2d").mirrors_name == "torch.nn.functional.conv2d"
    assert manual.get("layer_norm").mirrors is F.layer_norm


def test_unknown_name_suggests_closest():
    with pytest.raises(KeyError, match="conv2d"):
        manual.get("conv_2d")


def test_duplicate_name_is_an_error():
    with pytest.raises(RuntimeError, match="registered twice"):
        registry.register("relu", torch_fn=F.relu, tensor_args=("input",), samples=lambda **_: ())(
            lambda g, x, *, needs_input_grad: (g,))


def test_needs_input_grad_too_short_is_rejected():
    rule = manual.get("mul")
    a, b = torch.randn(3), torch.randn(3)
    with pytest.raises(ValueError, match="needs_input_grad"):
        rule.backward(torch.ones(3), a, b, needs_input_grad=(True,))


def test_integer_and_none_arguments_get_none():
    rule = manual.get("cross_entropy")
    x, t = torch.randn(4, 3, dtype=torch.float64), torch.tensor([0, 2, 1, 2])
    gx, gt = rule.backward(torch.tensor(1.0, dtype=torch.float64), x, t)[:2]
    assert gx is not None and gt is None
    gx, gw, gb = manual.get("conv1d").backward(torch.ones(1, 2, 3), torch.randn(1, 1, 5), torch.randn(2, 1, 3), None)
    assert gb is None


def test_maker_is_seeded_and_describes_tensors():
    a, b = Maker(seed=3).randn(2, 3), Maker(seed=3).randn(2, 3)
    assert torch.equal(a, b)
    assert Maker().randn().shape == ()
    assert describe(torch.zeros(2, 3, dtype=torch.float32)) == "Tensor[2x3, float32, cpu]"
