"""`ella demo` against `ella generate`, side by side in one run: the time from a click on
Generate to both images (base and ELLA) on the page, in headless Chromium, and the time the CLI's
own generation (`ella.generate.render`, the same function) takes for the same two images. Main
prompt, 25 steps with CFG, one seed, the shipped model on the CPU; best, median and worst of N pairs
(a CLI run, then a click). For comparison, the whole `ella generate --compare` command too, twice.

    python benchmarks/demo_latency.py [--runs 3] [--out benchmarks/results/demo_latency_cpu.json]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from ella.shapes.catalog import MAIN_PROMPT as PROMPT

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

IDLE_SECONDS = 5
# Timed inside the page, from the click to both galleries showing their new images, loaded: no
# WebDriver polling (its 0.5 s period quantized the time and its requests cost the browser CPU).
# Checked when the page changes or an image loads, not on a timer, so that it costs the page little.
CLICK_AND_WAIT = """
const [seed, done] = arguments;
const images = () => [...document.querySelectorAll('#base-gallery img, #ella-gallery img')];
const before = new Set(images().map(img => img.src));
const start = performance.now();
const check = () => {
  const now = images();
  const ready = document.getElementById('command').textContent.includes(`--seed ${seed} `) && now.length >= 2
    && now.every(img => !before.has(img.src) && img.complete && img.naturalWidth > 0);
  if (!ready) return;
  observer.disconnect();
  document.removeEventListener('load', check, true);
  done((performance.now() - start) / 1000);
};
const observer = new MutationObserver(check);
observer.observe(document.body, {subtree: true, childList: true, attributes: true, characterData: true});
document.addEventListener('load', check, true);  // an image loaded (load does not bubble: captured)
document.querySelector('#generate').click();
"""


# Counts the page's calls to the browser's own requestAnimationFrame (run before any page script).
COUNT_FRAMES = """
window.animationFrames = 0;
const request = window.requestAnimationFrame.bind(window);
window.requestAnimationFrame = (callback) => { window.animationFrames++; return request(callback); };
"""

def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait
    from startup import report
    from test_demo import _browser

    from ella.demo import DemoModel, build_app, leave_a_core_for_the_page
    from ella.generate import COMPARE, render
    from ella.shapes.models import SHIPPED

    cli_threads = torch.get_num_threads()
    model = DemoModel(SHIPPED.load("tsc"), {**SHIPPED.defaults, "images": 1}, SHIPPED, "tsc", [])  # one seed
    steps, guidance = model.defaults["steps"], model.defaults["guidance"]
    render(model.pipe, PROMPT, COMPARE, 1001, 1, steps, guidance)  # warm-up
    leave_a_core_for_the_page(model)  # as `ella demo` does
    app = build_app(model)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    browser, why = _browser()
    if browser is None:
        raise SystemExit(why)
    import psutil

    server = psutil.Process()

    def cpu(procs):
        return sum(sum(p.cpu_times()[:2]) for p in procs if p.is_running())

    @contextlib.contextmanager
    def browser_stopped(browser_procs):
        """No page is open when the CLI runs."""
        for p in browser_procs:
            p.suspend()
        try:
            yield
        finally:
            for p in browser_procs:
                p.resume()

    def cli_run(browser_procs, threads):
        """The CLI's generation, torch's threads as the CLI has them."""
        demo_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with browser_stopped(browser_procs):
                start, cpu0 = time.perf_counter(), time.process_time()
                render(model.pipe, PROMPT, COMPARE, 1001, 1, steps, guidance)
                return time.perf_counter() - start, time.process_time() - cpu0
        finally:
            torch.set_num_threads(demo_threads)

    def whole_command(browser_procs, out_dir):
        """`ella generate --compare` as a user types it: start-up, loading, generation, files."""
        command = [sys.executable, "-m", "ella.cli", "generate", PROMPT, "--compare", "--seed", "2001",
                   "--num-images", "1", "--quiet", "--out", os.path.join(out_dir, "cli.png")]
        with browser_stopped(browser_procs):
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            return time.perf_counter() - start

    cli, cli_cpu, clicks, browser_cpu, server_cpu = [], [], [], [], []
    browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": COUNT_FRAMES})
    try:
        browser.get(f"http://127.0.0.1:{port}")
        wait = WebDriverWait(browser, 300)
        wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#prompt textarea"))).send_keys(PROMPT)
        # After the page loaded: its renderer process starts with it.
        browser_procs = psutil.Process(browser.service.process.pid).children(recursive=True)
        browser.set_script_timeout(300)
        seed_box = browser.find_element(By.CSS_SELECTOR, "#seed input")
        time.sleep(2)  # the page settles
        b0, frames0 = cpu(browser_procs), browser.execute_script("return window.animationFrames")
        time.sleep(IDLE_SECONDS)
        idle_cpu = (cpu(browser_procs) - b0) / IDLE_SECONDS
        idle_frames = (browser.execute_script("return window.animationFrames") - frames0) / IDLE_SECONDS
        # Pairs, a CLI run then a click, so that both see the machine in the same state (this
        # shared CPU's speed drifts by 20-30% over minutes); the first click warms the page up.
        for i in range(args.runs + 1):
            seed_box.send_keys(Keys.CONTROL, "a")
            seed_box.send_keys(str(2001 + i))
            if i:
                seconds, cpu_seconds = cli_run(browser_procs, cli_threads)
                cli.append(seconds)
                cli_cpu.append(cpu_seconds)
            b0, s0 = cpu(browser_procs), cpu([server])
            seconds = browser.execute_async_script(CLICK_AND_WAIT, 2001 + i)
            if i:
                clicks.append(seconds)
                browser_cpu.append(cpu(browser_procs) - b0)
                server_cpu.append(cpu([server]) - s0)
        with tempfile.TemporaryDirectory() as out_dir:
            commands = [whole_command(browser_procs, out_dir) for _ in range(2)]
    finally:
        browser.quit()
        app.close()
    ratios = sorted(click / c for click, c in zip(clicks, cli))
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "click to both images (s, best/median/worst)": [min(clicks), statistics.median(clicks), max(clicks)],
        "CLI generation of the same two images (s, best/median/worst)": [min(cli), statistics.median(cli), max(cli)],
        "ratio click/CLI, pair by pair (median, best, worst)": [statistics.median(ratios), ratios[0], ratios[-1]],
        "CPU seconds per click: browser (Chromium), server (the demo's process), mean": [
            statistics.mean(browser_cpu), statistics.mean(server_cpu)],
        "CPU seconds of the CLI generation, mean": statistics.mean(cli_cpu),
        "the page open, before any click: browser CPU-s per second, animation frames per second": [
            idle_cpu, idle_frames],
        "the whole `ella generate --compare` command, for comparison (s, best/worst of 2)": [
            min(commands), max(commands)],
        "runs": args.runs,
        "per pair: click (s), CLI (s)": [[round(click, 4), round(c, 4)] for click, c in zip(clicks, cli)],
    }
    report(result, args.out)


if __name__ == "__main__":
    main()
