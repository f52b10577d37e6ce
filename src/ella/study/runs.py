"""The image folders a study compares: `ella bench dpg generate` / `ella bench shapes` outputs
(`<item_id>.png` and a manifest naming the model), on the same prompts."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ..bench.dpg import load_csv, load_prompt_folder
from ..paths import require_path


@dataclass
class Run:
    name: str  # the model, as the votes name it
    folder: str
    settings: dict

    def image(self, item_id: str) -> str:
        return os.path.join(self.folder, f"{item_id}.png")


@dataclass
class Study:
    runs: list[Run]
    prompts: dict[str, str]  # item_id -> prompt
    categories: dict[str, list[str]]  # item_id -> the DPG-Bench categories its questions ask about (none without a CSV)

    @property
    def models(self) -> list[str]:
        return [r.name for r in self.runs]

    def run(self, name: str) -> Run:
        return next(r for r in self.runs if r.name == name)


def load_study(folders: list[str], csv: str | None = None, prompt_folder: str | None = None) -> Study:
    """The runs in `folders`, their prompts from the question CSV or the prompt folder. Folders
    that do not hold images of the same prompts are refused, naming what differs."""
    if len(folders) < 2:
        raise ValueError("a study compares at least two image folders")
    if (csv is None) == (prompt_folder is None):
        raise ValueError("pass the prompts: --csv QUESTIONS.csv or --prompts FOLDER (as `ella bench dpg generate`)")
    if csv is not None:
        items = load_csv(csv)
        prompts = {k: v.prompt for k, v in items.items()}
        categories = {k: sorted({q.l1 for q in v.questions}) for k, v in items.items()}
    else:
        prompts, categories = load_prompt_folder(prompt_folder), {}
    runs = [_run(folder) for folder in folders]
    names = [r.name for r in runs]
    if len(set(names)) < len(names):  # two runs of one model: told apart by folder
        for r in runs:
            r.name = f"{r.name} ({os.path.basename(os.path.normpath(r.folder))})"
    first = None
    for r in runs:
        have = {f[:-4] for f in os.listdir(r.folder) if f.endswith(".png")} & set(prompts)
        if not have:
            raise ValueError(f"{r.folder} holds no image of these prompts (<item_id>.png)")
        if first is None:
            first = (r, have)
        elif have != first[1]:
            only = sorted(have ^ first[1])
            raise ValueError(f"{r.folder} and {first[0].folder} do not hold the same prompts ({len(only)} differ,"
                             f" e.g. {only[0]}): generate the same prompts in every folder")
    keep = first[1]
    return Study(runs, {k: prompts[k] for k in sorted(keep)}, {k: categories.get(k, []) for k in sorted(keep)})


def _run(folder: str) -> Run:
    require_path(folder, "image folder", "folder")
    settings = {}
    manifest = os.path.join(folder, "manifest.json")
    if os.path.isfile(manifest):
        with open(manifest, encoding="utf-8") as f:
            settings = json.load(f)
    name = settings.get("model") or os.path.basename(os.path.normpath(folder))
    if isinstance(name, str) and os.path.sep in name:  # a path (an own connector): its folder name
        name = os.path.basename(os.path.normpath(name))
    return Run(str(name), folder, settings)
