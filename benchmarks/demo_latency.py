"""`ella demo` against `ella generate`, side by side in one run: the time from a click on
Generate to both images (base and ELLA) on the page, in headless Chromium, and the time the CLI's
own generation (`ella.generate.render`, the same function) takes for the same two images. Main
prompt, 25 steps with CFG, one seed, the shipped model on the CPU; best and worst of N clicks.

    python benchmarks/demo_latency.py [--runs 3] [--out benchmarks/results/demo_latency_cpu.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import sys
import time

from ella.shapes.catalog import MAIN_PROMPT as PROMPT

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))


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
    from ella.shapes.catalog import SHIPPED

    model = DemoModel(SHIPPED.load("tsc"), {**SHIPPED.defaults, "images": 1}, SHIPPED, "tsc", [])  # one seed
    steps, guidance = model.defaults["steps"], model.defaults["guidance"]
    render(model.pipe, PROMPT, COMPARE, 1001, 1, steps, guidance)  # warm-up
    cli, cli_cpu = [], []
    for _ in range(args.runs):
        start, cpu0 = time.perf_counter(), time.process_time()
        render(model.pipe, PROMPT, COMPARE, 1001, 1, steps, guidance)
        cli.append(time.perf_counter() - start)
        cli_cpu.append(time.process_time() - cpu0)

    leave_a_core_for_the_page(model.pipe)  # as `ella demo` does
    app = build_app(model)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    browser, why = _browser()
    if browser is None:
        raise SystemExit(why)
    clicks, browser_cpu, server_cpu = [], [], []
    import psutil

    server = psutil.Process()
    browser_procs = psutil.Process(browser.service.process.pid).children(recursive=True)

    def cpu(procs):
        return sum(sum(p.cpu_times()[:2]) for p in procs if p.is_running())
    try:
        browser.get(f"http://127.0.0.1:{port}")
        wait = WebDriverWait(browser, 300)
        wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#prompt textarea"))).send_keys(PROMPT)
        button = browser.find_element(By.CSS_SELECTOR, "#generate")
        seed_box = browser.find_element(By.CSS_SELECTOR, "#seed input")
        for i in range(args.runs + 1):  # the first click warms the page up; each click a new seed
            seed_box.send_keys(Keys.CONTROL, "a")
            seed_box.send_keys(str(2001 + i))
            b0, s0, start = cpu(browser_procs), cpu([server]), time.perf_counter()
            button.click()
            wait.until(lambda b, s=2001 + i: f"--seed {s} " in b.find_element(By.ID, "command").text)
            if i:
                clicks.append(time.perf_counter() - start)
                browser_cpu.append(cpu(browser_procs) - b0)
                server_cpu.append(cpu([server]) - s0)
    finally:
        browser.quit()
        app.close()
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "click to both images (s, best/worst)": [min(clicks), max(clicks)],
        "CLI generation of the same two images (s, best/worst)": [min(cli), max(cli)],
        "ratio (best/best)": min(clicks) / min(cli),
        "CPU seconds per click: browser (Chromium), server (the demo's process), mean": [
            sum(browser_cpu) / len(browser_cpu), sum(server_cpu) / len(server_cpu)],
        "CPU seconds of the CLI generation, mean": sum(cli_cpu) / len(cli_cpu),
    }
    report(result, args.out)


if __name__ == "__main__":
    main()
