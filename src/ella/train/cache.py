"""`ella cache`: precompute LLM features (+ masks) and VAE latents once, into sharded
safetensors, so that training steps run only the connector and the UNet."""

from __future__ import annotations

import json
import logging
import os

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .components import FrozenParts
from .config import TrainConfig
from .data import collate, make_dataset

logger = logging.getLogger(__name__)

INDEX = "index.json"
FIELDS = ("latents", "text_features", "text_mask")  # per sample; SDXL with a CLIP pooled embedding adds "pooled"


def fingerprint(config: TrainConfig, parts: FrozenParts) -> dict:
    """What the cached tensors depend on (a cache built otherwise is refused): the data, the
    LLM and its length, and the VAE (pixel-space UNets share one cache: it holds pixels)."""
    values = {"train_data": config.train_data, "latents": config.model if parts.vae is not None else "pixels",
              "llm": config.llm, "text_max_length": config.text_max_length, "resolution": config.resolution}
    if config.text_echo:  # only when set, so that caches built before the option existed stay valid
        values["text_echo"] = True
    if config.pooled_text_encoder:
        values["pooled_text_encoder"] = config.pooled_text_encoder
    if config.captions:  # the captions actually used: which sets, by weight and content
        from .captions import mix_fingerprint

        values.update(mix_fingerprint(config.captions, config.caption_draw_seed))
    return values


def read_index(cache_dir: str) -> dict:
    path = os.path.join(cache_dir, INDEX)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no feature cache in {cache_dir} (run `ella cache` first)")
    with open(path) as f:
        return json.load(f)


@torch.no_grad()
def encode_images(parts: FrozenParts, pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] -> what the UNet denoises: scaled VAE latents (the posterior mean, so
    the cache and the uncached path agree), or the pixels themselves for a pixel-space UNet."""
    if parts.vae is None:
        return pixels
    posterior = parts.vae.encode(pixels.to(parts.vae.dtype)).latent_dist
    return posterior.mean * parts.vae.config.scaling_factor


def require_cache_dir(config: TrainConfig) -> str:
    if not config.cache_dir:
        raise ValueError("set cache_dir in the config (or --cache-dir) to build a cache")
    return config.cache_dir


@torch.no_grad()
def build_cache(config: TrainConfig, parts: FrozenParts, shard_size: int = 1024, batch_size: int = 32) -> dict:
    cache_dir = require_cache_dir(config)
    os.makedirs(cache_dir, exist_ok=True)
    dataset = make_dataset(config.train_data, config.resolution, config.seed, config.captions,
                           captions_seed=config.caption_draw_seed)
    encoder = parts.encoder(config)
    device = parts.text_encoder.device
    store_dtype = getattr(torch, config.cache_dtype) if config.cache_dtype else None
    index = {"fingerprint": fingerprint(config, parts), "shards": [], "keys": {}, "skipped": 0}
    fields = FIELDS + (("pooled",) if parts.pooled_encoder is not None else ())
    buffer: dict[str, list] = {k: [] for k in fields + ("key",)}

    def flush():
        if not buffer["key"]:
            return
        name = f"shard-{len(index['shards']):05d}.safetensors"
        tensors = {k: torch.cat(buffer[k]).contiguous().cpu() for k in fields}
        save_file(tensors, os.path.join(cache_dir, name))
        index["shards"].append({"file": name, "count": len(buffer["key"])})
        index["keys"][name] = list(buffer["key"])
        for v in buffer.values():
            v.clear()

    for start in tqdm(range(0, len(dataset), batch_size), desc="caching", unit="batch"):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        index["skipped"] += batch["skipped"]
        if not batch["key"]:
            continue
        text = encoder.encode_padded(batch["caption"])
        buffer["latents"].append(encode_images(parts, batch["pixel_values"].to(device)))
        buffer["text_features"].append(text.hidden_states.to(store_dtype or text.hidden_states.dtype))
        buffer["text_mask"].append(text.attention_mask)
        if "pooled" in buffer:
            buffer["pooled"].append(parts.encode_pooled(batch["caption"]))
        buffer["key"].extend(batch["key"])
        if len(buffer["key"]) >= shard_size:
            flush()
    flush()
    empty = encoder.encode_padded([""])  # caption dropout reads the empty prompt from here
    empty_features = empty.hidden_states.to(store_dtype or empty.hidden_states.dtype)
    save_file({"text_features": empty_features.cpu().contiguous(), "text_mask": empty.attention_mask.cpu().contiguous()},
              os.path.join(cache_dir, "empty.safetensors"))
    with open(os.path.join(cache_dir, INDEX), "w") as f:
        json.dump(index, f)
    n = sum(s["count"] for s in index["shards"])
    logger.debug("cached %d samples in %d shards to %s (%d skipped)", n, len(index["shards"]), cache_dir, index["skipped"])
    return index


class CachedFeatureDataset(torch.utils.data.Dataset):
    """Samples of a feature cache written by `ella.train.cache.build_cache`: {key, latents,
    text_features, text_mask}. A cache up to `preload_bytes` is read into memory once (random
    row reads through memory maps cost 1.2 s per batch of 64 on a GPU machine's network disk);
    a larger one is read through memory maps, one row at a time."""

    def __init__(self, cache_dir: str, preload_bytes: int = 4 << 30):
        from safetensors.torch import load_file

        self.cache_dir = cache_dir
        self.index = read_index(cache_dir)
        self.locations = [(s["file"], i) for s in self.index["shards"] for i in range(s["count"])]
        self._handles: dict = {}
        size = sum(os.path.getsize(os.path.join(cache_dir, s["file"])) for s in self.index["shards"])
        if size <= preload_bytes:
            self._handles = {s["file"]: load_file(os.path.join(cache_dir, s["file"])) for s in self.index["shards"]}

    def __len__(self) -> int:
        return len(self.locations)

    def _shard(self, name: str):
        from safetensors import safe_open

        if name not in self._handles:
            self._handles[name] = safe_open(os.path.join(self.cache_dir, name), framework="pt")
        return self._handles[name]

    def __getitem__(self, index: int) -> dict:
        name, row = self.locations[index]
        shard = self._shard(name)
        sample = {"key": self.index["keys"][name][row]}
        fields = FIELDS + (("pooled",) if self.index["fingerprint"].get("pooled_text_encoder") else ())
        for field in fields:
            sample[field] = shard[field][row] if isinstance(shard, dict) else shard.get_slice(field)[row : row + 1][0]
        return sample

    def __getstate__(self):  # DataLoader workers open their own memory maps (preloaded shards travel)
        handles = {k: v for k, v in self._handles.items() if isinstance(v, dict)}
        return {**self.__dict__, "_handles": handles}
