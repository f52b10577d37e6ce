"""The ELLA connector: a Timestep-aware Semantic Connector (TSC).

Hu et al., "ELLA: Equip Diffusion Models with LLM for Enhanced Semantic Alignment",
arXiv:2403.05135 (2024), Sec. 3.2. A perceiver resampler turns the frozen LLM's token features
into a fixed number of latent tokens for the frozen UNet's cross-attention; every layer norm is
modulated by the diffusion timestep (AdaLN), so the conditioning can change along the denoising
trajectory. Parameter names match the released `ella-sd1.5-tsc-t5xl.safetensors` key for key.

Reading order: AdaLayerNorm -> SquaredReLUMLP -> PerceiverBlock -> PerceiverResampler -> ELLA.
Shapes: B batch, L text tokens, D LLM width, N latents, W connector width, O output width.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .checkpoint import CheckpointError

logger = logging.getLogger(__name__)

# Connector variants of the paper's ablation (Table 6): the same code, a different norm or none.
CONNECTOR_TYPES = ("tsc", "adaln-zero", "resampler", "mlp")


class AdaLayerNorm(nn.Module):
    """LayerNorm whose shift and scale (and, for AdaLN-Zero, a residual gate) come from the
    timestep embedding. With `time_dim=None` it is a plain affine LayerNorm (no timestep)."""

    def __init__(self, width: int, time_dim: int | None, num_chunks: int = 2):
        super().__init__()
        self.num_chunks = num_chunks
        if time_dim is None:
            self.norm = nn.LayerNorm(width, eps=1e-6)
            return
        self.linear = nn.Linear(time_dim, num_chunks * width)
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        # Zero-init so the time modulation starts as the identity (and an AdaLN-Zero gate as 0).
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, S, W), temb: (B, 1, T) -> (normalised x, gate (B, 1, W) or None)."""
        if temb is None:
            return self.norm(x), None
        chunks = self.linear(F.silu(temb)).chunk(self.num_chunks, dim=-1)  # each (B, 1, W)
        shift, scale = chunks[0], chunks[1]
        gate = chunks[2] if self.num_chunks == 3 else None
        return self.norm(x) * (1 + scale) + shift, gate


class SquaredReLUMLP(nn.Module):
    """c_proj(relu(c_fc(x))^2), the Primer-style MLP of the released connector."""

    def __init__(self, width: int):
        super().__init__()
        self.c_fc = nn.Linear(width, 4 * width)
        self.c_proj = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.relu(self.c_fc(x)).square())


class PerceiverBlock(nn.Module):
    """Latents attend to [latents; text] (keys and values), then an MLP; both residual."""

    def __init__(self, width: int, heads: int, time_dim: int | None, num_chunks: int = 2):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = AdaLayerNorm(width, time_dim, num_chunks)  # latents before attention
        self.ln_2 = AdaLayerNorm(width, time_dim, num_chunks)  # text features before attention
        self.ln_ff = AdaLayerNorm(width, time_dim, num_chunks)  # latents before the MLP
        self.mlp = SquaredReLUMLP(width)

    def forward(
        self,
        latents: torch.Tensor,  # (B, N, W)
        text: torch.Tensor,  # (B, L, W)
        temb: torch.Tensor | None,  # (B, 1, T)
        key_padding_mask: torch.Tensor | None,  # (B, N + L), True = ignore
    ) -> torch.Tensor:
        n, gate_attn = self.ln_1(latents, temb)
        t, _ = self.ln_2(text, temb)
        kv = torch.cat([n, t], dim=1)  # (B, N + L, W)
        attn = self.attn(n, kv, kv, key_padding_mask=key_padding_mask, need_weights=False)[0]
        latents = latents + (attn if gate_attn is None else gate_attn * attn)
        f, gate_ff = self.ln_ff(latents, temb)
        ff = self.mlp(f)
        return latents + (ff if gate_ff is None else gate_ff * ff)


class PerceiverResampler(nn.Module):
    """N learned latents read the projected text through `layers` perceiver blocks."""

    def __init__(
        self,
        width: int,
        layers: int,
        heads: int,
        num_latents: int,
        input_dim: int,
        output_dim: int,
        time_dim: int | None,
        num_chunks: int = 2,
    ):
        super().__init__()
        # Initialisation (a checkpoint overwrites it; the forward is the released one). The release
        # drew latents at std W^-0.5 and left `time_aware_linear` at PyTorch's default init, which
        # adds one shared timestep vector about as large as each latent: all N latents start nearly
        # equal and, training ShapesWorld's TSC, stayed so (32 output tokens with a relative spread
        # of 0.04-0.12 where the resampler had 0.64; scripts/shapes_place_loss.py), so the tokens
        # could not carry separate objects or places. Unit-variance latents and a zero-initialised
        # `time_aware_linear` start the TSC as a plain resampler with distinct latents, and the
        # timestep term grows from zero (like the AdaLN linears). Both resampler variants share
        # the latent init, for a fair ablation.
        self.latents = nn.Parameter(torch.randn(num_latents, width))
        if time_dim is not None:
            self.time_aware_linear = nn.Linear(time_dim, width)
            nn.init.zeros_(self.time_aware_linear.weight)
            nn.init.zeros_(self.time_aware_linear.bias)
        self.proj_in = nn.Linear(input_dim, width)
        self.perceiver_blocks = nn.ModuleList(
            PerceiverBlock(width, heads, time_dim, num_chunks) for _ in range(layers)
        )
        if output_dim != width:
            self.proj_out = nn.Sequential(nn.Linear(width, output_dim), nn.LayerNorm(output_dim))

    def forward(
        self, x: torch.Tensor, temb: torch.Tensor | None, text_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """x: (B, L, D), temb: (B, 1, T) or None, text_mask: (B, L) with 1 = real token."""
        latents = self.latents.unsqueeze(0).expand(x.shape[0], -1, -1)  # (B, N, W)
        if temb is not None:
            latents = latents + self.time_aware_linear(F.silu(temb))  # (B, N, W)
        h = self.proj_in(x)  # (B, L, W), computed once: blocks read it, never update it
        key_padding_mask = None
        if text_mask is not None and text_mask.is_floating_point():
            # Weighted tokens (prompt weighting's "attention" mode): a token of weight w gets
            # log(w) added to its attention logits, as if it were written w times; 0 = padding.
            latent_keys = torch.zeros(latents.shape[:2], dtype=h.dtype, device=x.device)
            key_padding_mask = torch.cat([latent_keys, text_mask.to(h.dtype).log()], dim=1)  # (B, N + L)
        elif text_mask is not None:
            # The latents' own keys are never masked; padded text positions always are.
            latent_keys = torch.zeros(latents.shape[:2], dtype=torch.bool, device=x.device)
            key_padding_mask = torch.cat([latent_keys, ~text_mask.bool()], dim=1)  # (B, N + L)
        for block in self.perceiver_blocks:
            latents = block(latents, h, temb, key_padding_mask)
        if hasattr(self, "proj_out"):
            latents = self.proj_out(latents)  # (B, N, O)
        return latents


class MLPConnector(nn.Module):
    """The paper's weakest baseline: a per-token MLP from LLM width to cross-attention width.
    Its output keeps the text length, so padded tokens must be masked in the UNet instead."""

    def __init__(self, width: int, input_dim: int, output_dim: int):
        super().__init__()
        self.proj_in = nn.Linear(input_dim, width)
        self.proj_out = nn.Linear(width, output_dim)

    def forward(self, x: torch.Tensor, temb: None, text_mask: torch.Tensor | None) -> torch.Tensor:
        return self.proj_out(F.gelu(self.proj_in(x)))  # (B, L, O)


class AttentionPool(nn.Module):
    """SDXL's pooled text embedding from the connector's output tokens: one learned query attends
    to them, then a projection (zero-initialised, so a fresh pool gives SDXL's unconditional
    zeros and training grows it from there). Not in the released SD1.5 connector."""

    def __init__(self, width: int, out_dim: int, heads: int):
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, 1, width) * width**-0.5)
        self.norm = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.proj = nn.Linear(width, out_dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (B, N, O) -> (B, P)."""
        kv = self.norm(tokens)
        pooled = self.attn(self.query.expand(tokens.shape[0], -1, -1), kv, kv, need_weights=False)[0]  # (B, 1, O)
        return self.proj(pooled[:, 0])


class ELLA(ModelMixin, ConfigMixin):
    """Timestep-aware Semantic Connector between a frozen LLM and a frozen diffusion UNet.

    `ELLA.from_preset("sd15-t5xl")` is the architecture of the released SD1.5 checkpoint;
    `ELLA.from_single_file(path)` loads that checkpoint. Call it at every denoising step:
    `ella(text_hidden_states, timestep, text_attention_mask) -> encoder_hidden_states`.
    """

    @register_to_config
    def __init__(
        self,
        time_channel: int = 320,  # sinusoidal timestep features
        time_embed_dim: int = 768,  # timestep embedding width
        width: int = 768,  # connector width
        layers: int = 6,  # perceiver blocks
        heads: int = 8,  # attention heads (not recoverable from weight shapes)
        num_latents: int = 64,  # output tokens
        input_dim: int = 2048,  # LLM hidden size (FLAN-T5-XL: 2048)
        output_dim: int | None = None,  # UNet cross-attention width; None = width
        connector_type: str = "tsc",  # one of CONNECTOR_TYPES
        pooled_dim: int | None = None,  # SDXL: also a pooled text embedding of this width (`pool`)
    ):
        super().__init__()
        check_config_values(dict(time_channel=time_channel, time_embed_dim=time_embed_dim, width=width, layers=layers,
                                 heads=heads, num_latents=num_latents, input_dim=input_dim, output_dim=output_dim,
                                 connector_type=connector_type, pooled_dim=pooled_dim))
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        output_dim = output_dim or width
        uses_time = connector_type in ("tsc", "adaln-zero")
        if uses_time:
            self.time_proj = Timesteps(time_channel, flip_sin_to_cos=True, downscale_freq_shift=0)
            self.time_embedding = TimestepEmbedding(time_channel, time_embed_dim)
        if connector_type == "mlp":
            self.connector = MLPConnector(width, input_dim, output_dim)
        else:
            self.connector = PerceiverResampler(
                width,
                layers,
                heads,
                num_latents,
                input_dim,
                output_dim,
                time_dim=time_embed_dim if uses_time else None,
                num_chunks=3 if connector_type == "adaln-zero" else 2,
            )
        if pooled_dim is not None:
            self.pool = AttentionPool(output_dim, pooled_dim, heads)

    def pooled(self, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """SDXL's pooled text embedding (B, pooled_dim) from this connector's output (B, N, O)."""
        if not hasattr(self, "pool"):
            raise ValueError("this connector has no pool (pooled_dim is None): SDXL's pooled embedding must come from"
                             " a CLIP encoder")
        return self.pool(encoder_hidden_states.to(self.dtype))

    @property
    def uses_timestep(self) -> bool:
        return hasattr(self, "time_embedding")

    @property
    def keeps_text_length(self) -> bool:
        """True when the output has one token per text token (MLP): the UNet must then mask
        padded tokens itself (pass the text mask as `encoder_attention_mask`)."""
        return self.config.connector_type == "mlp"

    def embed_timestep(self, timestep: torch.Tensor | float | int, batch_size: int, dtype: torch.dtype,
                       device: torch.device | None = None) -> torch.Tensor:
        """Raw scheduler timestep (scalar or (B,)) -> (B, 1, T). Sinusoids in fp32, then `dtype`.
        `device`: the text's (the weights may wait elsewhere under offloading hooks)."""
        t = torch.as_tensor(timestep, device=device or self.device)
        t = t.reshape(-1).expand(batch_size) if t.numel() == 1 else t.reshape(-1)
        if t.shape[0] != batch_size:
            raise ValueError(f"got {t.shape[0]} timesteps for a batch of {batch_size}")
        features = self.time_proj(t).to(dtype)  # (B, time_channel)
        return self.time_embedding(features).unsqueeze(1)  # (B, 1, T)

    def forward(
        self,
        text_hidden_states: torch.Tensor,
        timestep: torch.Tensor | float | int,
        text_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """text_hidden_states: (B, L, D); timestep: scalar or (B,); text_attention_mask: (B, L),
        1 = real token, 0 = padding (None attends every position, as the reference does); a
        floating-point mask may hold other positive values, which weight those tokens in the
        resampler's attention (prompt weighting).
        Returns (B, num_latents, output_dim), or (B, L, output_dim) for the MLP connector."""
        x = text_hidden_states
        if x.ndim != 3 or x.shape[-1] != self.config.input_dim:
            raise ValueError(
                f"text_hidden_states must be (batch, tokens, {self.config.input_dim}), got {tuple(x.shape)}"
            )
        if text_attention_mask is not None and text_attention_mask.shape != x.shape[:2]:
            raise ValueError(f"text_attention_mask must be (batch, tokens) = {tuple(x.shape[:2])}, "
                             f"got {tuple(text_attention_mask.shape)}")
        t = torch.as_tensor(timestep, device=x.device)
        if not bool(torch.isfinite(x).all() & (t >= 0).all()):  # one check (one device sync) for both
            problem = ("text_hidden_states hold NaN or inf values" if not torch.isfinite(x).all()
                       else f"timesteps must be >= 0 (the scheduler's 0..999), got {t.min().item()}")
            raise ValueError(problem)
        temb = self.embed_timestep(t, x.shape[0], x.dtype, x.device) if self.uses_timestep else None
        return self.connector(x, temb, text_attention_mask)

    def forward_timesteps(
        self,
        text_hidden_states: torch.Tensor,
        timesteps: torch.Tensor,
        text_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The outputs for every timestep of a schedule, in one batched call: (S, B, N, O) for
        timesteps (S,). Repeated timesteps (second-order schedulers) are computed once, and a
        connector without timestep runs once for all of them. Same values as S separate calls;
        one large call instead of S small ones, at S times one call's activation memory."""
        unique, index = torch.unique(timesteps, return_inverse=True)
        if not self.uses_timestep:
            unique, index = unique[:1], torch.zeros_like(index)
        steps, batch = unique.shape[0], text_hidden_states.shape[0]
        mask = None if text_attention_mask is None else text_attention_mask.repeat(steps, 1)
        out = self(text_hidden_states.repeat(steps, 1, 1), unique.repeat_interleave(batch), mask)
        return out.unflatten(0, (steps, batch))[index]

    # ---- presets and the official single-file checkpoint -------------------------------------

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "ELLA":
        """A named architecture with fresh weights (see `PRESETS`)."""
        if name not in PRESETS:
            raise ValueError(f"unknown ELLA preset {name!r}; known: {', '.join(sorted(PRESETS))}")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, filename: str | None = None, **kwargs) -> "ELLA":
        """A `save_pretrained` folder, local or on the hub, as diffusers loads models; or a hub
        repository that holds single connector files: `ELLA.from_pretrained("QQGYLab/ELLA")` loads
        the official `ella-sd1.5-tsc-t5xl.safetensors` (`filename` picks another file). Hub files
        go through huggingface_hub's cache, so a second run is offline. A path that is neither a
        local folder nor on the hub is refused in one line that names it."""
        from ..hub import resolve_connector
        from ..published import SINGLE_FILE_REPOS

        name = os.fspath(pretrained_model_name_or_path)
        kind, path = resolve_connector(name, filename, kwargs.pop("subfolder", None), kwargs.pop("revision", None))
        heads = kwargs.pop("heads", None)
        if kind == "file":
            if heads is None and filename is None and name in SINGLE_FILE_REPOS:  # a release: its heads are known
                heads = RELEASE_HEADS
            return cls.from_single_file(path, heads=heads, torch_dtype=kwargs.get("torch_dtype"))
        check_folder_config(path)
        return super().from_pretrained(path, **kwargs)

    @classmethod
    def from_single_file(
        cls, path: str, heads: int | None = None, torch_dtype: torch.dtype | None = None
    ) -> "ELLA":
        """Load a single safetensors file: the official `ella-sd1.5-tsc-t5xl.safetensors`, or one
        written by `save_single_file`. `path` is local, or a file on the hub as diffusers'
        `from_single_file` takes it (`QQGYLab/ELLA/ella-sd1.5-tsc-t5xl.safetensors`, or its
        https://huggingface.co/... address), downloaded once into huggingface_hub's cache.

        A file written by `save_single_file` carries its config (safetensors metadata). The
        official file carries none: every hyper-parameter but the number of heads is read from
        the weight shapes, and `heads` is the caller's or, when not given, the release's 8, with
        a warning that names it. Missing, extra, mis-shaped, non-float or non-finite weights are
        refused with a message that names them.
        """
        from ..hub import local_single_file
        from .checkpoint import CONFIG_METADATA_KEY, config_from_state_dict, load_state_dict_file, read_config_metadata

        path = local_single_file(os.fspath(path))
        state_dict = load_state_dict_file(path)
        config = read_config_metadata(path)
        if config is None:
            config = config_from_state_dict(state_dict, heads=heads or RELEASE_HEADS)
            if heads is None and config["connector_type"] != "mlp":
                logger.warning("%s carries no config: assuming heads=%d (the official release's; the weights cannot"
                               " tell). Pass heads=... if it was trained with another number", path, RELEASE_HEADS)
        elif heads is not None and heads != config.get("heads"):
            raise CheckpointError(f"{path} was saved with heads={config.get('heads')}, not {heads}")
        try:
            model = cls(**config)
        except (TypeError, ValueError) as err:  # a config of other fields or types
            raise CheckpointError(f"{path}: its {CONFIG_METADATA_KEY} metadata is not an ELLA config: {err}") from None
        model.load_strict(state_dict, source=str(path))
        if torch_dtype is not None:  # nn.Module's `to`: diffusers' warns of fp32-only modules, which ELLA has none of
            torch.nn.Module.to(model, torch_dtype)
        return model

    def save_pretrained(self, save_directory, is_main_process: bool = True, save_function=None,
                        safe_serialization: bool = True, variant: str | None = None, max_shard_size="10GB",
                        push_to_hub: bool = False, **kwargs) -> None:
        """diffusers' `save_pretrained`, the weights' file mode following the umask as other outputs
        do. Its arguments are named, not `*args`: a pipeline's `save_pretrained` reads this signature
        to decide what to pass (the variant, serialization, shard size)."""
        from ..fileio import follow_umask

        super().save_pretrained(save_directory, is_main_process=is_main_process, save_function=save_function,
                                safe_serialization=safe_serialization, variant=variant, max_shard_size=max_shard_size,
                                push_to_hub=push_to_hub, **kwargs)
        follow_umask(os.fspath(save_directory))

    def save_single_file(self, path: str) -> None:
        """One safetensors file with the config in its metadata (so `from_single_file` restores
        exactly this model, heads included), written atomically."""
        from .checkpoint import save_state_dict_file

        config = {k: v for k, v in self.config.items() if not k.startswith("_")}
        save_state_dict_file({k: v.contiguous() for k, v in self.state_dict().items()}, path, config)

    def load_strict(self, state_dict: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """load_state_dict that names every missing, unexpected, mis-shaped, non-float or
        non-finite weight in its error (a cast from int8 or a NaN would pass silently)."""
        from .checkpoint import check_state_dict

        check_state_dict(self.state_dict(), state_dict, source)
        own_dtype = next(self.parameters()).dtype
        self.load_state_dict({k: v.to(own_dtype) for k, v in state_dict.items()}, strict=True)


RELEASE_HEADS = 8  # every released connector's; the one hyper-parameter the weight shapes cannot give

PRESETS: dict[str, dict] = {
    # The released SD1.5 connector (66.8M parameters) on FLAN-T5-XL features.
    "sd15-t5xl": dict(time_channel=320, time_embed_dim=768, width=768, layers=6, heads=8, num_latents=64, input_dim=2048),
    # The same connector projecting to SDXL's 2048-wide cross-attention (no weights released).
    "sdxl-t5xl": dict(time_channel=320, time_embed_dim=768, width=768, layers=6, heads=8, num_latents=64, input_dim=2048, output_dim=2048),
    # ShapesWorld: all-MiniLM-L6-v2 features (384) into a 32x32 pixel-space UNet (cross-attn 128).
    "shapes-minilm": dict(time_channel=64, time_embed_dim=128, width=128, layers=4, heads=4, num_latents=32, input_dim=384, output_dim=128),
    # For tests: a few thousand parameters.
    "tiny": dict(time_channel=8, time_embed_dim=16, width=16, layers=2, heads=2, num_latents=4, input_dim=32, output_dim=16),
}


REQUIRED_CONFIG = ("width", "layers", "heads", "num_latents", "input_dim", "connector_type")
MLP_CONFIG = ("width", "input_dim", "connector_type")


def check_folder_config(folder: str) -> None:
    """A `save_pretrained` folder's config.json holds what `save_pretrained` writes (missing fields
    would silently take the SD1.5 defaults, and the weights then fail with a shape error naming
    nothing), each of the right type; a CheckpointError naming the file otherwise."""
    from ..fileio import read_json_object
    from .checkpoint import CheckpointError

    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        return  # diffusers names the missing file itself
    try:
        config = read_json_object(path, "connector config")
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    needed = MLP_CONFIG if config.get("connector_type") == "mlp" else REQUIRED_CONFIG  # an MLP has no latents
    missing = [k for k in needed if k not in config]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}: not an ELLA connector's config (save_pretrained"
                              " writes every field)")
    try:
        check_config_values({k: v for k, v in config.items() if not k.startswith("_")})
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from None


OPTIONAL_CONFIG = ("output_dim", "pooled_dim")


def check_config_values(fields: dict) -> None:
    """ELLA's config values, each of its type (a config file's `"heads": "four"` is refused here,
    naming the field, not deep in the model's construction); ValueError naming the first wrong one."""
    import inspect

    unknown = sorted(set(fields) - set(inspect.signature(ELLA.__init__).parameters))
    if unknown:
        raise ValueError(f"ELLA config: unknown fields {', '.join(unknown)}")
    for name, value in fields.items():
        if name == "connector_type":
            if value not in CONNECTOR_TYPES:
                raise ValueError(f"connector_type must be one of {CONNECTOR_TYPES}, got {value!r}")
            continue
        if value is None and name in OPTIONAL_CONFIG:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "layers" else 1):
            raise ValueError(f"ELLA config: {name} must be a {'non-negative' if name == 'layers' else 'positive'} whole"
                             f" number{' or null' if name in OPTIONAL_CONFIG else ''}, got {value!r}")
