"""accel.vae_attention: the VAE's attention without the signature filter gives the same values,
and the VAE's encoder and decoder can then be compiled ahead of time and kept on disk."""

import copy
import io

import pytest
import torch

from fastsync.accel import precompile, vae_attention
from fastsync.components import random_vae

torch.set_num_threads(2)


def test_direct_attention_gives_diffusers_values():
    vae = random_vae("tiny", seed=2)
    direct = copy.deepcopy(vae)
    assert vae_attention.use_in(direct) == 2  # the encoder's and the decoder's mid-block
    assert vae_attention.use_in(direct) == 0
    g = torch.Generator().manual_seed(0)
    pixels, latents = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, torch.randn(2, 4, 4, 4, generator=g)
    with torch.no_grad():
        assert torch.equal(direct.encode(pixels).latent_dist.mean, vae.encode(pixels).latent_dist.mean)
        assert torch.equal(direct.decode(latents).sample, vae.decode(latents).sample)


@pytest.mark.skipif(not precompile.supported(), reason="this torch cannot compile ahead of time")
def test_the_decoder_compiles_ahead_and_loads_back():
    vae = random_vae("tiny", seed=2)
    vae_attention.use_in(vae)
    latents = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = vae.decoder(latents)
        fn = precompile.compile_ahead(type(vae.decoder).forward, (vae.decoder, latents), {})
        loaded = torch.compiler.load_compiled_function(io.BytesIO(precompile.serialize(fn)))
        assert (loaded(vae.decoder, latents) - expected).abs().max() < 1e-4
