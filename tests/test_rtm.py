"""Reference Texture Memory: retrieval against brute force, own-image exclusion, save/load."""

import pytest
import torch
import torch.nn.functional as F

from patchscaler.data.dataset import image_id
from patchscaler.models.rtm import ReferenceTextureMemory
from patchscaler.models.texture import TextureEncoder, TextureEncoderConfig


def _memory(n=37, d=8, n_images=5, seed=0, encoder=None):
    g = torch.Generator().manual_seed(seed)
    keys = F.normalize(torch.randn(n, d, generator=g), dim=1)
    values = torch.randn(n, 2, 6, generator=g)
    ids = torch.randint(0, n_images, (n,), generator=g) * 1000 + 7  # arbitrary, non-contiguous ids
    return ReferenceTextureMemory(keys, values, ids, encoder)


def _brute_force(q, keys, k, banned=None):
    s = q @ keys.T
    if banned is not None:
        s = s.masked_fill(banned, float("-inf"))
    return s.topk(k, dim=1)


@pytest.mark.parametrize("k", [1, 4, 37])
def test_retrieve_matches_brute_force(k):
    mem = _memory()
    q = F.normalize(torch.randn(11, 8, generator=torch.Generator().manual_seed(1)), dim=1)
    scores, idx = mem.retrieve(q, k)
    ref_scores, _ = _brute_force(q, mem.keys, k)
    assert scores.shape == idx.shape == (11, k) and idx.dtype == torch.long
    torch.testing.assert_close(scores, ref_scores, atol=1e-5, rtol=1e-5)
    # Indices are checked through the scores they point at (ties may order differently).
    torch.testing.assert_close((q[:, None, :] * mem.keys[idx]).sum(-1), scores, atol=1e-5, rtol=1e-5)


def test_exclusion_never_returns_own_image_and_is_exact():
    mem = _memory()
    g = torch.Generator().manual_seed(2)
    q = F.normalize(torch.randn(9, 8, generator=g), dim=1)
    excl = mem.image_ids[torch.randint(0, len(mem), (9,), generator=g)]
    excl[0] = 123456  # an id the memory does not hold: nothing to exclude
    k = 4
    scores, idx = mem.retrieve(q, k, exclude_image_ids=excl)
    assert not bool((mem.image_ids[idx] == excl[:, None]).any())
    banned = mem.image_ids[None, :] == excl[:, None]
    ref_scores, _ = _brute_force(q, mem.keys, k, banned)
    torch.testing.assert_close(scores, ref_scores, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close((q[:, None, :] * mem.keys[idx]).sum(-1), scores, atol=1e-5, rtol=1e-5)
    # Scores stay sorted after the filtering.
    assert bool((scores[:, 1:] <= scores[:, :-1]).all())


def test_exclusion_with_too_few_entries_left_raises():
    keys = F.normalize(torch.randn(4, 8), dim=1)
    mem = ReferenceTextureMemory(keys, torch.zeros(4, 1, 2), torch.tensor([1, 1, 1, 2]))
    with pytest.raises(ValueError):
        mem.retrieve(keys[:1], 2, exclude_image_ids=torch.tensor([1]))
    _, idx = mem.retrieve(keys[:1], 1, exclude_image_ids=torch.tensor([1]))
    assert idx.item() == 3


def test_lookup_and_query_with_encoder():
    torch.manual_seed(0)
    enc = TextureEncoder(TextureEncoderConfig(widths=(8, 8, 16), key_dim=8, value_grid=1)).eval()
    patches = torch.randn(6, 48, 16, 16)
    with torch.no_grad():
        keys, values = enc(patches), enc.value_tokens(patches)
    mem = ReferenceTextureMemory(keys, values, torch.arange(6), enc)
    vals, scores = mem.query(patches[:2], k=3)
    assert vals.shape == (2, 3, 1, 16)
    # Each patch finds itself first (cosine similarity 1) unless its own image is excluded.
    torch.testing.assert_close(scores[:, 0], torch.ones(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(vals[:, 0], values[:2])
    _, idx = mem.retrieve(keys[:2], 3, exclude_image_ids=torch.tensor([0, 1]))
    assert 0 not in idx[0].tolist() and 1 not in idx[1].tolist()


def test_save_load_roundtrip(tmp_path):
    enc = TextureEncoder(TextureEncoderConfig(widths=(8, 8, 16), key_dim=8, value_grid=1)).eval()
    mem = _memory(encoder=enc)
    path = tmp_path / "rtm.safetensors"
    mem.save(path, metadata={"entries": len(mem)})
    back = ReferenceTextureMemory.load(path)
    assert back.keys.dtype == torch.float32 and len(back) == len(mem)
    torch.testing.assert_close(back.keys, mem.keys, atol=1e-3, rtol=0)  # stored as fp16
    torch.testing.assert_close(back.values, mem.values, atol=2e-3, rtol=1e-3)
    assert torch.equal(back.image_ids, mem.image_ids)
    assert back.metadata["entries"] == str(len(mem))
    x = torch.randn(2, 48, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(back.encoder(x), enc(x), atol=2e-3, rtol=0)


def test_image_id_is_stable_and_separator_independent():
    assert image_id("bsds/100007.jpg") == image_id("bsds/100007.jpg")
    assert image_id("bsds/100007.jpg") != image_id("bsds/100039.jpg")
    assert isinstance(image_id("a/b.png"), int) and 0 <= image_id("a/b.png") < 2**32
