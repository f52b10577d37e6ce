"""The frozen UNet's attention under a CPU bf16 autocast: projections in bf16, the attention itself
in fp32.

Why: on a CPU without AMX, PyTorch's fused attention (`scaled_dot_product_attention`) is slower in
bf16, the dtype autocast hands it, than in fp32 at the ShapesWorld shapes (heads of 16-32 channels
over 96-256 tokens, forward and backward), while the convolutions and matmuls around it gain from
bf16. Against the fp32 step, the recipe's step under bf16 autocast ran 1.16x faster, and 1.57x with
only the attention kept in fp32 (benchmarks/results/train_step_profile_cpu.json). A GPU's fused bf16
attention is fast: this is for the CPU only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0


class Float32AttnProcessor:
    """A diffusers attention processor: the layer's projections in the ambient dtype (bf16 under
    autocast), softmax(QK^T / sqrt(d)) V in fp32 with autocast off: what diffusers' plain
    processors (`AttnProcessor2_0`, `AttnProcessor`) compute. Any other wrapped `processor`
    (IP-Adapter's, a user's), and layers outside the transformer blocks' plain case (a group or
    spatial norm, q/k norms, 4-D inputs, extra arguments), run the original wholly in fp32."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        device = hidden_states.device.type
        plain = (isinstance(self.processor, (AttnProcessor2_0, AttnProcessor)) and hidden_states.ndim == 3
                 and attn.spatial_norm is None and attn.group_norm is None and attn.norm_cross is None
                 and attn.norm_q is None and attn.norm_k is None and not args and not kwargs)
        if not plain:
            with torch.autocast(device, enabled=False):
                return self.processor(attn, _fp32(hidden_states), _fp32(encoder_hidden_states), _fp32(attention_mask),
                                      _fp32(temb), *args, **kwargs)
        batch = hidden_states.shape[0]
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states

        def heads(x):  # (B, L, heads * d) -> (B, heads, L, d) in fp32
            return x.unflatten(-1, (attn.heads, -1)).transpose(1, 2).float()

        q, k, v = heads(attn.to_q(hidden_states)), heads(attn.to_k(context)), heads(attn.to_v(context))
        if attention_mask is not None:  # diffusers' additive bias (B, 1, L) -> (B, heads, 1, L)
            attention_mask = attn.prepare_attention_mask(attention_mask, k.shape[2], batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1]).float()
        with torch.autocast(device, enabled=False):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, scale=attn.scale)
        out = attn.to_out[1](attn.to_out[0](out.transpose(1, 2).flatten(2)))  # (B, L, C): projection, dropout
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


def _fp32(x):
    return x.float() if torch.is_tensor(x) and x.is_floating_point() else x


def attention_in_float32(unet: torch.nn.Module) -> None:
    """Wraps every attention processor of `unet` (once) in `Float32AttnProcessor`."""
    unet.set_attn_processor({name: p if isinstance(p, Float32AttnProcessor) else Float32AttnProcessor(p)
                             for name, p in unet.attn_processors.items()})
