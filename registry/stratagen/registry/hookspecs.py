"""The pluggy hook specifications: one ``register`` callback per component kind.

A plugin module implements any of these hooks; each receives a ``register`` callable::

    from stratagen.registry import hookimpl

    @hookimpl
    def stratagen_register_schedules(register):
        register("quartic", QuarticSchedule)

``register(name, factory, config=None, tiny=None)``: ``factory`` builds the component from
the fields of ``config`` (a pydantic model with ``name: Literal[...]``, ``extra="forbid"``)
passed as keyword arguments, plus any wiring the engine supplies (e.g. a prior's
``target`` level). ``tiny`` optionally gives config fields that make the component small
enough to build and run in a second; the conformance tests use them. Components without settings (mask schedules, decode orders) pass no config.
"""
import pluggy

PROJECT = "stratagen"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def stratagen_register_tokenizers(register):
    """Register Tokenizer factories."""


@hookspec
def stratagen_register_priors(register):
    """Register Prior factories."""


@hookspec
def stratagen_register_samplers(register):
    """Register Sampler factories."""


@hookspec
def stratagen_register_schedules(register):
    """Register MaskSchedule factories (no config)."""


@hookspec
def stratagen_register_orders(register):
    """Register DecodeOrder factories (no config): which sampled tokens a decoding step keeps."""


@hookspec
def stratagen_register_critics(register):
    """Register Critic factories: components trained after a prior, on its samples."""


@hookspec
def stratagen_register_datasets(register):
    """Register Dataset factories."""


@hookspec
def stratagen_register_metrics(register):
    """Register sample-quality Metric factories."""


@hookspec
def stratagen_register_converters(register):
    """Register checkpoint converters: ``factory(**fields, out=RUN_URL)`` writes a run directory
    from another project's checkpoints and returns its :class:`stratagen.io.run.Run`."""


#: component kind -> hook name
KIND_HOOKS = {
    "tokenizer": "stratagen_register_tokenizers",
    "prior": "stratagen_register_priors",
    "sampler": "stratagen_register_samplers",
    "schedule": "stratagen_register_schedules",
    "order": "stratagen_register_orders",
    "critic": "stratagen_register_critics",
    "dataset": "stratagen_register_datasets",
    "metric": "stratagen_register_metrics",
    "converter": "stratagen_register_converters",
}
