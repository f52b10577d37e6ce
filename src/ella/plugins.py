"""Extension points: how a world of one's own plugs into the core without the core importing it.

ShapesWorld (`ella.shapes`) is one such plugin. A plugin is a module with a `register(registry)`
function that names, as "module:attribute" strings, what it adds:

    registry.unet_classes["MyUNet"] = "my_world.unet:MyUNet"          # a UNet class, by its saved `_class_name`
    registry.dataset_schemes["myworld"] = "my_world.data:from_spec"   # train_data: myworld:...
    registry.vqa_backends["myjudge"] = "my_world.judge:MyBackend"      # ella bench dpg score --vqa myjudge
    registry.captioners["mycaptioner"] = "my_world.caption:make"       # ella caption --captioner mycaptioner[:ARG]
    registry.caption_checks["mycheck"] = "my_world.judge:agrees"      # ella caption --check mycheck
    registry.prompt_sources["myworld"] = "my_world.prompts:write_csv"  # ella feedback: prompts: myworld:...
    registry.planners["myplanner"] = "my_world.plan:plan"              # ella plan --planner myplanner (prompt -> Layout)
    registry.cli_commands["myworld"] = "my_world.cli:add_parser"       # ella myworld ...
    registry.bench_commands["myworld"] = "my_world.cli:add_bench_parser"  # ella bench myworld ...
    registry.default_model = "my_world.models:SHIPPED"                 # what `ella generate` uses without --model

Strings keep registration free: nothing is imported until it is used, so `ella --help` stays
fast. Plugins are the built-in ones (`BUILTIN`) and every module a package names in the
`ella.plugins` entry-point group (`[project.entry-points."ella.plugins"] myworld = "my_world.plugin"`).
"""

from __future__ import annotations

import functools
import importlib
import logging
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

BUILTIN = ("ella.shapes.plugin",)
ENTRY_POINT_GROUP = "ella.plugins"


@dataclass
class Registry:
    unet_classes: dict[str, str] = field(default_factory=dict)
    dataset_schemes: dict[str, str] = field(default_factory=dict)
    vqa_backends: dict[str, str] = field(default_factory=dict)
    captioners: dict[str, str] = field(default_factory=dict)  # name -> callable(arg: str) -> caption.Captioner
    caption_checks: dict[str, str] = field(default_factory=dict)  # name -> callable(image, caption) -> bool
    prompt_sources: dict[str, str] = field(default_factory=dict)  # scheme -> callable(spec, out_csv): prompts + questions
    planners: dict[str, str] = field(default_factory=dict)  # name -> callable(prompt) -> regions.Layout
    cli_commands: dict[str, str] = field(default_factory=dict)
    bench_commands: dict[str, str] = field(default_factory=dict)
    _default_model: str | None = None

    @property
    def default_model(self) -> str | None:
        return self._default_model

    @default_model.setter
    def default_model(self, target: str) -> None:
        """Set once: a second plugin that also names a default model is an error, never a silent replacement."""
        if self._default_model is not None and target != self._default_model:
            raise PluginConflict(f"two plugins set the default model: {self._default_model} and {target}; uninstall"
                                 " one, or pass --model")
        self._default_model = target


class PluginConflict(ValueError):
    """Two plugins claim what only one may have."""


def resolve(target: str):
    """The object a "module:attribute" string names (attributes may be dotted)."""
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    return obj


def _plugin_modules() -> list[str]:
    from importlib.metadata import entry_points

    names = list(BUILTIN)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.value not in names:
            names.append(ep.value)
    return names


@functools.cache
def registry() -> Registry:
    """The registry with every plugin registered (once per process)."""
    reg = Registry()
    for name in _plugin_modules():
        try:
            module = importlib.import_module(name)
        except ImportError as err:  # a broken third-party plugin must not take the core down
            logger.warning("ella plugin %s could not be imported: %s", name, err)
            continue
        module.register(reg)  # PluginConflict propagates: two defaults cannot both be served
    return reg


def default_model():
    """The model `ella generate` runs without --model (a plugin registers it), or None."""
    target = registry().default_model
    return None if target is None else resolve(target)


def lookup(table: str, key: str):
    """The registered object for `key` in one of the registry's tables, or None."""
    target = getattr(registry(), table).get(key)
    return None if target is None else resolve(target)
