"""The ragged group sampler's use of the ops equals running every patch alone.

Patches get their own schedules (start timestep, number of DDIM steps, the
iteration they join at) and some sit idle in some iterations; each global
iteration gathers the patches that have a step to take, in a shuffled order and in
small chunks, evaluates a stand-in denoiser once per chunk and applies
`group_denoise_step`. The result must equal, patch by patch, the same trajectory run
alone with the reference step (`reference_group_denoise_step` on a one-patch state).
"""

from __future__ import annotations

import pytest
import torch

from helpers import DEVICES, cosine_alphas_cumprod
from patchscaler.ops.group_denoise import (
    group_denoise_step,
    reference_group_denoise_step,
    reference_shortcut_noise,
    shortcut_noise,
)

# (t_start, num_steps, first iteration): simple / medium / hard-like groups, the
# extremes t=999 and one step per timestep, late joiners.
SCHEDULES = [(150, 1, 0), (150, 2, 3), (350, 4, 0), (600, 10, 1), (600, 13, 0),
             (349, 3, 5), (50, 5, 2), (999, 7, 0), (7, 8, 4), (0, 1, 6)]
INNER = (4, 5, 5)


def step_pairs(t_start: int, n: int) -> list[tuple[int, int]]:
    """Evenly spaced DDIM timesteps from t_start, the last step going to -1 (x̂0)."""
    seq = [(2 * t_start * (n - k) + n) // (2 * n) for k in range(n)]
    if n == t_start + 1:  # one step per timestep
        seq = list(range(t_start, -1, -1))
    assert all(a > b for a, b in zip(seq, seq[1:])) and seq[-1] >= 0
    return list(zip(seq, seq[1:] + [-1]))


def denoiser(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """A per-patch stand-in for the DiT: depends on the patch's state, timestep and condition only."""
    w = torch.cos(t.float() / 50).view(-1, 1, 1, 1)
    return 0.5 * torch.tanh(x) + 0.2 * w * cond


def idle(p: int, j: int) -> bool:
    """Some patches skip some iterations (memory-budget chunking leaves them for later)."""
    return p % 3 == 1 and j % 2 == 1


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("clip", [None, 3.0])
def test_ragged_sampler_equals_per_patch_reference(device, prediction, clip):
    g = torch.Generator().manual_seed(0)
    P = len(SCHEDULES)
    y0 = torch.randn((P,) + INNER, generator=g).to(device)
    noise = torch.randn((P,) + INNER, generator=g).to(device)
    cond = torch.randn((P,) + INNER, generator=g).to(device)
    ac = cosine_alphas_cumprod().to(device)
    pairs = [step_pairs(t0, n) for t0, n, _ in SCHEDULES]

    # Ragged: one state tensor, every iteration one batched step of the patches due.
    t_start = torch.tensor([s[0] for s in SCHEDULES], device=device)
    x_all = shortcut_noise(y0, noise, t_start, ac)
    done = [0] * P
    x0_final = torch.full_like(x_all, float("nan"))
    j = 0
    while any(done[p] < len(pairs[p]) for p in range(P)):
        due = [p for p in range(P) if done[p] < len(pairs[p]) and SCHEDULES[p][2] <= j and not idle(p, j)]
        due = [due[i] for i in torch.randperm(len(due), generator=g).tolist()]
        for chunk in (due[i : i + 3] for i in range(0, len(due), 3)):
            idx = torch.tensor(chunk, device=device, dtype=torch.long)
            t = torch.tensor([pairs[p][done[p]][0] for p in chunk], device=device)
            t_next = torch.tensor([pairs[p][done[p]][1] for p in chunk], device=device)
            out = denoiser(x_all[idx], t, cond[idx])
            x0 = group_denoise_step(x_all, out, idx, t, t_next, ac, prediction, clip, return_x0=True)
            for row, p in enumerate(chunk):
                done[p] += 1
                if done[p] == len(pairs[p]):
                    x0_final[p] = x0[row]
        j += 1
        assert j < 100

    # Alone: each patch's own trajectory with the reference step.
    for p in range(P):
        x = reference_shortcut_noise(y0[p : p + 1], noise[p : p + 1], t_start[p : p + 1], ac)
        one = torch.zeros(1, dtype=torch.long, device=device)
        for t, t_next in pairs[p]:
            t_ = torch.tensor([t], device=device)
            out = denoiser(x, t_, cond[p : p + 1])
            reference_group_denoise_step(x, out, one, t_, torch.tensor([t_next], device=device), ac,
                                         prediction, clip)
        torch.testing.assert_close(x_all[p : p + 1], x, atol=1e-4, rtol=1e-4, msg=f"patch {p}")
    # The last step of every patch lands on (and returns) x̂0.
    torch.testing.assert_close(x0_final, x_all)
