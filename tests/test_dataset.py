"""Training pair pool: alignment with MATLAB bicubic, determinism, caching, augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from patchscaler.data.dataset import PairPool, RandomCropPairs, augment, predownscale_factor
from patchscaler.data.resize import bicubic_downscale


@pytest.fixture()
def folder(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "a").mkdir()
    for name, (h, w) in {"a/one.png": (64, 80), "two.png": (70, 66), "a/big.png": (130, 90), "tiny.png": (20, 20)}.items():
        # smooth random images so bicubic round-trips are meaningful
        img = rng.random((h // 8 + 1, w // 8 + 1, 3))
        img = np.asarray(Image.fromarray((img * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC))
        Image.fromarray(img).save(tmp_path / name)
    return tmp_path


def test_pool_skips_small_and_aligns(folder):
    pool = PairPool(folder, scale=4, min_hr_side=40, max_side=100)
    assert "tiny.png" not in pool.names and len(pool) == 3
    for e in pool.entries:
        assert e.hr.dtype == torch.uint8 and e.hr.shape[1] % 4 == 0 and e.hr.shape[2] % 4 == 0
        assert e.lr.shape[1:] == (e.hr.shape[1] // 4, e.hr.shape[2] // 4)
        lr = bicubic_downscale(e.hr.float() / 255, 4)
        torch.testing.assert_close(lr, e.lr.float() / 255, atol=0.5 / 255, rtol=0)
    # big.png (130 px > max_side 100) was pre-downscaled by 2.
    big = pool.entries[pool.names.index("a/big.png")]
    assert big.hr.shape[1:] == (64, 44)


def test_sample_deterministic_with_seed(folder):
    pool = PairPool(folder, scale=4, min_hr_side=48)
    a = pool.sample(5, 8, torch.Generator().manual_seed(3))
    b = pool.sample(5, 8, torch.Generator().manual_seed(3))
    c = pool.sample(5, 8, torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    assert a[0].shape == (5, 3, 8, 8) and a[1].shape == (5, 3, 32, 32)
    assert a[0].dtype == torch.float32 and 0 <= a[0].min() and a[0].max() <= 1
    ds = RandomCropPairs(pool, lr_patch=8, length=4, seed=1)
    assert torch.equal(ds[2][1], RandomCropPairs(pool, lr_patch=8, length=4, seed=1)[2][1])


def test_cropped_pairs_are_bicubic_pairs(folder):
    pool = PairPool(folder, scale=4, min_hr_side=48)
    lr, hr = pool.sample(6, 12, torch.Generator().manual_seed(0))
    # Away from the crop border the LR is the bicubic downscale of the HR crop
    # (flips/rotations commute with MATLAB bicubic up to uint8 rounding).
    diff = (bicubic_downscale(hr, 4) - lr)[..., 3:-3, 3:-3].abs()
    assert diff.max() <= 1.01 / 255


def test_cache_round_trip(folder, tmp_path_factory):
    cache = tmp_path_factory.mktemp("c") / "pool.pt"
    p1 = PairPool(folder, scale=4, min_hr_side=48, cache=cache)
    assert cache.is_file()
    p2 = PairPool(folder, scale=4, min_hr_side=48, cache=cache)
    assert p1.names == p2.names
    assert all(torch.equal(a.hr, b.hr) and torch.equal(a.lr, b.lr) for a, b in zip(p1.entries, p2.entries))


def test_augment_all_dihedral():
    x = torch.arange(6.0).view(1, 2, 3)
    outs = {(tuple(augment(x, x, k)[0].flatten().tolist()), tuple(augment(x, x, k)[0].shape)) for k in range(8)}
    assert len(outs) == 8


def test_predownscale_factor():
    assert predownscale_factor(1024, 1280) == 1
    assert predownscale_factor(1080, 1920) == 2
    assert predownscale_factor(3391, 6028) == 4


def test_degraded_batches_depend_on_seed_and_index_only(folder):
    from patchscaler.data.dataset import DegradedBatches

    pool = PairPool(folder, scale=4, min_hr_side=48)
    stream = DegradedBatches(pool, lr_patch=8, batch=3, seed=2)
    first = [b for _, b in zip(range(3), stream)]
    resumed = next(iter(DegradedBatches(pool, lr_patch=8, batch=3, seed=2, start=2)))
    assert torch.equal(first[2][0], resumed[0]) and torch.equal(first[2][1], resumed[1])
    lr, hr = first[0]
    assert lr.shape == (3, 3, 8, 8) and hr.shape == (3, 3, 32, 32)
    assert not torch.equal(first[0][1], first[1][1])
    # The HR crops are the pool's crops; the LR is not their clean bicubic downscale.
    assert (bicubic_downscale(hr, 4) - lr).abs().max() > 2 / 255
    with pytest.raises(ValueError, match="multiple of the scale"):
        pool.sample_hr(2, 30, torch.Generator())


def test_degraded_batches_from_several_workers_come_in_order(folder):
    """Three DataLoader workers deliver batches start, start+1, ... (no repeats): what one process makes."""
    from patchscaler.data.dataset import DegradedBatches

    pool = PairPool(folder, scale=4, min_hr_side=48)
    stream = DegradedBatches(pool, lr_patch=8, batch=2, seed=1, start=4)
    loader = iter(torch.utils.data.DataLoader(stream, batch_size=None, num_workers=3))
    for k in range(4, 10):
        lr, hr = next(loader)
        want_lr, want_hr = stream.batch_at(k)
        assert torch.equal(lr, want_lr) and torch.equal(hr, want_hr), k
