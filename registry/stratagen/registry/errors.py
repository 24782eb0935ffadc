"""User-facing errors. The CLI prints their message on one line, without a traceback."""


class StratagenError(Exception):
    """A mistake the user can fix (bad config, unknown plugin, missing file...)."""


class ConfigError(StratagenError):
    """A run or compare config that does not validate."""


class UnknownComponentError(StratagenError):
    """A component name that no installed plugin provides."""


class IncompatibleComponentsError(StratagenError):
    """Components that are each valid but cannot work together (e.g. sampler vs tokenizer)."""


class PluginLoadError(StratagenError):
    """A plugin failed to load while failures are fatal (STRATAGEN_STRICT_PLUGINS=1)."""


class MissingWeightsError(StratagenError):
    """A feature needs a local weights file that was not given or does not exist."""
