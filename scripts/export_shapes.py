"""Copy trained ShapesWorld runs into the package's shipped model folder, in fp16 safetensors.

    python scripts/export_shapes.py runs/shapes src/ella/assets/shapes [--base base-attention] [--seed 0]

`--base` names the base model's run folder inside RUNS (the connectors were trained on it); each
connector comes from RUNS/ella-NAME-seedN/export, its recipe's run (`catalog.run_name`): the default
`tsc` is stage 6 (`configs/shapes/ella-tsc.yaml`, varied phrasings, from `tsc-relative`'s export),
`tsc-relative` stage 5, and `tsc-dense` the three-stage dense run they all started from.
"""

from __future__ import annotations

import argparse
import os
import shutil

import torch
from safetensors.torch import load_file, save_file

from ella.shapes.catalog import CONNECTORS, run_name


def copy_fp16(src: str, dst: str) -> None:
    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(src):
        path = os.path.join(src, name)
        if name.endswith(".safetensors"):
            tensors = load_file(path)
            save_file({k: v.half() if v.is_floating_point() else v for k, v in tensors.items()},
                      os.path.join(dst, name), metadata={"format": "pt"})
        elif os.path.isfile(path) and name.endswith((".json", ".yaml", ".txt")):
            shutil.copy(path, dst)


def main(runs: str, out: str, base: str = "base-attention", seed: int = 0) -> None:
    for part in ("unet", "base_text_encoder", "base_tokenizer", "scheduler"):
        copy_fp16(os.path.join(runs, base, part), os.path.join(out, part))
    shutil.copy(os.path.join(runs, base, "base_config.yaml"), out)
    for variant in CONNECTORS:
        export = os.path.join(runs, f"{run_name(variant)}-seed{seed}", "export")
        if os.path.isdir(export):
            copy_fp16(export, os.path.join(out, f"ella-{variant}"))
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
    print(f"wrote {out}: {total / 1e6:.1f} MB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs")
    parser.add_argument("out")
    parser.add_argument("--base", default="base-attention")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    main(args.runs, args.out, args.base, args.seed)
