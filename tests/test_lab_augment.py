"""switchema.lab.augment: augmentations against their definitions, losses against hand values."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from switchema.lab.augment import (
    add_noise,
    byol_loss,
    compose,
    consistency_loss,
    mnist1d_augmentation,
    random_scale,
    random_shift,
    random_translate_2d,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- MNIST-1D


def test_random_shift_is_a_per_sample_roll_by_the_drawn_shift():
    x = torch.randn(64, 2, 40, generator=gen(0))
    y = random_shift(x, 5, gen(1))
    s = torch.randint(-5, 6, (64,), generator=gen(1))  # the same draw
    for i in range(64):
        assert torch.equal(y[i], torch.roll(x[i], int(s[i]), dims=-1))
    # a permutation of each row: same multiset of values
    assert torch.equal(y.sort(-1).values, x.sort(-1).values)


def test_random_shift_covers_exactly_the_allowed_shifts():
    x = torch.zeros(2000, 40)
    x[:, 0] = 1.0  # the 1 lands at position s mod 40
    pos = random_shift(x, 3, gen(0)).argmax(-1)
    shifts = torch.where(pos > 20, pos - 40, pos)
    assert set(shifts.tolist()) == {-3, -2, -1, 0, 1, 2, 3}
    # (n, 1, L) and (n, L) draw the same shifts
    assert torch.equal(random_shift(x[:, None], 3, gen(0))[:, 0], random_shift(x, 3, gen(0)))


def test_add_noise_has_the_stated_std_and_is_seeded():
    x = torch.full((500, 40), 2.0)
    y = add_noise(x, 0.3, gen(0))
    d = (y - x).double()
    assert float(d.std()) == pytest.approx(0.3, rel=0.01)  # 20000 draws: rel. s.e. 0.5%
    assert abs(float(d.mean())) < 0.3 * 4 / math.sqrt(d.numel())
    assert torch.equal(y, add_noise(x, 0.3, gen(0)))
    assert torch.equal(add_noise(x, 0.0, gen(0)), x)


def test_random_scale_factor_is_uniform_on_the_mnist1d_range():
    c = 0.4
    y = random_scale(torch.ones(20000, 1, 40), c, gen(0)).double()
    f = y[:, 0, 0]
    assert torch.equal(y, f.view(-1, 1, 1).expand_as(y))  # one factor per sample
    assert float(f.min()) >= 1 - c / 2 and float(f.max()) <= 1 + c / 2
    assert float(f.mean()) == pytest.approx(1.0, abs=0.003)
    assert float(f.var()) == pytest.approx(c * c / 12, rel=0.03)


def test_compose_applies_left_to_right_with_one_generator():
    x = torch.randn(16, 40, generator=gen(0))
    chain = mnist1d_augmentation(max_shift=3, noise_std=0.2, scale_coeff=0.4)
    g = gen(5)
    by_hand = add_noise(random_shift(random_scale(x, 0.4, g), 3, g), 0.2, g)
    assert torch.equal(chain(x, gen(5)), by_hand)
    with pytest.raises(TypeError, match="one or more callables"):
        compose()
    with pytest.raises(TypeError, match="one or more callables"):
        compose(functools.partial(add_noise, std=0.1), 3)


def test_augmentations_check_their_arguments():
    x = torch.zeros(4, 40)
    with pytest.raises(ValueError, match="max_shift must be a non-negative int, got -1"):
        random_shift(x, -1, gen(0))
    with pytest.raises(ValueError, match="std must be a number >= 0.0, got -0.1"):
        add_noise(x, -0.1, gen(0))
    with pytest.raises(ValueError, match=r"scale_coeff must be a number in \[0.0, 2.0\), got 2"):
        random_scale(x, 2, gen(0))
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        random_shift(x, 1, 0)
    with pytest.raises(TypeError, match="floating torch.Tensor"):
        add_noise(torch.zeros(4, 40, dtype=torch.long), 0.1, gen(0))
    with pytest.raises(ValueError, match=r"\(2, 3\) dims"):
        random_shift(torch.zeros(40), 1, gen(0))


# --------------------------------------------------------------------------- digits


def test_random_translate_2d_moves_pixels_and_fills_the_rest():
    x = torch.arange(1.0, 1 + 50 * 64).reshape(50, 64)
    y = random_translate_2d(x, 2, gen(0), fill=-1.0)
    g = gen(0)
    dy = torch.randint(-2, 3, (50,), generator=g)
    dx = torch.randint(-2, 3, (50,), generator=g)
    for i in range(50):
        img = x[i].view(8, 8).numpy()
        want = np.full((8, 8), -1.0, dtype=np.float32)
        a, b = int(dy[i]), int(dx[i])
        want[max(a, 0) : 8 + min(a, 0), max(b, 0) : 8 + min(b, 0)] = img[
            max(-a, 0) : 8 + min(-a, 0), max(-b, 0) : 8 + min(-b, 0)
        ]
        np.testing.assert_array_equal(y[i].view(8, 8).numpy(), want)
    # every layout draws the same translations
    img4 = x.view(50, 1, 8, 8)
    assert torch.equal(random_translate_2d(img4, 2, gen(0), fill=-1.0).reshape(50, 64), y)
    assert torch.equal(
        random_translate_2d(x.view(50, 8, 8), 2, gen(0), fill=-1.0).reshape(50, 64), y
    )
    with pytest.raises(ValueError, match="must be square, got 63 pixels"):
        random_translate_2d(torch.zeros(2, 63), 1, gen(0))


# --------------------------------------------------------------------------- objectives


def test_consistency_mse_and_kl_equal_hand_computations():
    s = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    t = torch.tensor([[0.0, 1.0, 3.0], [2.0, -1.0, 0.5]])
    p, q = s.softmax(-1).double(), t.softmax(-1).double()
    mse = ((p - q) ** 2).sum() / 6
    kl = (q * (q.log() - p.log())).sum() / 2
    assert float(consistency_loss(s, t)) == pytest.approx(float(mse), rel=1e-6)
    assert float(consistency_loss(s, t, "kl")) == pytest.approx(float(kl), rel=1e-6)
    for kind in ("mse", "kl"):
        assert float(consistency_loss(t, t, kind)) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("kind", ["mse", "kl"])
def test_consistency_teacher_side_gets_no_gradient(kind):
    s = torch.randn(4, 5, requires_grad=True)
    t = torch.randn(4, 5, requires_grad=True)
    consistency_loss(s, t, kind).backward()
    assert t.grad is None and s.grad is not None and float(s.grad.abs().sum()) > 0


def test_byol_loss_is_two_minus_two_cosine():
    q = torch.tensor([[1.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    z = torch.tensor([[5.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
    # cosines 1, 1/sqrt(2), -1 -> losses 0, 2 - sqrt(2), 4
    assert float(byol_loss(q, z)) == pytest.approx((0 + 2 - math.sqrt(2) + 4) / 3, rel=1e-6)
    online = torch.randn(6, 8, requires_grad=True)
    target = torch.randn(6, 8, requires_grad=True)
    byol_loss(online, target).backward()
    assert target.grad is None and online.grad is not None


def test_losses_check_their_arguments():
    with pytest.raises(ValueError, match="same shape"):
        consistency_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="kind must be one of"):
        consistency_loss(torch.zeros(2, 3), torch.zeros(2, 3), "js")
    with pytest.raises(ValueError, match="online_pred must be a non-empty batch"):
        byol_loss(torch.zeros(3), torch.zeros(3))
