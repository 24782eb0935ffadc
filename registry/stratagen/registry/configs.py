"""Base class of every component's config model."""
from pydantic import BaseModel, ConfigDict


class ComponentConfig(BaseModel):
    """A component's settings: ``name: Literal[...]`` picks the plugin; unknown keys are errors.

    Subclasses declare ``name`` and fields whose names equal the component's constructor
    arguments: the registry passes them as keyword arguments.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), frozen=True)
