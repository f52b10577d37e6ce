"""VQA judges behind one small interface; heavy backends are imported only when chosen.

    backend = get_backend("mplug" | "blip" | "hf:<model id>" | "replay:<answers.jsonl>" | a plugin's judge)
    backend.answer(image, questions, item_id=..., crop=...) -> ["yes", "no", ...]
"""

from __future__ import annotations

import json
import logging

from PIL import Image

from ..paths import require_path

logger = logging.getLogger(__name__)


class VQABackend:
    name = "base"

    def answer(self, image: Image.Image, questions: list[str], *, item_id: str, crop: int) -> list[str]:
        raise NotImplementedError

    def scene_problems(self, image: Image.Image, item) -> list[str] | None:
        """What the image holds that the item (`bench.dpg.Item`) does not ask for, in words; [] for
        nothing; None when this judge cannot read a whole scene (then the strict check asks
        questions instead: `bench.dpg.strict_questions`)."""
        return None


class MPLUGBackend(VQABackend):
    """The reference judge: mPLUG-large VQA through ModelScope (`pip install ella-diffusion[mplug]`).
    As the reference does, the question is lower-cased and truncated to 25 tokens."""

    name = "mplug"
    MODEL_ID = "iic/mplug_visual-question-answering_coco_large_en"

    def __init__(self, model_id: str | None = None):
        try:
            from modelscope.pipelines import pipeline
            from modelscope.utils.constant import Tasks
        except ImportError as err:
            raise ValueError("the mplug judge needs ModelScope: pip install 'ella-diffusion[mplug]'") from err
        self.pipe = pipeline(Tasks.visual_question_answering, model=model_id or self.MODEL_ID)

    def answer(self, image, questions, *, item_id, crop):
        out = []
        for q in questions:
            q = " ".join(q.lower().split()[:25])
            out.append(self.pipe({"image": image, "question": q})["text"].strip())
        return out


class TransformersVQABackend(VQABackend):
    """A transformers VQA model (default BLIP VQA), questions of one crop in one batch."""

    name = "hf"

    def __init__(self, model_id: str = "Salesforce/blip-vqa-base", device: str | None = None):
        from transformers import AutoProcessor, BlipForQuestionAnswering

        from ..devices import resolve_device
        from ..paths import require_hub_model, require_local_folder

        require_local_folder(model_id, "VQA model folder")
        require_hub_model(model_id, "VQA model")
        self.device = resolve_device(device)
        self.processor = AutoProcessor.from_pretrained(model_id)
        self.model = BlipForQuestionAnswering.from_pretrained(model_id).to(self.device).eval()

    def answer(self, image, questions, *, item_id, crop):
        import torch

        inputs = self.processor(images=[image] * len(questions), text=questions, return_tensors="pt", padding=True)
        with torch.no_grad():
            ids = self.model.generate(**inputs.to(self.device), max_new_tokens=5)
        return [t.strip() for t in self.processor.batch_decode(ids, skip_special_tokens=True)]


class ReplayBackend(VQABackend):
    """Answers from a previous run's answers.jsonl: re-score without a GPU or a model."""

    name = "replay"

    def __init__(self, path: str):
        require_path(path, "replay answers")
        self.answers = {(str(r["item_id"]), r["crop"], str(r["question"])): str(r["answer"])
                        for r in read_answer_records(path)}

    def answer(self, image, questions, *, item_id, crop):
        try:
            return [self.answers[(item_id, crop, q)] for q in questions]
        except KeyError as err:
            raise ValueError(f"no recorded answer for item {item_id}, crop {crop}: {err}") from err


def read_jsonl(path: str) -> list[dict]:
    """Records of a JSONL file; a truncated last line (a killed writer) is ignored."""
    return [record for _, record in _numbered_records(path)]


def _numbered_records(path: str) -> list[tuple[int, object]]:
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            try:
                records.append((n, json.loads(line)))
            except json.JSONDecodeError:
                logger.warning("ignoring a malformed line in %s (an interrupted write)", path)
    return records


ANSWER_FIELDS = ("item_id", "crop", "proposition_id", "question", "answer")


def read_answer_records(path: str) -> list[dict]:
    """The records of an answers.jsonl (ours: `ella bench dpg score` writes it). A line that is not
    an answer record is an error that names the file and the line, and says how to recover."""
    records = []
    for n, record in _numbered_records(path):
        crop = record.get("crop") if isinstance(record, dict) else None
        if (not isinstance(record, dict) or any(k not in record for k in ANSWER_FIELDS)
                or not isinstance(crop, int) or isinstance(crop, bool)):
            raise ValueError(f"{path}, line {n}: not an answer record (an object with {', '.join(ANSWER_FIELDS)});"
                             " this file is written by ella bench dpg score: delete that line (its questions are"
                             " asked again), or the whole file to start over")
        records.append(record)
    return records


def check_backend_name(name: str) -> None:
    """Refuse a judge name `get_backend` would not know, without loading any model."""
    from ..plugins import registry

    if name in registry().vqa_backends or name in ("mplug", "blip") or name.startswith(("hf:", "replay:")):
        return
    known = ", ".join([*registry().vqa_backends, "mplug", "blip", "hf:MODEL_ID", "replay:ANSWERS.jsonl"])
    raise ValueError(f"unknown VQA backend {name!r}: use {known}")


def get_backend(name: str) -> VQABackend:
    """A judge by name: mplug (the reference), blip, hf:MODEL_ID, replay:ANSWERS.jsonl, or one a
    plugin registered (ShapesWorld's exact judge: shapes)."""
    from ..plugins import lookup

    plugin = lookup("vqa_backends", name)
    if plugin is not None:
        return plugin()
    if name == "mplug":
        return MPLUGBackend()
    if name == "blip":
        return TransformersVQABackend()
    if name.startswith("hf:"):
        return TransformersVQABackend(name[3:])
    if name.startswith("replay:"):
        return ReplayBackend(name[len("replay:"):])
    check_backend_name(name)  # raises: the name is none of the above
