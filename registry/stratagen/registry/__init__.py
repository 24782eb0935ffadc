"""The contract between the stratagen engine and its plugins."""
from .configs import ComponentConfig
from .errors import (ConfigError, IncompatibleComponentsError, MissingWeightsError, PluginLoadError,
                     StratagenError, UnknownComponentError)
from .hookspecs import hookimpl
from .interfaces import (UNKNOWN, AutoencoderOutput, Critic, CriticSlot, DecodeOrder, DecodeState, GenerativeModel,
                         MaskSchedule, MultiScaleTokenizer, Prior, PriorLoss, PriorSlot, Sampler, SampleOutput, Tokenizer)
from .manager import Component, PluginFailure, Provider, Registry, get_registry
from .sampling import SamplerConfig, Stage, StageSettings, check_sweep_values, stage_settings_of
from .tokens import (JOINT, LevelSpec, TokenGrids, resolve_level, split_grid, split_stream_key, stream_grid,
                     stream_key, stream_parts)

__all__ = [
    "JOINT", "UNKNOWN", "AutoencoderOutput", "Component", "ComponentConfig", "ConfigError", "Critic", "CriticSlot",
    "DecodeOrder", "DecodeState", "GenerativeModel", "IncompatibleComponentsError", "LevelSpec", "MaskSchedule",
    "MissingWeightsError", "MultiScaleTokenizer", "PluginFailure", "PluginLoadError", "Prior", "PriorLoss", "PriorSlot", "Provider",
    "Registry", "SampleOutput", "Sampler", "SamplerConfig", "Stage", "StageSettings", "StratagenError",
    "TokenGrids", "Tokenizer", "UnknownComponentError", "check_sweep_values", "get_registry", "hookimpl",
    "resolve_level", "split_grid", "split_stream_key", "stage_settings_of", "stream_grid", "stream_key", "stream_parts",
]
