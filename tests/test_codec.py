"""Pixel-unshuffle latent codec: shape, range and exact round trip."""

import pytest
import torch

from patchscaler.inference.codec import PixelUnshuffleCodec


@pytest.mark.parametrize("scale", [2, 4])
def test_round_trip(scale):
    codec = PixelUnshuffleCodec(scale)
    hr = torch.rand(2, 3, 8 * scale, 5 * scale)
    z = codec.encode(hr)
    assert z.shape == (2, codec.latent_channels, 8, 5)
    assert codec.latent_channels == 3 * scale * scale
    assert z.min() >= -1 and z.max() <= 1
    torch.testing.assert_close(codec.decode(z), hr, atol=1e-6, rtol=0)


def test_layout_is_space_to_depth():
    codec = PixelUnshuffleCodec(4)
    hr = torch.rand(1, 3, 8, 8)
    z = codec.encode(hr)
    # Channel c*16 + i*4 + j at (y, x) is HR pixel (4y+i, 4x+j) of colour c.
    assert torch.allclose(z[0, 1 * 16 + 2 * 4 + 3, 1, 0], 2 * hr[0, 1, 4 + 2, 3] - 1)


def test_rejects_non_multiple():
    with pytest.raises(ValueError):
        PixelUnshuffleCodec(4).encode(torch.rand(1, 3, 10, 8))
