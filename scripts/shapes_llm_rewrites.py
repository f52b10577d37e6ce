"""How many of an LLM's rewrites of ShapesWorld captions stay true to their images: the share the
judge keeps, by the style of the caption rewritten, and what new words the kept ones bring.

The caption set is `ella caption`'s, written with the rewriter and the judge's check:

    ella caption shapes:384:brief+varied --captioner rewrite:smollm2 --check shapes \
        --out runs/captions/smollm2-rewrites --batch-size 16 --max-new-tokens 80
    python scripts/shapes_llm_rewrites.py runs/captions/smollm2-rewrites \
        --out docs/results/shapesworld-llm-rewrites.json

Every record is judged again here with the current check (a set written by an older reader is
counted as today's judge counts it); the original captions are judged too, as the bar: a
rewrite can only be kept where its original says the whole scene.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter

from ella.caption.sidecar import read_sidecar
from ella.fileio import write_text_atomic
from ella.shapes.data import ShapesSceneDataset
from ella.shapes.judge import analyse
from ella.shapes.reader import read_text
from ella.shapes.vocabulary import unknown_words
from ella.shapes.world import render


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("caption_set", help="a folder `ella caption --captioner rewrite:LLM --check shapes` wrote")
    parser.add_argument("--out", default="docs/results/shapesworld-llm-rewrites.json")
    parser.add_argument("--examples", type=int, default=6, help="kept and rejected rewrites quoted, each")
    args = parser.parse_args()
    with open(os.path.join(args.caption_set, "set.json"), encoding="utf-8") as f:
        described = json.load(f)
    records = [r for name in sorted(os.listdir(args.caption_set)) if name.endswith(".jsonl")
               for r in read_sidecar(os.path.join(args.caption_set, name))[1]]
    data = ShapesSceneDataset.from_spec(described["data"])
    counts, new_words, examples = Counter(), Counter(), {"kept": [], "rejected": []}
    for r in records:
        index = int(r["key"].removeprefix("shapes"))
        scene, original, _ = data.item(index)
        truth = analyse(render(scene))
        text = r["caption"] or r.get("rejected", "")
        style, kept = data.style(index), read_text(text) == truth
        counts[(style, "rewrites")] += 1
        counts[(style, "original_readable")] += read_text(original) == truth
        counts[(style, "kept")] += kept
        if kept:
            new_words.update(unknown_words(text))
        verdict = "kept" if kept else "rejected"
        if len(examples[verdict]) < args.examples:
            examples[verdict].append({"style": style, "original": original, "rewrite": text})
    styles = sorted({s for s, _ in counts})
    table = {s: {"rewrites": counts[(s, "rewrites")], "original_readable": counts[(s, "original_readable")],
                 "kept": counts[(s, "kept")], "kept_percent": 100 * counts[(s, "kept")] / max(1, counts[(s, "rewrites")])}
             for s in styles}
    total = {k: sum(row[k] for row in table.values()) for k in ("rewrites", "original_readable", "kept")}
    total["kept_percent"] = 100 * total["kept"] / max(1, total["rewrites"])
    total["kept_percent_of_readable_originals"] = 100 * total["kept"] / max(1, total["original_readable"])
    for style, row in {**table, "all": total}.items():
        print(f"{style:8s} {row['kept']:4d} of {row['rewrites']:4d} kept ({row['kept_percent']:.1f} %); "
              f"originals the judge reads: {row['original_readable']}")
    result = {"caption_set": args.caption_set, "rewriter": described["captioner"], "prompt": described["prompt"],
              "settings": described["settings"], "data": described["data"], "by_style": table, "all": total,
              "new_words_in_kept": dict(new_words.most_common()), "examples": examples,
              "_meta": {"command": f"python scripts/shapes_llm_rewrites.py {args.caption_set} --out {args.out}",
                        "check": "ella.shapes.reader: the rewrite read as the judge reads the image (same objects,"
                                 " attributes, places, background)", "machine": "2-core development CPU"}}
    write_text_atomic(args.out, json.dumps(result, indent=1))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
