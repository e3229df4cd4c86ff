"""Loss terms against closed forms and torch.distributions."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

from trainables.losses import (
    bernoulli_recon,
    gaussian_kernel_mmd,
    kl_to_standard_normal,
    marginal_kl_bound,
    pairwise_gaussian_kl,
    product_of_gaussians,
    squared_error,
)


def random_gaussians(n: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    mu = torch.randn(n, dim, generator=generator, dtype=torch.float64) * 2.0
    logvar = torch.randn(n, dim, generator=generator, dtype=torch.float64)
    return mu, logvar


def diagonal_normal(mu: torch.Tensor, logvar: torch.Tensor) -> Independent:
    return Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)


def test_kl_to_standard_normal_matches_torch_distributions():
    mu, logvar = random_gaussians(7, 5)
    expected = kl_divergence(
        Normal(mu, torch.exp(0.5 * logvar)), Normal(torch.zeros_like(mu), torch.ones_like(mu))
    ).sum(dim=1)
    got = kl_to_standard_normal(mu, logvar)
    assert got.shape == (7,)
    torch.testing.assert_close(got, expected)


def test_kl_to_standard_normal_is_zero_only_at_the_prior():
    zeros = torch.zeros(3, 4)
    torch.testing.assert_close(kl_to_standard_normal(zeros, zeros), torch.zeros(3))
    assert (kl_to_standard_normal(zeros + 0.1, zeros) > 0).all()


def test_product_of_gaussians_hand_computed_two_members():
    # N(0, 1) x N(5, 4): precisions 1 + 1/4 = 1.25, so var 0.8 and
    # mean (0 * 1 + 5 * 0.25) / 1.25 = 1.0.
    mu = torch.tensor([[0.0], [5.0]], dtype=torch.float64)
    logvar = torch.tensor([[0.0], [math.log(4.0)]], dtype=torch.float64)
    group_mu, group_logvar = product_of_gaussians(mu, logvar, torch.tensor([0, 0]), 1)
    torch.testing.assert_close(group_mu, torch.tensor([[1.0]], dtype=torch.float64))
    torch.testing.assert_close(group_logvar, torch.tensor([[math.log(0.8)]], dtype=torch.float64))


def test_product_of_gaussians_groups_of_different_sizes():
    mu, logvar = random_gaussians(6, 3, seed=1)
    # Interleaved members; group sizes 3, 1 and 2.
    group_ids = torch.tensor([0, 0, 2, 1, 0, 2])
    group_mu, group_logvar = product_of_gaussians(mu, logvar, group_ids, 3)
    assert group_mu.shape == group_logvar.shape == (3, 3)
    for g in range(3):
        members = group_ids == g
        precision = torch.exp(-logvar[members])
        expected_var = 1.0 / precision.sum(0)
        expected_mu = (precision * mu[members]).sum(0) * expected_var
        torch.testing.assert_close(group_mu[g], expected_mu)
        torch.testing.assert_close(group_logvar[g], torch.log(expected_var))
    # The product is sharper than any member: its variance is below each member's.
    for g in (0, 2):
        assert (group_logvar[g] < logvar[group_ids == g]).all()


def test_product_of_gaussians_single_member_groups_return_the_member():
    mu, logvar = random_gaussians(4, 3, seed=2)
    order = torch.tensor([2, 0, 3, 1])  # member i forms group order[i]
    group_mu, group_logvar = product_of_gaussians(mu, logvar, order, 4)
    torch.testing.assert_close(group_mu[order], mu)
    torch.testing.assert_close(group_logvar[order], logvar)


def test_pairwise_gaussian_kl_matches_double_loop():
    mu, logvar = random_gaussians(6, 4, seed=3)
    matrix = pairwise_gaussian_kl(mu, logvar)
    assert matrix.shape == (6, 6)
    expected = torch.empty(6, 6, dtype=torch.float64)
    for i in range(6):
        for j in range(6):
            expected[i, j] = kl_divergence(
                diagonal_normal(mu[i], logvar[i]), diagonal_normal(mu[j], logvar[j])
            )
    torch.testing.assert_close(matrix, expected)
    # KL is not symmetric; the matrix must hold KL[q_i || q_j] at [i, j], not its transpose.
    assert not torch.allclose(matrix, matrix.T)
    torch.testing.assert_close(torch.diagonal(matrix), torch.zeros(6, dtype=torch.float64))


def test_marginal_kl_bound_is_the_row_mean_of_pairwise_kls():
    mu, logvar = random_gaussians(5, 3, seed=4)
    expected = torch.stack(
        [
            torch.stack(
                [
                    kl_divergence(
                        diagonal_normal(mu[i], logvar[i]), diagonal_normal(mu[j], logvar[j])
                    )
                    for j in range(5)
                ]
            ).mean()
            for i in range(5)
        ]
    )
    torch.testing.assert_close(marginal_kl_bound(mu, logvar), expected)


def test_marginal_kl_bound_is_zero_for_identical_posteriors():
    # No extra constant (e.g. a log batch-size term): identical rows give exactly zero.
    mu = torch.randn(1, 3).repeat(8, 1)
    logvar = torch.randn(1, 3).repeat(8, 1)
    torch.testing.assert_close(marginal_kl_bound(mu, logvar), torch.zeros(8), atol=1e-5, rtol=0)


def test_mmd_is_zero_for_identical_sets():
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    assert gaussian_kernel_mmd(x, x.clone()).abs().item() < 1e-5


@pytest.mark.parametrize("dim", [1, 2, 5])
def test_mmd_of_single_points_in_closed_form(dim):
    generator = torch.Generator().manual_seed(dim)
    x = torch.randn(1, dim, generator=generator, dtype=torch.float64)
    y = torch.randn(1, dim, generator=generator, dtype=torch.float64)
    scales = (0.2, 0.5, 1.0, 2.0, 5.0)
    sq = float(((x - y) ** 2).sum())
    # k(x,x) = k(y,y) = 1 per bandwidth; bandwidths are scaled by the code dimension.
    expected = sum(2.0 - 2.0 * math.exp(-sq / (2.0 * s * s * dim)) for s in scales)
    assert gaussian_kernel_mmd(x, y).item() == pytest.approx(expected, rel=1e-9)
    custom = (0.7, 3.0)
    expected_custom = sum(2.0 - 2.0 * math.exp(-sq / (2.0 * s * s * dim)) for s in custom)
    assert gaussian_kernel_mmd(x, y, scales=custom).item() == pytest.approx(
        expected_custom, rel=1e-9
    )


def test_mmd_is_larger_between_shifted_distributions():
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(300, 2, generator=generator)
    same = torch.randn(300, 2, generator=generator)
    shifted = torch.randn(300, 2, generator=generator) + torch.tensor([1.5, 0.0])
    mmd_same = gaussian_kernel_mmd(x, same).item()
    mmd_shifted = gaussian_kernel_mmd(x, shifted).item()
    assert mmd_same >= -1e-6
    assert mmd_shifted > 10 * max(mmd_same, 1e-4)


def test_bernoulli_recon_is_the_summed_negative_log_likelihood():
    generator = torch.Generator().manual_seed(6)
    logits = torch.randn(4, 9, generator=generator, dtype=torch.float64)
    x = torch.rand(4, 9, generator=generator, dtype=torch.float64)
    p = torch.sigmoid(logits)
    expected = -(x * torch.log(p) + (1 - x) * torch.log(1 - p)).sum(dim=1)
    torch.testing.assert_close(bernoulli_recon(logits, x), expected)


def test_mmd_with_gradients_equals_the_evaluation_value():
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(40, 2, generator=generator)
    y = torch.randn(30, 2, generator=generator) + 0.5
    value = gaussian_kernel_mmd(x, y)
    x_grad = x.clone().requires_grad_(True)
    with_grad = gaussian_kernel_mmd(x_grad, y)
    torch.testing.assert_close(with_grad.detach(), value)
    with_grad.backward()
    assert x_grad.grad is not None and x_grad.grad.abs().sum() > 0


def test_squared_error_is_the_summed_squared_error_per_row():
    torch.manual_seed(0)
    x_hat, x = torch.rand(5, 12), torch.rand(5, 12)
    expected = torch.stack([((a - b) ** 2).sum() for a, b in zip(x_hat, x, strict=True)])
    torch.testing.assert_close(squared_error(x_hat, x), expected)
