"""PGS: grouping by thresholds and the ragged scheduler, driven by analytic stand-in models.

The reference for a patch's trajectory is written out here in plain torch (shortcut
start, then DDIM η=0 along `ddim_step_pairs`), one patch at a time; the sampler must
match it for every patch whatever the batching.
"""

import pytest
import torch

from patchscaler.diffusion.schedule import ddim_step_pairs, make_alphas_cumprod
from patchscaler.sampling.pgs import (
    PRESET_MAX_SHARE,
    PGSConfig,
    PGSSampler,
    UniformSampler,
    assign_groups,
    derive_seeds,
    patch_noise,
    patch_qmap,
)

AC = make_alphas_cumprod("cosine", 1000, dtype=torch.float64)
SHAPE = (48, 4, 4)  # small patches keep the test fast; the sampler is shape-agnostic


def target_x0(y0):
    """The clean patch an oracle believes in: a fixed analytic function of y0, within (−1, 1)."""
    return torch.tanh(1.5 * y0 + 0.3 * torch.roll(y0, 1, dims=1))


class OracleDenoiser:
    """Knows x0 = target_x0(y0) and returns the exact ε (or v) for the given y_t and t."""

    schedule, alphas_cumprod = "cosine", AC

    def __init__(self, prediction="eps"):
        self.prediction = prediction
        self.calls = []

    def condition(self, y0):
        return {"x0": target_x0(y0.float())}

    def __call__(self, y_t, t, cond):
        self.calls.append(int(t.numel()))
        a = AC[t].float().view(-1, 1, 1, 1)
        x0 = cond["x0"]
        eps = (y_t - a.sqrt() * x0) / (1 - a).sqrt()
        return eps if self.prediction == "eps" else a.sqrt() * eps - (1 - a).sqrt() * x0


class WobblyDenoiser:
    """A non-oracle smooth model: its output depends on y_t, t and y0, so the result depends
    on the noise and on every (t, t_next) a patch visits."""

    schedule, alphas_cumprod = "cosine", AC

    def __init__(self, prediction="eps"):
        self.prediction = prediction
        self.calls = []

    def condition(self, y0):
        return {"y0": y0.float(), "w": torch.sin(3 * y0.float())}

    def __call__(self, y_t, t, cond):
        self.calls.append(int(t.numel()))
        s = (t.float() / 1000).view(-1, 1, 1, 1)
        return 0.6 * torch.tanh(y_t) + s * cond["w"] - 0.2 * cond["y0"]


def reference_trajectory(model, y0, noise, t_start, n_steps, clip=1.0):
    """One patch, plain torch: shortcut noising then n DDIM steps. y0, noise: [C,h,w]."""
    a = AC[t_start].float()
    x = a.sqrt() * y0 + (1 - a).sqrt() * noise
    cond = model.condition(y0[None])
    for t, tn in ddim_step_pairs(t_start, n_steps):
        m = model(x[None], torch.tensor([t]), cond)[0]
        a = AC[t].float()
        a_next = torch.tensor(1.0) if tn < 0 else AC[tn].float()
        if model.prediction == "eps":
            x0, e = (x - (1 - a).sqrt() * m) / a.sqrt(), m
        else:
            x0, e = a.sqrt() * x - (1 - a).sqrt() * m, (1 - a).sqrt() * x + a.sqrt() * m
        if clip is not None:
            x0 = x0.clamp(-clip, clip)
        x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * e
    return x


def _patches(P, seed=0):
    g = torch.Generator().manual_seed(seed)
    y0 = torch.randn(P, *SHAPE, generator=g) * 0.5
    qmap = torch.rand(P, generator=g)
    seeds = torch.randint(0, 2**62, (P,), generator=g)
    return y0, qmap, seeds


CONFIG = PGSConfig(gammas=(0.7, 0.35), groups=((150, 2), (350, 4), (600, 7)))


def test_assign_groups_boundaries():
    q = torch.tensor([1.0, 0.71, 0.7, 0.5, 0.35, 0.2, 0.0])
    assert assign_groups(q, (0.7, 0.35)).tolist() == [0, 0, 1, 1, 2, 2, 2]


def test_config_roundtrip_and_validation(tmp_path):
    cfg = PGSConfig(gammas=(0.8, 0.3), groups=((100, 1), (300, 3), (500, 9)), calibration={"speedup": 2.0})
    cfg.save(tmp_path / "pgs.json")
    back = PGSConfig.load(tmp_path / "pgs.json")
    assert back == cfg and back.calibration == {"speedup": 2.0}
    with pytest.raises(ValueError):
        PGSConfig(gammas=(0.3, 0.8))
    with pytest.raises(ValueError):
        PGSConfig(groups=((100, 1), (300, 3)))
    with pytest.raises(ValueError):
        PGSConfig(groups=((100, 1), (300, 3), (1200, 5)))


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_oracle_recovers_x0(prediction):
    y0, qmap, seeds = _patches(23)
    out = PGSSampler(OracleDenoiser(prediction), CONFIG)(y0, qmap, seeds, max_batch_patches=5)
    torch.testing.assert_close(out.x0, target_x0(y0), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_ragged_batches_equal_each_patch_alone(prediction):
    y0, qmap, seeds = _patches(19, seed=3)
    model = WobblyDenoiser(prediction)
    out = PGSSampler(model, CONFIG)(y0, qmap, seeds, max_batch_patches=7)
    noise = patch_noise(SHAPE, seeds)
    for p in range(19):
        g = int(out.group[p])
        t0, n = CONFIG.groups[g]
        ref = reference_trajectory(model, y0[p], noise[p], t0, n)
        torch.testing.assert_close(out.x0[p], ref, atol=1e-5, rtol=1e-5)


def test_work_is_sum_of_group_sizes_times_steps():
    y0, qmap, seeds = _patches(31, seed=4)
    model = WobblyDenoiser()
    out = PGSSampler(model, CONFIG)(y0, qmap, seeds, max_batch_patches=8)
    sizes = torch.bincount(out.group, minlength=3)
    assert sizes.min() > 0  # the fixture exercises all three groups
    expected = sum(int(sizes[g]) * CONFIG.groups[g][1] for g in range(3))
    assert out.evaluations == expected == sum(model.calls) == int(out.steps.sum())
    assert max(model.calls) <= 8
    assert out.iterations == max(n for _, n in CONFIG.groups)
    # One denoiser call per chunk of each iteration's active set.
    active = [int((out.steps > j).sum()) for j in range(out.iterations)]
    assert out.dit_calls == len(model.calls) == sum(-(-a // 8) for a in active)


def test_uniform_sampler_runs_every_patch_from_t3():
    y0, qmap, seeds = _patches(9, seed=5)
    model = WobblyDenoiser()
    out = UniformSampler(model, CONFIG)(y0, qmap, seeds)
    assert out.group.tolist() == [2] * 9 and out.steps.tolist() == [7] * 9
    assert out.evaluations == 9 * 7
    noise = patch_noise(SHAPE, seeds)
    torch.testing.assert_close(out.x0[4], reference_trajectory(model, y0[4], noise[4], 600, 7), atol=1e-5, rtol=1e-5)


def test_deterministic_across_chunk_sizes_and_order():
    y0, qmap, seeds = _patches(17, seed=6)
    sampler = PGSSampler(WobblyDenoiser("v"), CONFIG)
    base = sampler(y0, qmap, seeds, max_batch_patches=17)
    for chunk in (1, 3, 16, 100):
        out = sampler(y0, qmap, seeds, max_batch_patches=chunk)
        torch.testing.assert_close(out.x0, base.x0, atol=1e-6, rtol=0)
    perm = torch.randperm(17, generator=torch.Generator().manual_seed(0))
    out = sampler(y0[perm], qmap[perm], seeds[perm], max_batch_patches=4)
    torch.testing.assert_close(out.x0, base.x0[perm], atol=1e-6, rtol=0)
    assert torch.equal(out.group, base.group[perm])


def test_generators_instead_of_seeds_and_unpacking():
    y0, qmap, seeds = _patches(5, seed=7)
    sampler = PGSSampler(WobblyDenoiser(), CONFIG)
    a = sampler(y0, qmap, seeds)
    b = sampler(y0, qmap, generators=[torch.Generator().manual_seed(int(s)) for s in seeds])
    x0, group, steps = b
    torch.testing.assert_close(x0, a.x0, atol=0, rtol=0)
    assert group.shape == steps.shape == (5,)


def test_derive_seeds_is_a_function_of_keys():
    keys = torch.tensor([[0, 0, 0], [0, 0, 12], [1, 0, 0], [0, 0, 0]])
    s = derive_seeds(7, keys)
    assert s[0] == s[3] and len(set(s[:3].tolist())) == 3
    assert not torch.equal(derive_seeds(8, keys), s)
    assert bool((s >= 0).all())


def test_empty_input():
    out = PGSSampler(WobblyDenoiser(), CONFIG)(torch.zeros(0, *SHAPE), torch.zeros(0))
    assert out.x0.shape == (0, *SHAPE) and out.evaluations == 0


def test_patch_qmap_is_mean_confidence_over_each_patch():
    g = torch.Generator().manual_seed(8)
    conf = torch.rand(2, 1, 20, 23, generator=g)
    origins = torch.tensor([[0, 0, 0], [1, 4, 7], [1, 4, 7], [0, 4, 0]])
    q = patch_qmap(torch.ops.patchscaler.gather_patches(conf, origins, 16, 16))
    ref = torch.stack([conf[b, 0, y : y + 16, x : x + 16].mean() for b, y, x in origins.tolist()])
    torch.testing.assert_close(q, ref)


def test_pgs_with_the_patch_dit_and_texture_memory():
    """End to end with the real modules (tiny sizes): shapes, work count, chunking."""
    import torch.nn.functional as F

    from patchscaler.models.dit import PatchDiT, PatchDiTConfig
    from patchscaler.models.rtm import ReferenceTextureMemory
    from patchscaler.models.texture import TextureEncoder, TextureEncoderConfig
    from patchscaler.sampling.denoiser import DiTDenoiser

    torch.manual_seed(0)
    enc = TextureEncoder(TextureEncoderConfig(widths=(8, 8, 16), key_dim=8, value_grid=1)).eval()
    mem_patches = torch.randn(10, 48, 16, 16)
    with torch.no_grad():
        keys, values = enc.encode(mem_patches)
    rtm = ReferenceTextureMemory(keys, values, torch.arange(10), enc)
    dit = PatchDiT(PatchDiTConfig(width=32, depth=1, heads=2, value_dim=16, value_tokens=1, top_k=2)).eval()
    with torch.no_grad():
        for p in dit.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    den = DiTDenoiser(dit, rtm)
    y0 = F.hardtanh(torch.randn(6, 48, 16, 16) * 0.3)
    qmap = torch.tensor([0.9, 0.8, 0.5, 0.45, 0.2, 0.1])
    cfg = PGSConfig(gammas=(0.7, 0.35), groups=((150, 1), (350, 2), (600, 3)))
    sampler = PGSSampler(den, cfg)
    a = sampler(y0, qmap, seeds=torch.arange(6), max_batch_patches=6)
    b = sampler(y0, qmap, seeds=torch.arange(6), max_batch_patches=2)
    assert a.x0.shape == y0.shape and a.x0.dtype == torch.float32
    assert a.group.tolist() == [0, 0, 1, 1, 2, 2] and a.evaluations == 2 * 1 + 2 * 2 + 2 * 3
    assert a.x0.abs().max() <= 1.0
    torch.testing.assert_close(a.x0, b.x0, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        PGSSampler(den, PGSConfig(prediction="eps"))


def test_calibration_chooses_within_the_evaluation_budget():
    from patchscaler.train.calibrate_pgs import choose_groups

    simple = [(100, 1, 30.0), (150, 2, 30.5)]
    medium = [(250, 2, 20.0), (350, 4, 21.0)]
    hard = [(450, 6, 15.0), (600, 12, 16.0)]
    sizes = [50, 38, 12]
    # Unbounded budget: the best mean score, i.e. the best of every group.
    assert choose_groups([simple, medium, hard], sizes, budget=1.0, tolerance=0.0) == ((150, 2), (350, 4), (600, 12))
    # Budget 0.3: (150,2),(350,4),(600,12) costs (100+152+144)/1200 = 0.33 > 0.3. Affordable:
    # (100,1),(350,4) at 0.29 (mean score 24.90) and (150,2),(250,2) at 0.27 (24.77).
    chosen = choose_groups([simple, medium, hard], sizes, budget=0.3, tolerance=0.0)
    (t1, n1), (t2, n2), (t3, n3) = chosen
    assert (sizes[0] * n1 + sizes[1] * n2 + sizes[2] * n3) / (sum(sizes) * n3) <= 0.3
    assert t1 < t2 < t3 and n1 <= n2 <= n3
    assert chosen == ((100, 1), (350, 4), (600, 12))
    # A tolerance that covers both picks the cheaper one.
    assert choose_groups([simple, medium, hard], sizes, budget=0.3, tolerance=0.2) == ((150, 2), (250, 2), (600, 12))
    # Nothing affordable.
    assert choose_groups([simple, medium, hard], sizes, budget=0.05, tolerance=0.0) is None


def test_quality_presets_move_the_thresholds_and_caps_only():
    cfg = PGSConfig(
        gammas=(0.5, 0.2), groups=((100, 1), (300, 3), (600, 12)),
        presets={"fast": {"gammas": [0.3, 0.1]}, "detail": {"gammas": [0.8, 0.4]}},
    )
    balanced = cfg.preset("balanced")
    assert balanced.gammas == cfg.gammas and balanced.groups == cfg.groups
    assert balanced.max_share == PRESET_MAX_SHARE["balanced"] and cfg.max_share == (1.0, 1.0)
    fast, detail = cfg.preset("fast"), cfg.preset("detail")
    assert fast.gammas == (0.3, 0.1) and detail.gammas == (0.8, 0.4)
    assert fast.groups == detail.groups == cfg.groups
    q = torch.linspace(0, 1, 101)
    work = {name: sum(c.groups[g][1] for g in assign_groups(q, c.gammas).tolist()) for name, c in
            (("fast", fast), ("balanced", cfg), ("detail", detail))}
    assert work["fast"] < work["balanced"] < work["detail"]
    with pytest.raises(ValueError, match="quality must be one of"):
        cfg.preset("best")
    with pytest.raises(ValueError, match="no 'fast' preset"):
        PGSConfig().preset("fast")


def test_shipped_presets_order_the_work():
    """The shipped config carries both presets, ordered fast < balanced < detail in work."""
    cfg = PGSConfig.load(model="bicubic")  # the set that ships a calibrated PGS config
    shares = [cfg.presets["fast"]["evaluations_vs_uniform"], cfg.calibration["results"]["pgs"]["evaluations"]
              / cfg.calibration["results"]["uniform"]["evaluations"], cfg.presets["detail"]["evaluations_vs_uniform"]]
    assert shares == sorted(shares) and shares[1] <= 1 / 3


def test_the_schedule_is_the_denoisers_and_a_mismatch_is_an_error():
    den = OracleDenoiser()
    assert PGSSampler(den, CONFIG).alphas_cumprod is AC  # taken, not rebuilt
    with pytest.raises(ValueError, match="'linear' schedule of 1000 steps, the denoiser was trained with a 'cosine'"):
        PGSSampler(den, PGSConfig(schedule="linear"))
    with pytest.raises(ValueError, match="schedule of 2000 steps"):
        PGSSampler(den, PGSConfig(num_train_timesteps=2000))


def test_caps_keep_the_lowest_confidence_patches_in_the_harder_group():
    """Every patch below γ2: the cap keeps the lowest-confidence 25 % hard, the next 50 %
    medium, the rest simple; with the thresholds' groups inside the caps nothing moves."""
    q = torch.linspace(0, 0.3, 40)[torch.randperm(40, generator=torch.Generator().manual_seed(0))]
    group = assign_groups(q, CONFIG.gammas, (0.25, 0.5))
    assert torch.bincount(group, minlength=3).tolist() == [10, 20, 10]
    assert group[torch.argsort(q)].tolist() == [2] * 10 + [1] * 20 + [0] * 10
    assert assign_groups(q, CONFIG.gammas).eq(2).all()  # uncapped: all hard
    mixed = torch.linspace(0, 1, 41)
    assert torch.equal(assign_groups(mixed, CONFIG.gammas, (0.4, 0.4)), assign_groups(mixed, CONFIG.gammas))


def test_shipped_presets_change_the_cost_when_every_patch_is_below_the_thresholds():
    """Issue 21 item 5: on an image with low confidence everywhere (RealSRSet's frog) every
    preset used to put every patch in the hard group, at the same cost."""
    cfg = PGSConfig.load(model="bicubic")  # the set that ships a calibrated PGS config
    q = torch.zeros(400)
    hard, work = {}, {}
    for name in ("fast", "balanced", "detail"):
        sampler = PGSSampler(OracleDenoiser(), cfg.preset(name))
        group = sampler.assign_groups(q)
        hard[name], work[name] = int(group.eq(2).sum()), sampler.planned_evaluations(group)
    assert hard["fast"] < hard["balanced"] < hard["detail"] < 400
    assert work["fast"] < work["balanced"] < work["detail"] < 400 * cfg.groups[2][1]
