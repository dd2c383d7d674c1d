"""Texture encoder (RTM keys/values) and the similarity-aware texture encoder (prompt tokens)."""

import torch

from patchscaler.models.texture import SimilarityAwareTextureEncoder, TextureEncoder, TextureEncoderConfig


def test_keys_are_unit_norm_and_shaped():
    torch.manual_seed(0)
    enc = TextureEncoder().eval()
    x = torch.randn(5, 48, 16, 16)
    with torch.no_grad():
        k = enc(x)
        v = enc.value_tokens(x)
    assert k.shape == (5, 64)
    torch.testing.assert_close(k.norm(dim=1), torch.ones(5))
    cfg = enc.config
    assert v.shape == (5, cfg.value_tokens, cfg.value_dim) == (5, 4, 128)


def test_keys_do_not_depend_on_batch():
    torch.manual_seed(0)
    enc = TextureEncoder(TextureEncoderConfig(widths=(16, 16, 32), key_dim=8)).eval()
    x = torch.randn(6, 48, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(enc(x)[2:3], enc(x[2:3]), atol=1e-5, rtol=1e-5)


def test_config_roundtrip():
    cfg = TextureEncoderConfig(widths=(8, 16, 24), key_dim=16, value_grid=1)
    assert TextureEncoderConfig.from_dict(cfg.to_dict()) == cfg


def test_similarity_encoder_shapes_and_score_dependence():
    torch.manual_seed(0)
    sate = SimilarityAwareTextureEncoder(value_dim=32, dim=48, top_k=4, n_tok=4, heads=4)
    values = torch.randn(3, 4, 4, 32)
    scores = torch.rand(3, 4)
    out = sate(values, scores)
    assert out.shape == (3, 16, 48)
    assert sate.num_tokens == 16
    # Make the similarity pathway non-trivial, then a different score must change the prompt.
    torch.nn.init.normal_(sate.sim_mlp[2].weight, std=0.5)
    a, b = sate(values, scores), sate(values, scores.flip(1))
    assert not torch.allclose(a, b)


def test_similarity_encoder_without_references_and_with_fewer():
    sate = SimilarityAwareTextureEncoder(value_dim=32, dim=48, top_k=4, n_tok=2, heads=2)
    assert sate(None, None, batch=5).shape == (5, 8, 48)
    assert sate(torch.randn(2, 3, 2, 32), torch.rand(2, 3)).shape == (2, 6, 48)


def test_similarity_encoder_gradients_flow():
    sate = SimilarityAwareTextureEncoder(value_dim=16, dim=32, top_k=2, n_tok=1, heads=2)
    out = sate(torch.randn(2, 2, 1, 16), torch.rand(2, 2))
    out.square().mean().backward()
    assert all(p.grad is not None for p in sate.parameters() if p is not sate.empty_value)


def test_dropped_rows_get_the_no_reference_prompt():
    torch.manual_seed(0)
    sate = SimilarityAwareTextureEncoder(value_dim=16, dim=32, top_k=2, n_tok=2, heads=2)
    values, scores = torch.randn(3, 2, 2, 16), torch.rand(3, 2)
    out = sate(values, scores, drop=torch.tensor([False, True, False]))
    torch.testing.assert_close(out[1], sate(None, None, batch=1)[0])
    torch.testing.assert_close(out[[0, 2]], sate(values[[0, 2]], scores[[0, 2]]))


def test_encode_gives_key_and_values_of_one_pass():
    torch.manual_seed(0)
    enc = TextureEncoder(TextureEncoderConfig(widths=(8, 16, 16), key_dim=8)).eval()
    x = torch.randn(3, 48, 16, 16)
    with torch.no_grad():
        k, v = enc.encode(x)
        torch.testing.assert_close(k, enc(x))
        torch.testing.assert_close(v, enc.value_tokens(x))


def test_cpu_inference_chunks_equal_the_autograd_path():
    # Without autograd on the CPU, `encode` runs chunks of 64 patches channels-last;
    # 150 patches = two full chunks and a partial one.
    torch.manual_seed(0)
    enc = TextureEncoder(TextureEncoderConfig(widths=(8, 16, 16), key_dim=8)).eval()
    x = torch.randn(150, 48, 16, 16)
    key_ref, val_ref = enc.encode(x)
    with torch.no_grad():
        key, val = enc.encode(x)
    torch.testing.assert_close(key, key_ref.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(val, val_ref.detach(), atol=1e-5, rtol=1e-5)
    assert key.shape == (150, 8) and val.shape == (150, 4, 16) and val.is_contiguous()
