import os

import pytest
import torch

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    # pytest -n N: the workers share the cores, so each takes its share of torch's threads
    # (two workers with two threads each on two cores stall each other's parallel ops).
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def _ella_cache(request, tmp_path_factory):
    # What the library caches (a GGUF LLM's converted folder) goes to pytest's own cache folder,
    # kept between runs of this checkout, never to the user's.
    cache = getattr(request.config, "cache", None)
    return str(cache.mkdir("ella-cache")) if cache is not None else str(tmp_path_factory.mktemp("ella-cache"))


@pytest.fixture(autouse=True)
def _offline(monkeypatch, _ella_cache):
    # Nothing in the default suite may reach a model hub, or write to the user's cache.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("ELLA_CACHE", _ella_cache)
    torch.manual_seed(0)


@pytest.fixture
def tiny_pipe():
    from ella import ELLAStableDiffusionPipeline
    from ella.testing import tiny_components

    pipe = ELLAStableDiffusionPipeline(**tiny_components(with_clip=True), text_mode="flexible")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def shipped_pipeline():
    """The shipped ShapesWorld pipelines, loaded once per connector for the whole session:
    `shipped_pipeline("tsc")`. Tests must not change them (scheduler, components)."""
    import functools

    from ella.shapes.models import load_shapes_pipeline

    return functools.cache(lambda connector="tsc": load_shapes_pipeline(connector=connector))


def write_tar(path, members: dict[str, bytes]) -> None:
    """A WebDataset-style tar shard holding `members` ({name: bytes}), in order."""
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
