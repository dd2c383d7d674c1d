"""The variance-preserving schedule and DDIM timestep sequences (patchscaler.diffusion.schedule)."""

import math

import pytest
import torch

from patchscaler.diffusion.schedule import alpha_bar, ddim_step_pairs, ddim_timesteps, make_alphas_cumprod


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_alphas_cumprod_is_a_decreasing_table_in_unit_interval(kind):
    ac = make_alphas_cumprod(kind, 1000, dtype=torch.float64)
    assert ac.shape == (1000,)
    assert bool((ac > 0).all()) and bool((ac < 1).all())
    assert bool((ac[1:] < ac[:-1]).all())
    assert ac[0] > 0.999 and ac[-1] < 1e-3


def test_cosine_schedule_values():
    # ᾱ(t) = f(t+1)/f(0), f(t) = cos²((t/T + s)/(1 + s)·π/2): the betas telescope.
    ac = make_alphas_cumprod("cosine", 1000, dtype=torch.float64)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 150, 350, 600):
        assert ac[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)


def test_linear_schedule_matches_ddpm():
    ac = make_alphas_cumprod("linear", 1000, dtype=torch.float64)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    torch.testing.assert_close(ac, torch.cumprod(1 - betas, 0))


def test_unknown_schedule_raises():
    with pytest.raises(ValueError):
        make_alphas_cumprod("quadratic")


@pytest.mark.parametrize("t_start,n", [(150, 1), (150, 2), (350, 4), (600, 12), (600, 15), (1, 2), (7, 8), (999, 1000), (10, 3), (3, 2)])
def test_ddim_timesteps(t_start, n):
    seq = ddim_timesteps(t_start, n)
    assert len(seq) == n
    assert seq[0] == t_start
    assert all(a > b for a, b in zip(seq, seq[1:]))
    assert seq[-1] >= 0
    pairs = ddim_step_pairs(t_start, n)
    assert [t for t, _ in pairs] == seq
    assert [tn for _, tn in pairs] == seq[1:] + [-1]


def test_ddim_timesteps_are_evenly_spaced():
    assert ddim_timesteps(600, 12) == list(range(600, 0, -50))
    assert ddim_timesteps(350, 4) == [350, 263, 175, 88]


@pytest.mark.parametrize("t_start,n", [(5, 0), (5, 7), (-1, 1)])
def test_ddim_timesteps_rejects_impossible(t_start, n):
    with pytest.raises(ValueError):
        ddim_timesteps(t_start, n)


def test_alpha_bar_of_minus_one_is_one():
    ac = make_alphas_cumprod()
    t = torch.tensor([-1, 0, 599])
    torch.testing.assert_close(alpha_bar(ac, t), torch.stack([torch.tensor(1.0), ac[0], ac[599]]))
