import pytest
import torch
from torch import nn

from switchema import EMA, has_batchnorm, recompute_bn
from switchema.batchnorm import resolve_buffer_policy


class DictNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(3, momentum=0.3)

    def forward(self, x, scale=1.0):
        return self.bn(x * scale)


def _batches(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 3, generator=g) * (i + 1) + i for i in range(4)]


@pytest.mark.parametrize("layout", ["tensor", "tuple", "dict"])
def test_recompute_bn_is_the_cumulative_average_of_batch_statistics(layout):
    model = DictNet().eval()
    model.bn.running_mean.fill_(5.0)  # stale statistics that must be forgotten
    xs = _batches()
    batches = {
        "tensor": xs,
        "tuple": [(x, torch.zeros(8)) for x in xs],
        "dict": [{"x": x, "scale": 1.0} for x in xs],
    }[layout]
    assert recompute_bn(model, batches) == 4
    # momentum=None: the running mean is the plain average of the 4 batch means, the running
    # variance the average of the unbiased batch variances (equal batch sizes)
    mean = torch.stack([x.mean(0) for x in xs]).mean(0)
    var = torch.stack([x.var(0, unbiased=True) for x in xs]).mean(0)
    torch.testing.assert_close(model.bn.running_mean, mean)
    torch.testing.assert_close(model.bn.running_var, var)
    assert model.bn.momentum == 0.3 and not model.training  # restored


def test_recompute_bn_without_batchnorm_and_errors():
    assert recompute_bn(nn.Linear(2, 2), [torch.randn(3, 2)]) == 0
    assert not has_batchnorm(nn.Linear(2, 2)) and has_batchnorm(DictNet())
    with pytest.raises(ValueError, match="no batches"):
        recompute_bn(DictNet(), [])
    with pytest.raises(TypeError, match="batches must be tensors"):
        recompute_bn(DictNet(), [3.0])


def test_recompute_bn_inside_swapped_uses_averaged_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model[0].weight.mul_(3.0)
    ema.update()
    xs = _batches(1)
    with ema.swapped():
        recompute_bn(model, xs)
        with torch.no_grad():
            expected = torch.stack([model[0](x).mean(0) for x in xs]).mean(0)
        torch.testing.assert_close(model[1].running_mean, expected)


def test_buffer_policy_patterns_first_match_wins():
    policy = {"*.running_var": "skip", "*running*": "average"}
    assert resolve_buffer_policy(policy, "bn.running_var") == "skip"
    assert resolve_buffer_policy(policy, "bn.running_mean") == "average"
    assert resolve_buffer_policy(policy, "other") == "copy"
    with pytest.raises(TypeError, match="buffers must be one of"):
        resolve_buffer_policy(3, "x")
