"""`ella demo`: the generate function the button calls, its errors, and the page in a real
(headless) Chromium through Selenium. The browser test skips, saying why, where Chromium, its
driver, Gradio or Selenium are absent; `.ci/run` installs them."""

import dataclasses
import json
import os
import shutil
import socket
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

from ella.cli import main
from ella.shapes.catalog import MAIN_PROMPT


@pytest.fixture(scope="module")
def demo_model():
    from ella.demo import DemoModel
    from ella.shapes.models import SHIPPED

    return DemoModel(SHIPPED.load("tsc"), dict(SHIPPED.defaults), SHIPPED, "tsc", [], SHIPPED.planner)


def test_the_buttons_function_draws_what_ella_generate_draws(demo_model, tmp_path):
    from ella.demo import generate

    progress = []
    result = generate(demo_model, MAIN_PROMPT, "", 1001, 5, 5.0, "dpm++", 2, str(tmp_path),
                      on_step=lambda done, total: progress.append((done, total)))
    assert progress == [(done, 10) for done in range(1, 11)]  # both sides' steps, counted together
    assert main(["generate", MAIN_PROMPT, "--compare", "--seed", "1001", "--steps", "5", "--num-images", "2",
                 "--out", str(tmp_path / "cli.png")]) == 0
    for side in ("base", "ella"):
        column = np.asarray(Image.open(tmp_path / f"cli.{side}.png"))  # seeds 1001, 1002 top to bottom
        for i, (view, path, seen) in enumerate(result[side]):
            assert np.array_equal(np.asarray(Image.open(path)), column[32 * i : 32 * (i + 1)])
            assert view.size[0] >= 256 and seen.startswith("background ")
    assert result["command"].startswith("ella generate 'a large red circle") and "--compare" in result["command"]
    assert "--seed 1001 --steps 5" in result["command"]
    progress.clear()
    generate(demo_model, MAIN_PROMPT, "", 1001, 5, 5.0, "pndm", 1, str(tmp_path),
             on_step=lambda done, total: progress.append((done, total)))
    assert progress[-1][0] == progress[-1][1] > 10  # PNDM takes more steps than asked: the bar still ends full


def test_the_regions_switch_draws_what_ella_generate_regions_auto_draws(demo_model, tmp_path):
    from ella.demo import generate

    result = generate(demo_model, MAIN_PROMPT, "", 1001, 5, 5.0, "dpm++", 2, str(tmp_path), regions=True)
    assert "--regions auto" in result["command"] and "--planner" not in result["command"]  # the shipped planner
    plan, layout_file = result["plan"]
    assert plan.size[0] >= 256 and plan.size[1] > plan.size[0]  # the image, then the legend under it
    assert json.load(open(layout_file))["regions"]
    assert main(["generate", MAIN_PROMPT, "--compare", "--regions", "auto", "--seed", "1001", "--steps", "5",
                 "--num-images", "2", "--out", str(tmp_path / "cli.png")]) == 0
    column = np.asarray(Image.open(tmp_path / "cli.ella.png"))
    for i, (_, path, _) in enumerate(result["ella"]):
        assert np.array_equal(np.asarray(Image.open(path)), column[32 * i : 32 * (i + 1)])
    plain = generate(demo_model, MAIN_PROMPT, "", 1001, 5, 5.0, "dpm++", 1, str(tmp_path / "plain"))
    assert "plan" not in plain and "--regions" not in plain["command"]
    assert not np.array_equal(np.asarray(Image.open(plain["ella"][0][1])), column[:32])  # the switch does something


def test_the_regions_switch_without_a_planner_is_a_message(demo_model, tmp_path):
    from ella.demo import DemoInputError, generate

    with pytest.raises(DemoInputError, match="--planner"):
        generate(dataclasses.replace(demo_model, planner=None), MAIN_PROMPT, "", 1, 5, 5.0, "dpm++", 1,
                 str(tmp_path), regions=True)


@pytest.mark.parametrize("prompt, steps, images, message", [
    ("", 25, 1, "prompt is empty"), ("x" * 10_001, 25, 1, "characters long"),
    (MAIN_PROMPT, 0, 1, "steps must be"), (MAIN_PROMPT, 25, 9, "images must be"),
])
def test_bad_requests_are_messages(demo_model, tmp_path, prompt, steps, images, message):
    from ella.demo import DemoInputError, generate

    with pytest.raises(DemoInputError, match=message):
        generate(demo_model, prompt, "", 1, steps, 5.0, "dpm++", images, str(tmp_path))


def test_cli_errors_are_one_line(capsys, monkeypatch):
    pytest.importorskip("gradio")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["demo", "--port", str(port)]) == 2
    assert "in use" in capsys.readouterr().err
    assert main(["demo", "--port", str(_free_port()), "--ella", "nope"]) == 2
    assert "--ella is one of" in capsys.readouterr().err
    monkeypatch.setitem(__import__("sys").modules, "gradio", None)  # as if not installed
    assert main(["demo"]) == 2
    assert 'pip install -e ".[demo]"' in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _browser():
    """A headless Chromium driven by Selenium, or the reason there is none."""
    for module in ("gradio", "selenium"):
        try:
            __import__(module)
        except ImportError:
            return None, f"{module} is not installed (pip install -e '.[demo]' selenium)"
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        return None, "Chromium and its driver are not installed (apt-get install chromium chromium-driver)"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1800"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options), None


def _gallery_images(browser, element_id: str) -> list[np.ndarray]:
    from selenium.webdriver.common.by import By

    sources = [img.get_attribute("src") for img in browser.find_elements(By.CSS_SELECTOR, f"#{element_id} img")]
    return [np.asarray(Image.open(urllib.request.urlopen(src)).convert("RGB")) for src in sources if src]


# Every text the status line shows while generating (the progress is there, not on the outputs).
WATCH_PROGRESS = """
window.progressSeen = [];
const status = document.getElementById('status');
new MutationObserver(() => window.progressSeen.push(status.textContent.trim()))
  .observe(status, {subtree: true, childList: true, characterData: true});
"""


def test_the_page_in_a_real_browser(demo_model, tmp_path):
    from ella.demo import build_app

    browser, why = _browser()
    if browser is None:
        pytest.skip(why)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    # One seed, quicker; the default 25 steps, so that the progress has time to show on any CPU
    # (the page gets it twice a second).
    model = dataclasses.replace(demo_model, defaults={**demo_model.defaults, "steps": 25, "images": 1})
    app = build_app(model)
    port = _free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        browser.get(f"http://127.0.0.1:{port}")
        wait = WebDriverWait(browser, 120)
        box = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#prompt textarea")))
        box.send_keys(MAIN_PROMPT)
        browser.execute_script(WATCH_PROGRESS)
        browser.find_element(By.ID, "generate").click()
        wait.until(lambda b: "Done." in b.find_element(By.ID, "status").text)
        seen = browser.execute_script("return window.progressSeen")
        assert any("denoising" in text and "/50 steps" in text for text in seen), sorted(set(seen))
        time.sleep(0.5)  # the galleries render after the status
        base, ella = _gallery_images(browser, "base-gallery"), _gallery_images(browser, "ella-gallery")
        assert len(base) >= 1 and len(ella) >= 1
        for image in base + ella:
            assert image.std() > 5  # not blank
        assert not np.array_equal(base[0], ella[0])
        assert "background" in browser.find_element(By.ID, "ella-judge").text
        assert "ella generate" in browser.find_element(By.ID, "command").text
        screenshot = os.environ.get("ELLA_DEMO_SCREENSHOT", str(tmp_path / "demo.png"))
        browser.save_screenshot(screenshot)
        assert os.path.getsize(screenshot) > 10_000
        box.send_keys(Keys.CONTROL, "a")  # as a user empties it (clear() sends no input event to the page)
        box.send_keys(Keys.DELETE)
        browser.find_element(By.ID, "generate").click()
        wait.until(lambda b: "Error" in b.find_element(By.ID, "status").text)
        assert "the prompt is empty" in browser.find_element(By.ID, "status").text
        box.send_keys(MAIN_PROMPT)  # the regions switch: the plan shows beside the images
        browser.find_element(By.CSS_SELECTOR, "#regions input").click()
        browser.find_element(By.ID, "generate").click()
        wait.until(lambda b: "Done." in b.find_element(By.ID, "status").text)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#plan img"))
        assert "--regions auto" in browser.find_element(By.ID, "command").text
    finally:
        browser.quit()
        app.close()


def test_clicks_wait_in_one_queue(demo_model, monkeypatch):
    """One job at a time (the model serves one request at once), through Gradio's public queue API."""
    gr = pytest.importorskip("gradio")
    from ella.demo import build_app

    calls = []
    original = gr.Blocks.queue
    monkeypatch.setattr(gr.Blocks, "queue", lambda self, **kw: calls.append(kw) or original(self, **kw))
    build_app(demo_model)
    assert calls[-1] == {"default_concurrency_limit": 1}  # (Gradio may queue once itself, first)


def test_the_demo_leaves_a_core_for_the_page_on_small_cpus():
    import torch

    from ella.demo import DemoModel, leave_a_core_for_the_page

    class OnCpu:
        device = torch.device("cpu")
        clip_text_encoder = None

    class WithBase(OnCpu):
        clip_text_encoder = object()

    one_side, two_sides = DemoModel(OnCpu(), {}, None, None, []), DemoModel(WithBase(), {}, None, None, [])

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert leave_a_core_for_the_page(one_side) == 1 and torch.get_num_threads() == 1
        torch.set_num_threads(1)  # nothing to leave
        assert leave_a_core_for_the_page(one_side) == 0 and torch.get_num_threads() == 1
        torch.set_num_threads(8)  # enough cores: the page does not matter
        assert leave_a_core_for_the_page(one_side) == 0 and torch.get_num_threads() == 8
        torch.set_num_threads(2)  # base and ELLA: each side on its own thread already
        assert leave_a_core_for_the_page(two_sides) == 0 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
