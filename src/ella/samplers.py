"""Samplers by short name: the one list the CLI's help, the demo and the ShapesWorld notes read.
Torch-free (diffusers is imported where a class is looked up)."""

from __future__ import annotations

# Short names for the common diffusers samplers; any other diffusers scheduler class name works too.
SCHEDULERS = {
    "dpm++": "DPMSolverMultistepScheduler", "unipc": "UniPCMultistepScheduler", "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler", "pndm": "PNDMScheduler", "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler", "heun": "HeunDiscreteScheduler",
}


def scheduler_class(name: str) -> type:
    """A diffusers scheduler class, by short name (`SCHEDULERS`) or class name. Build it with
    `.from_config(pipe.scheduler.config)`: the model's own noise schedule and prediction type
    (epsilon or v) then carry over to the new sampler."""
    import diffusers

    class_name = SCHEDULERS.get(name.lower(), name)
    cls = getattr(diffusers, class_name, None) if class_name.endswith("Scheduler") else None
    if not isinstance(cls, type):
        raise ValueError(f"unknown scheduler {name!r}: use one of {', '.join(SCHEDULERS)} or a diffusers scheduler"
                         " class name")
    from diffusers.utils import DummyObject

    if isinstance(cls, DummyObject):  # diffusers' stand-in for a sampler whose extra dependency is missing
        raise ValueError(f"scheduler {class_name} needs {' and '.join(cls._backends)} installed")
    return cls
