"""The blind pairwise page: a prompt, two images of two models in random order and without names,
two questions (which follows the prompt better: left, right, tie, both bad; which looks better:
left, right, tie). Each browser keeps an anonymous random rater id. Same Gradio and queue
discipline as `ella demo`: public API only, one job at a time."""

from __future__ import annotations

import hashlib
import logging
import uuid

from .schedule import NoPairLeft, Scheduler
from .store import AESTHETICS, ALIGNMENT, VoteError, VoteStore

logger = logging.getLogger(__name__)


class StudyServer:
    """What the page calls, without the page (the load test and the API call the same)."""

    def __init__(self, study, store: VoteStore, seed: int | None = None):
        self.study, self.store = study, store
        self.scheduler = Scheduler(study, store, seed)
        self._digests: dict[str, str] = {}

    def digest(self, path: str) -> str:
        if path not in self._digests:
            with open(path, "rb") as f:
                self._digests[path] = hashlib.sha256(f.read()).hexdigest()
        return self._digests[path]

    def next_pair(self, rater: str) -> dict:
        """{shown_id, prompt, left, right} (image files), or {done: True}."""
        try:
            item, left, right = self.scheduler.next_pair(rater)
        except NoPairLeft:
            return {"done": True}
        files = [self.study.run(m).image(item) for m in (left, right)]
        shown = self.store.show(rater, item, self.study.prompts[item], (left, files[0], self.digest(files[0])),
                                (right, files[1], self.digest(files[1])))
        return {"shown_id": shown, "prompt": self.study.prompts[item], "left": files[0], "right": files[1]}

    def vote(self, shown_id: str, rater: str, alignment: str, aesthetics: str) -> int:
        return self.store.vote(shown_id, rater, alignment, aesthetics)


def build_study_app(server: StudyServer):
    import gradio as gr

    # Small images (ShapesWorld's are 64 px grids) shown large, their pixels kept sharp.
    css = "#left img, #right img {image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain;}"
    with gr.Blocks(title="Which image follows the prompt?", css=css) as app:
        gr.Markdown("## Which image follows the prompt better?\nTwo images of the same prompt by two models, in"
                    " random order. Answer both questions, then Vote: the next pair comes.")
        rater = gr.BrowserState("", storage_key="ella-study-rater")
        shown = gr.State("")
        prompt = gr.Textbox(label="Prompt", interactive=False, elem_id="prompt")
        with gr.Row():
            left = gr.Image(label="Left", interactive=False, elem_id="left", type="filepath", height=360)
            right = gr.Image(label="Right", interactive=False, elem_id="right", type="filepath", height=360)
        alignment = gr.Radio(list(ALIGNMENT), label="Which follows the prompt better?", elem_id="alignment")
        aesthetics = gr.Radio(list(AESTHETICS), label="Which looks better?", elem_id="aesthetics")
        button = gr.Button("Vote", variant="primary", elem_id="vote")
        status = gr.Markdown(elem_id="status")

        def show(rater_id):
            rater_id = rater_id or uuid.uuid4().hex  # anonymous: a random id per browser
            pair = server.next_pair(rater_id)
            if pair.get("done"):
                return rater_id, "", "", None, None, None, None, "You have seen every pair. Thank you!"
            return rater_id, pair["shown_id"], pair["prompt"], pair["left"], pair["right"], None, None, ""

        def cast(rater_id, shown_id, align, looks):
            if not shown_id:
                return (rater_id, shown_id, gr.skip(), gr.skip(), gr.skip(), align, looks, "No pair is shown.")
            if align is None or looks is None:
                return (rater_id, shown_id, gr.skip(), gr.skip(), gr.skip(), align, looks,
                        "Answer both questions first.")
            try:
                server.vote(shown_id, rater_id, align, looks)
            except VoteError as err:
                return rater_id, shown_id, gr.skip(), gr.skip(), gr.skip(), align, looks, f"Not stored: {err}"
            *shown_next, message = show(rater_id)
            return (*shown_next, message or "Stored. Next pair:")

        outputs = [rater, shown, prompt, left, right, alignment, aesthetics, status]
        app.load(show, [rater], outputs)
        button.click(cast, [rater, shown, alignment, aesthetics], outputs, show_progress_on=status)
        gr.api(server.next_pair, api_name="next_pair")  # the page's HTTP API, for scripted raters
        gr.api(server.vote, api_name="vote")
    app.queue(default_concurrency_limit=1)
    return app
