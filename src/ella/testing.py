"""Tiny random components built locally (no download), in the spirit of diffusers'
`get_dummy_components()`: for the test suite, smoke runs (`model: tiny` in a training config) and
benchmarks. Their tokenizers are word-level (`ella.word_tokenizer`), built from a vocabulary on the spot.
"""

from __future__ import annotations

import torch

from .word_tokenizer import word_tokenizer

TINY_WORDS = (
    "a an the of and to in on at with is are red green blue yellow white black gray large small big"
    " circle square triangle cat dog car tree house left right above below top bottom middle two three"
    " four one photo picture image background sky street"
).split()


def tiny_t5(d_model: int = 32, vocab_size: int | None = None, seed: int = 0):
    """A 2-layer T5 encoder with random weights and its word-level tokenizer."""
    from transformers import T5Config, T5EncoderModel

    tokenizer = word_tokenizer(TINY_WORDS)
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=vocab_size or len(tokenizer), d_model=d_model, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    return T5EncoderModel(config).eval(), tokenizer


def tiny_clip(hidden_size: int = 16, max_length: int = 16, seed: int = 0, with_projection: bool = False):
    """A 2-layer CLIP-style text encoder (random weights) with a short word-level tokenizer;
    `with_projection` gives SDXL's second encoder kind (pooled `text_embeds`)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = word_tokenizer(TINY_WORDS, model_max_length=max_length)
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=max_length,
        pad_token_id=0, bos_token_id=1, eos_token_id=1, projection_dim=hidden_size,
    )
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config).eval(), tokenizer


def tiny_unet(cross_attention_dim: int = 16, in_channels: int = 4, sample_size: int = 8, seed: int = 0,
              pooled_dim: int | None = None, out_channels: int | None = None):
    """A 2-level UNet; with `pooled_dim`, SDXL-style (pooled text + size/crop ids as added conditions);
    `in_channels=9, out_channels=4` is an inpainting UNet."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    sdxl = {} if pooled_dim is None else dict(
        addition_embed_type="text_time", addition_time_embed_dim=4, projection_class_embeddings_input_dim=pooled_dim + 6 * 4)
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=out_channels or in_channels,
        block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim, attention_head_dim=2, **sdxl,
    ).eval()


def tiny_vae(seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    ).eval()


def tiny_components(pixel_space: bool = False, with_clip: bool = False, seed: int = 0) -> dict:
    """Everything ELLAStableDiffusionPipeline takes, tiny and random, built locally."""
    from diffusers import DDIMScheduler

    from .models import ELLA

    text_encoder, tokenizer = tiny_t5(seed=seed)
    components = dict(
        unet=tiny_unet(in_channels=3 if pixel_space else 4, sample_size=16 if pixel_space else 8, seed=seed),
        scheduler=DDIMScheduler(num_train_timesteps=1000),
        vae=None if pixel_space else tiny_vae(seed),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        ella=ELLA.from_preset("tiny"),
    )
    if with_clip:
        components["clip_text_encoder"], components["clip_tokenizer"] = tiny_clip(seed=seed)
    return components


def tiny_sdxl_components(with_clip: bool = True, seed: int = 0) -> dict:
    """Everything ELLAStableDiffusionXLPipeline takes: two CLIP encoders of width 16 (tokens 32
    wide side by side, pooled 16) and a connector projecting to 32."""
    from .models import ELLA

    components = tiny_components(seed=seed)
    components["unet"] = tiny_unet(cross_attention_dim=32, pooled_dim=16, seed=seed)
    components["ella"] = ELLA.from_preset("tiny", output_dim=32)
    if with_clip:
        components["clip_text_encoder"], components["clip_tokenizer"] = tiny_clip(seed=seed)
        components["clip_text_encoder_2"], components["clip_tokenizer_2"] = tiny_clip(seed=seed + 1, with_projection=True)
    return components


def tiny_image_encoder(embed_dim: int = 8, image_size: int = 32, seed: int = 0):
    """(CLIPVisionModelWithProjection, CLIPImageProcessor), tiny and random: IP-Adapters' image side."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                              image_size=image_size, patch_size=8, projection_dim=embed_dim)
    size = {"shortest_edge": image_size}
    crop = {"height": image_size, "width": image_size}
    return CLIPVisionModelWithProjection(config).eval(), CLIPImageProcessor(size=size, crop_size=crop)


def tiny_ip_adapter(unet, image_embed_dim: int = 8, seed: int = 0) -> dict:
    """A plain IP-Adapter's state dict in the released layout, random: `image_proj` maps the image
    embedding to 4 tokens of the UNet's cross-attention width; `ip_adapter` holds one key and one
    value projection per cross-attention layer, numbered as diffusers reads them (1, 3, 5, ...)."""
    g = torch.Generator().manual_seed(seed)
    cross = unet.config.cross_attention_dim
    image_proj = {"proj.weight": torch.randn(4 * cross, image_embed_dim, generator=g) * 0.2,
                  "proj.bias": torch.zeros(4 * cross), "norm.weight": torch.ones(cross), "norm.bias": torch.zeros(cross)}
    ip_layers = {}
    cross_layers = [name for name in unet.attn_processors if name.endswith("attn2.processor")]
    for i, name in enumerate(cross_layers):
        block = unet.get_submodule(name.rsplit(".processor", 1)[0])
        for proj in ("to_k_ip", "to_v_ip"):
            ip_layers[f"{2 * i + 1}.{proj}.weight"] = torch.randn(block.to_q.out_features, cross, generator=g) * 0.3
    return {"image_proj": image_proj, "ip_adapter": ip_layers}


def tiny_hub_cache(cache_dir: str) -> dict[str, str]:
    """A Hugging Face hub cache (`HF_HUB_CACHE`) holding tiny random weights under the published
    setting's real repository ids and file names (`ella.published`): SD1.5's folder layout with
    its `model_index.json`, FLAN-T5-XL's (a tiny T5), and `QQGYLab/ELLA`'s
    `ella-sd1.5-tsc-t5xl.safetensors` as a bare state dict with the official key names. With
    `HF_HUB_OFFLINE=1`, the real loading code runs on it as it would on the downloaded files.
    Returns {repo id: its snapshot folder}."""
    import os

    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from safetensors.torch import save_file
    from transformers import T5Config, T5ForConditionalGeneration

    from .models import ELLA
    from .published import ELLA_REPO, ELLA_SD15_FILE, FLAN_T5_XL, SD15

    commit = "0" * 40

    def repo_folder(repo_id: str) -> str:
        return os.path.join(cache_dir, "models--" + repo_id.replace("/", "--"))

    def snapshot(repo_id: str) -> str:
        os.makedirs(os.path.join(repo_folder(repo_id), "refs"), exist_ok=True)
        with open(os.path.join(repo_folder(repo_id), "refs", "main"), "w") as f:
            f.write(commit)
        folder = os.path.join(repo_folder(repo_id), "snapshots", commit)
        os.makedirs(folder, exist_ok=True)
        return folder

    def absent(repo_id: str, filename: str) -> None:
        """What a first, online run leaves for a file the loaders asked for and the repository lacks."""
        marker = os.path.join(repo_folder(repo_id), ".no_exist", commit, filename)
        os.makedirs(os.path.dirname(marker), exist_ok=True)
        open(marker, "w").close()

    folders = {repo_id: snapshot(repo_id) for repo_id in (SD15, FLAN_T5_XL, ELLA_REPO)}
    _, t5_tokenizer = tiny_t5()
    torch.manual_seed(0)
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=len(t5_tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                             num_heads=4, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    t5.save_pretrained(folders[FLAN_T5_XL])
    t5_tokenizer.save_pretrained(folders[FLAN_T5_XL])
    clip, clip_tokenizer = tiny_clip()
    torch.manual_seed(0)
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(  # SD1.5's shape in miniature: 512 px through an 8x VAE, attention at 32x32
        sample_size=64, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16, attention_head_dim=2)
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(4, 4, 4, 4), in_channels=3, out_channels=3, latent_channels=4,
                        norm_num_groups=2, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4)
    StableDiffusionPipeline(
        vae=vae, text_encoder=clip, tokenizer=clip_tokenizer, unet=unet, scheduler=PNDMScheduler(  # SD1.5's own scheduler config
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1,
            set_alpha_to_one=False),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(folders[SD15])
    connector = ELLA.from_preset("tiny", output_dim=None)  # SD1.5's connector has no output projection
    save_file({k: v.half().contiguous() for k, v in connector.state_dict().items()},  # fp16, no config: as released
              os.path.join(folders[ELLA_REPO], ELLA_SD15_FILE))
    absent(SD15, "tokenizer/config.json")  # AutoTokenizer asks; the real repository has none
    absent(ELLA_REPO, "config.json")  # the connector loader asks: a single-file repository
    return folders


def tiny_captioner(folder: str, seed: int = 0) -> str:
    """A tiny random BLIP image-captioning model and its processor, saved to `folder`: an
    image-text-to-text model as `ella caption --captioner FOLDER` loads one."""
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    tokenizer = word_tokenizer(TINY_WORDS)
    torch.manual_seed(seed)
    text = dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id or 0, sep_token_id=tokenizer.eos_token_id)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)
    BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    BlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer).save_pretrained(folder)
    return folder
