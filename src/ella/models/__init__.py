from .checkpoint import CheckpointError
from .connector import CONNECTOR_TYPES, ELLA, PRESETS

__all__ = ["CONNECTOR_TYPES", "ELLA", "PRESETS", "CheckpointError"]
