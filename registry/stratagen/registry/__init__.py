"""The contract between the stratagen engine and its plugins."""
from .configs import ComponentConfig
from .errors import (ConfigError, IncompatibleComponentsError, MissingWeightsError, PluginLoadError,
                     StratagenError, UnknownComponentError)
from .hookspecs import hookimpl
from .interfaces import (UNKNOWN, AutoencoderOutput, GenerativeModel, MaskSchedule, Prior, PriorLoss,
                         PriorSlot, Sampler, SampleOutput, Tokenizer)
from .manager import Component, PluginFailure, Provider, Registry, get_registry
from .tokens import LevelSpec, TokenGrids, split_stream_key, stream_key

__all__ = [
    "UNKNOWN", "AutoencoderOutput", "Component", "ComponentConfig", "ConfigError", "GenerativeModel",
    "IncompatibleComponentsError",
    "LevelSpec", "MaskSchedule", "MissingWeightsError", "PluginFailure", "PluginLoadError", "Prior", "PriorLoss",
    "PriorSlot", "Provider", "Registry", "SampleOutput", "Sampler", "StratagenError", "TokenGrids", "Tokenizer",
    "UnknownComponentError", "get_registry", "hookimpl", "split_stream_key", "stream_key",
]
