"""The VAE's mid-block attention, in a form a region compiled ahead of time can keep.

diffusers' `Attention.forward` reads its processor's call signature (`inspect.signature`)
to drop the keyword arguments the processor does not take. Dynamo guards that with the
identity of the processor's code object, and an identity guard cannot be saved with a
region compiled ahead of time (fastsync.accel.precompile: "ID_MATCH guard cannot be
serialized"), so the VAE's encoder and decoder could not be kept on disk as regions.
`DirectAttention` calls the processor straight away. The VAE's mid-block passes only
`temb`, which diffusers' processors take, so the filter never dropped anything there: the
same call, the same values.
"""

from __future__ import annotations

from diffusers.models.attention_processor import Attention
from torch import nn

from fastsync.accel.swap import swap_class


class DirectAttention(Attention):
    def forward(self, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        return self.processor(self, hidden_states, encoder_hidden_states=encoder_hidden_states,
                              attention_mask=attention_mask, **kwargs)


def use_in(module: nn.Module) -> int:
    """Every diffusers Attention under `module` becomes a DirectAttention (in place: the
    parameters and the processor stay); returns how many."""
    return swap_class(module, Attention, DirectAttention)
