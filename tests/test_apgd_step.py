"""The APGD update: the reference against the published arithmetic, written out literally."""

from __future__ import annotations

import pytest
import torch

from fastpgd.apgd_step import apgd_step_, reference_apgd_step


def _published(x_adv, x_prev, grad, x0, step_size, eps, a, norm):
    """The published APGD update (Croce & Hein 2020, their code's order of operations)."""
    s = step_size.view(-1, 1, 1, 1)
    grad2 = x_adv - x_prev
    if norm == "linf":
        z = x_adv + s * torch.sign(grad)
        z = torch.clamp(torch.min(torch.max(z, x0 - eps), x0 + eps), 0.0, 1.0)
        u = x_adv + (z - x_adv) * a + grad2 * (1 - a)
        return torch.clamp(torch.min(torch.max(u, x0 - eps), x0 + eps), 0.0, 1.0)

    def norm_of(t):
        return (t**2).sum(dim=(1, 2, 3), keepdim=True).sqrt()

    ones = torch.ones(x0.shape, dtype=x0.dtype)
    z = x_adv + s * grad / (norm_of(grad) + 1e-12)
    z = torch.clamp(
        x0 + (z - x0) / (norm_of(z - x0) + 1e-12) * torch.min(eps * ones, norm_of(z - x0)), 0, 1
    )
    u = x_adv + (z - x_adv) * a + grad2 * (1 - a)
    return torch.clamp(
        x0 + (u - x0) / (norm_of(u - x0) + 1e-12) * torch.min(eps * ones, norm_of(u - x0) + 1e-12),
        0.0,
        1.0,
    )


@pytest.mark.parametrize("norm,eps", [("linf", 0.3), ("l2", 1.0), ("l2", 0.05)])
@pytest.mark.parametrize("momentum", [1.0, 0.75])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reference_is_the_published_update_bit_for_bit(norm, eps, momentum, dtype):
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 5, 5, generator=g, dtype=dtype)
    x_adv = (x0 + 0.2 * torch.randn(x0.shape, generator=g, dtype=dtype)).clamp(0, 1)
    x_prev = (x0 + 0.2 * torch.randn(x0.shape, generator=g, dtype=dtype)).clamp(0, 1)
    grad = torch.randn(x0.shape, generator=g, dtype=dtype)
    grad[0, 0, 0, :2] = 0.0  # sign(0) = 0
    step = torch.rand(4, generator=g, dtype=dtype) * 0.5
    expected = _published(x_adv, x_prev, grad, x0, step, eps, momentum, norm)
    got = reference_apgd_step(
        x_adv, x_prev, grad, x0, step_size=step, eps=eps, momentum=momentum, norm=norm
    )
    assert torch.equal(got, expected)
    a, p = x_adv.clone(), x_prev.clone()
    assert apgd_step_(a, p, grad, x0, step_size=step, eps=eps, momentum=momentum, norm=norm) is a
    assert torch.equal(a, expected) and torch.equal(p, x_adv)
