"""The published setting end to end on a CUDA machine that has it in its Hugging Face cache (or can
download it): `load_preset("sd1.5-t5xl")`, then time to first image (load included), peak GPU
memory, and images/s at batch 1 and 8 (the web demo's 25 steps, guidance 10, 512x512).

    python benchmarks/published_setting.py [--out benchmarks/results/published_setting_gpu.json]
    python benchmarks/published_setting.py --sizes    # parameter counts and sizes, no download, any machine
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ella import load_preset

PROMPT = ("a red apple and a blue book on a wooden table, a cat sleeping beside them, warm light from a window"
          " on the left")


def sizes() -> dict:
    """Parameter counts of the published setting's parts, built on the meta device (no weights,
    no download) from SD1.5's, CLIP ViT-L/14's and FLAN-T5-XL's published configs; GB at 2 bytes
    (fp16, in memory) and 4 bytes (fp32, as the hub stores SD1.5's UNet, VAE, CLIP and FLAN-T5-XL)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel, T5ForConditionalGeneration

    from ella import ELLA

    t5 = T5Config(d_model=2048, d_ff=5120, d_kv=64, num_heads=32, num_layers=24, vocab_size=32128,
                  feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    with torch.device("meta"):
        parts = {
            "unet": UNet2DConditionModel(cross_attention_dim=768),
            "vae": AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                                 up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2),
            "clip_text_encoder": CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072,
                                                              num_hidden_layers=12, num_attention_heads=12)),
            "t5_encoder": T5EncoderModel(t5),
            "t5_whole_checkpoint": T5ForConditionalGeneration(t5),
            "connector": ELLA.from_preset("sd15-t5xl"),
        }
    counts = {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()}
    loaded = [k for k in counts if k != "t5_whole_checkpoint"]
    return {"parameters": counts,
            "in_memory_fp16_gb": round(sum(counts[k] for k in loaded) * 2 / 1e9, 2),
            "download_gb": round((sum(counts[k] for k in ("unet", "vae", "clip_text_encoder", "t5_whole_checkpoint")) * 4
                                  + counts["connector"] * 2) / 1e9, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/published_setting_gpu.json")
    parser.add_argument("--preset", default="sd1.5-t5xl")
    parser.add_argument("--sizes", action="store_true", help="write the parameter counts to --out instead")
    args = parser.parse_args()
    if args.sizes:
        result = sizes()
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
        print(json.dumps(result, indent=2))
        return
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    pipe, defaults = load_preset(args.preset)
    pipe.set_progress_bar_config(disable=True)
    loaded = time.perf_counter() - start
    pipe(PROMPT, **defaults, generator=torch.Generator().manual_seed(1001))
    torch.cuda.synchronize()
    result = {"preset": args.preset, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
              "load_s": round(loaded, 2), "time_to_first_image_s": round(time.perf_counter() - start, 2),
              "defaults": defaults}
    for batch in (1, 8):
        pipe([PROMPT] * batch, **defaults)  # warm-up at this shape
        torch.cuda.synchronize()
        began = time.perf_counter()
        pipe([PROMPT] * batch, **defaults, generator=torch.Generator().manual_seed(0))
        torch.cuda.synchronize()
        result[f"images_per_s_batch{batch}"] = round(batch / (time.perf_counter() - began), 3)
    result["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
