"""The published setting as a user types it, checked offline: a local Hugging Face cache holds tiny
random weights under the real repository ids and file names, and the README's own commands run
on it as printed."""

import os
import re
import shlex
import subprocess
import sys

import pytest
import torch

from ella import ELLA
from ella.published import ELLA_REPO, ELLA_SD15_FILE, REMOVED_HUB_IDS
from ella.testing import tiny_hub_cache

ROOT = os.path.join(os.path.dirname(__file__), "..")


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("hub")
    return str(cache), tiny_hub_cache(str(cache))


@pytest.fixture
def offline_hub(hub_cache, monkeypatch):
    """This process's huggingface_hub reads the cache above, offline (its constants are read at import)."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", hub_cache[0])
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return hub_cache


def readme_section(title: str) -> str:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end]


def run_as_user(args: list[str], cache: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_CACHE": cache, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.path.join(ROOT, "src")}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_the_readme_published_setting_runs_as_printed_from_the_hub_cache(hub_cache, tmp_path):
    from PIL import Image

    section = readme_section("The published setting")
    command = next(line for line in section.splitlines() if line.startswith("ella generate") and "--preset" in line)
    snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    out = shlex.split(command)[shlex.split(command).index("--out") + 1]
    cli = run_as_user([sys.executable, "-m", "ella.cli"] + shlex.split(command)[1:], hub_cache[0], tmp_path / "cli")
    assert cli.returncode == 0, cli.stderr
    assert "on the CPU" in cli.stderr  # what it will cost, said before it runs
    assert Image.open(tmp_path / "cli" / out).size == (512, 512)  # the web demo's size
    api = run_as_user([sys.executable, "-c", snippet], hub_cache[0], tmp_path / "api")
    assert api.returncode == 0, api.stderr
    saved = re.search(r'\.save\("([^"]+)"\)', snippet).group(1)
    assert Image.open(tmp_path / "api" / saved).size == (512, 512)


@pytest.fixture(autouse=True)
def _folders(tmp_path):
    (tmp_path / "cli").mkdir()
    (tmp_path / "api").mkdir()


def test_the_connector_by_hub_id_file_path_and_address(offline_hub):
    _, folders = offline_hub
    official = ELLA.from_single_file(os.path.join(folders[ELLA_REPO], ELLA_SD15_FILE), heads=8)
    for name in (ELLA_REPO, f"{ELLA_REPO}/{ELLA_SD15_FILE}",
                 f"https://huggingface.co/{ELLA_REPO}/blob/main/{ELLA_SD15_FILE}"):
        loaded = ELLA.from_pretrained(name) if "/blob/" not in name and name.count("/") == 1 \
            else ELLA.from_single_file(name)
        assert loaded.config.heads == 8 and all(
            torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), official.state_dict().values())), name


def test_a_save_pretrained_folder_on_the_hub_loads_by_id(offline_hub, tmp_path):
    cache, _ = offline_hub
    model = ELLA.from_preset("tiny")
    repo = os.path.join(cache, "models--someone--my-connector")
    os.makedirs(os.path.join(repo, "refs"))
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write("1" * 40)
    model.save_pretrained(os.path.join(repo, "snapshots", "1" * 40))
    again = ELLA.from_pretrained("someone/my-connector")
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))


def test_missing_connectors_are_one_line_that_names_them(offline_hub, tmp_path):
    with pytest.raises(ValueError, match="connector nobody/no-such-connector .*nor in the local Hugging Face cache"):
        ELLA.from_pretrained("nobody/no-such-connector")
    for path in (str(tmp_path / "missing"), "./missing", "missing"):
        with pytest.raises(FileNotFoundError, match=f"connector not found: {re.escape(path)}"):
            ELLA.from_pretrained(path)


def test_the_cli_says_which_hub_id_is_missing(hub_cache, tmp_path):
    from ella.published import FLAN_T5_XL, SD15

    result = run_as_user([sys.executable, "-m", "ella.cli", "generate", "a cat", "--model", SD15, "--ella",
                          "nobody/no-such-connector", "--llm", FLAN_T5_XL], hub_cache[0], tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert lines[-1].startswith("ella: error: connector nobody/no-such-connector")
    preset_and_model = run_as_user([sys.executable, "-m", "ella.cli", "generate", "a cat", "--preset", "sd1.5-t5xl",
                                    "--model", SD15], hub_cache[0], tmp_path)
    assert preset_and_model.returncode == 2 and "drop --model" in preset_and_model.stderr


def test_no_removed_hub_id_is_named_anywhere():
    """runwayml's SD1.5 was deleted from the hub: a README, config or default naming it fails for users."""
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and not d.endswith(".egg-info") and d != "__pycache__"]
        for name in files:
            path = os.path.join(folder, name)
            if os.path.samefile(path, os.path.join(ROOT, "src", "ella", "published.py")):
                continue  # the list itself
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except (UnicodeDecodeError, OSError):
                continue  # images and weights
            found += [f"{os.path.relpath(path, ROOT)}: {hub_id}" for hub_id in REMOVED_HUB_IDS if hub_id in text]
    assert not found


@pytest.mark.gpu
def test_the_connector_precomputed_by_default_on_cuda_gives_the_same_images():
    from ella import ELLAStableDiffusionPipeline
    from ella.testing import tiny_components

    pipe = ELLAStableDiffusionPipeline(**tiny_components()).to("cuda")
    pipe.set_progress_bar_config(disable=True)

    def draw(**kw):
        return pipe("a red circle", num_inference_steps=5, generator=torch.Generator().manual_seed(0),
                    output_type="pt", **kw).images

    torch.testing.assert_close(draw(), draw(precompute_connector=False), atol=1e-5, rtol=0)


def test_the_preset_serves_the_demo_and_the_dpg_bench(hub_cache, tmp_path):
    demo = run_as_user([sys.executable, "-c", "from ella.cli import build_parser; from ella.demo import load_demo_model;"
                        " a = build_parser().parse_args(['demo', '--preset', 'sd1.5-t5xl']); a.scheduler = None;"
                        " m = load_demo_model(a);"
                        " print(m.has_base, m.defaults['steps'], m.defaults['guidance'], m.cli_model_args)"],
                       hub_cache[0], tmp_path)
    assert demo.returncode == 0, demo.stderr
    assert demo.stdout.split() == ["True", "25", "10.0", "['--preset',", "'sd1.5-t5xl']"]  # SD1.5's CLIP: the base side
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "item.txt").write_text("a red apple on a table\n")
    bench = run_as_user([sys.executable, "-m", "ella.cli", "bench", "dpg", "generate", "--preset", "sd1.5-t5xl",
                         "--prompts", "prompts", "--out", "images", "--samples", "1", "--steps", "2"],
                        hub_cache[0], tmp_path)
    assert bench.returncode == 0, bench.stderr
    import json

    manifest = json.loads(next((tmp_path / "images").glob("*.json")).read_text())
    assert manifest["preset"] == "sd1.5-t5xl" and manifest["ella"] == ELLA_REPO and manifest["guidance"] == 10.0
