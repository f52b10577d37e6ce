"""The blind pairwise page: a prompt, two images of two models in random order and without names,
two questions (which follows the prompt better: left, right, tie, both bad; which looks better:
left, right, tie). Each browser keeps an anonymous random rater id. Same Gradio and queue
discipline as `ella demo`: public API only, one job at a time.

No `from __future__ import annotations` here: Gradio reads the handlers' `request: gr.Request`
annotations at runtime to pass the request (and its session) in."""

import hashlib
import logging
import os
import uuid

from .schedule import NoPairLeft, Scheduler
from .store import AESTHETICS, ALIGNMENT, VoteError, VoteStore, check_rater

logger = logging.getLogger(__name__)


class StudyServer:
    """What the page calls, without the page (the load test and the API call the same).

    Blind: the images are served as copies named by their digest (`blind_dir`), so neither the
    page nor the API reveals a model's folder. A pair is tied to the page session that was shown
    it (`session`): only that session may answer it, and a reloaded page gets its unanswered
    pair back instead of losing it."""

    def __init__(self, study, store: VoteStore, seed: int | None = None, blind_dir: str | None = None):
        import tempfile

        self.study, self.store = study, store
        self.scheduler = Scheduler(study, store, seed)
        self.blind_dir = blind_dir or tempfile.mkdtemp(prefix="ella-study-")
        self._digests: dict[str, str] = {}

    def digest(self, path: str) -> str:
        if path not in self._digests:
            with open(path, "rb") as f:
                self._digests[path] = hashlib.sha256(f.read()).hexdigest()
        return self._digests[path]

    def blind(self, path: str) -> str:
        """The image as the rater gets it: a copy named by its digest."""
        import shutil

        from ..fileio import atomic_path

        target = os.path.join(self.blind_dir, f"{self.digest(path)}.png")
        if not os.path.isfile(target):
            os.makedirs(self.blind_dir, exist_ok=True)
            with atomic_path(target, suffix=".png") as tmp:
                shutil.copyfile(path, tmp)
        return target

    def next_pair(self, rater: str, session: str | None = None) -> dict:
        """{shown_id, prompt, left, right} (blind image files), or {done: True}."""
        check_rater(rater)
        row = self.store.pending(rater)
        if row is not None:  # shown and not answered (a reload): the same pair again, now in this session
            self.store.move(row["id"], session)
            return {"shown_id": row["id"], "prompt": row["prompt"], "left": self.blind(row["left_file"]),
                    "right": self.blind(row["right_file"])}
        try:
            item, left, right = self.scheduler.next_pair(rater)
        except NoPairLeft:
            return {"done": True}
        files = [self.study.run(m).image(item) for m in (left, right)]
        shown = self.store.show(rater, item, self.study.prompts[item], (left, files[0], self.digest(files[0])),
                                (right, files[1], self.digest(files[1])), session)
        return {"shown_id": shown, "prompt": self.study.prompts[item], "left": self.blind(files[0]),
                "right": self.blind(files[1])}

    def vote(self, shown_id: str, rater: str, alignment: str, aesthetics: str, session: str | None = None) -> int:
        return self.store.vote(shown_id, rater, alignment, aesthetics, session)


CSS = "#left img, #right img {image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain;}"


def build_study_app(server: StudyServer, secret: str | None = None, note: str = ""):
    """The page; `secret` keeps the browsers' rater ids readable across server restarts (a key kept
    in the study folder), `note` says what the images are (e.g. grids of four samples)."""
    import gradio as gr

    with gr.Blocks(title="Which image follows the prompt?") as app:
        gr.Markdown("## Which image follows the prompt better?\nTwo images of the same prompt by two models, in"
                    " random order. Answer both questions, then Vote: the next pair comes." + (f" {note}" if note else ""))
        rater = gr.BrowserState("", storage_key="ella-study-rater", secret=secret)
        shown = gr.State("")
        prompt = gr.Textbox(label="Prompt", interactive=False, elem_id="prompt")
        with gr.Row():
            left = gr.Image(label="Left", interactive=False, elem_id="left", type="filepath", height=360)
            right = gr.Image(label="Right", interactive=False, elem_id="right", type="filepath", height=360)
        alignment = gr.Radio(list(ALIGNMENT), label="Which follows the prompt better?", elem_id="alignment")
        aesthetics = gr.Radio(list(AESTHETICS), label="Which looks better?", elem_id="aesthetics")
        button = gr.Button("Vote", variant="primary", elem_id="vote")
        status = gr.Markdown(elem_id="status")

        def show(rater_id, request: gr.Request):
            rater_id = rater_id or uuid.uuid4().hex  # anonymous: a random id per browser
            pair = server.next_pair(rater_id, request.session_hash)
            if pair.get("done"):
                return rater_id, "", "", None, None, None, None, "You have seen every pair. Thank you!"
            return rater_id, pair["shown_id"], pair["prompt"], pair["left"], pair["right"], None, None, ""

        def cast(rater_id, shown_id, align, looks, request: gr.Request):
            if not shown_id:
                return (rater_id, shown_id, gr.skip(), gr.skip(), gr.skip(), align, looks, "No pair is shown.")
            if align is None or looks is None:
                return (rater_id, shown_id, gr.skip(), gr.skip(), gr.skip(), align, looks,
                        "Answer both questions first.")
            try:
                server.vote(shown_id, rater_id, align, looks, request.session_hash)
            except VoteError as err:
                logger.info("vote refused: %s", err)
                return rater_id, shown_id, gr.skip(), gr.skip(), gr.skip(), align, looks, f"Not stored: {err}"
            *shown_next, message = show(rater_id, request)
            return (*shown_next, message or "Stored. Next pair:")

        def next_pair(rater: str, request: gr.Request) -> dict:
            try:
                return server.next_pair(rater, request.session_hash)
            except VoteError as err:  # the reason goes back to the client, one line to the log
                logger.info("pair refused: %s", err)
                raise gr.Error(str(err)) from None

        def vote(shown_id: str, rater: str, alignment: str, aesthetics: str, request: gr.Request) -> int:
            try:
                return server.vote(shown_id, rater, alignment, aesthetics, request.session_hash)
            except VoteError as err:
                logger.info("vote refused: %s", err)
                raise gr.Error(str(err)) from None

        outputs = [rater, shown, prompt, left, right, alignment, aesthetics, status]
        app.load(show, [rater], outputs)
        button.click(cast, [rater, shown, alignment, aesthetics], outputs, show_progress_on=status)
        gr.api(next_pair, api_name="next_pair")  # the page's HTTP API, for scripted raters
        gr.api(vote, api_name="vote")
    app.queue(default_concurrency_limit=1)
    return app
