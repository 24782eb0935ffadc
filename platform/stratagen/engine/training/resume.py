"""What a changed config would invalidate in a run being resumed (``stratagen train --resume``).

A trained component depends on its own config section, on the sections of the components it
was trained from (a prior on its tokenizers, a critic on its prior, an augmented prior on the
priors of its conditions), on the data and on the run's seed. Resuming with any of those
changed would keep weights and tokens made from the old values, so it is refused, naming the
key and how to start over. Settings that change no weights (device, attention kernel, logging
and checkpoint intervals, sampler, evaluation) may change freely, and so may sections of
components that are not trained yet. So may the ways of computing a step (``parallel``,
``accumulate``, ``checkpoint_activations``, ``compile``): the global batch and the objective stay,
and the weights move as they would have, up to float rounding and, when ``accumulate`` or the
number of processes changes, to the micro-batches' random draws.

One change to a component's own section is an extension, not a new model: raising its
``train.steps`` under a constant learning rate (past any warmup) continues it from its last
checkpoint exactly as a run configured that long from the start would have gone on (the same
per-step seeds and learning rates). Anything trained from it is still checked against the old value.

Each component is checked against the config it was trained with (``<kind>s/<id>/config.yaml``,
written when it starts training), not against the run's ``config.yaml``: several configs may
share one run directory (a critic variant adds critics to a run, and ``stratagen compare`` trains
both), and whichever trained last must not stand for the others.
"""
from __future__ import annotations

from typing import Any, Iterator

import yaml

from stratagen import config as cfg
from stratagen.io import checkpoint
from stratagen.io.run import CONFIG, Run
from stratagen.registry import ConfigError, StratagenError, split_stream_key

#: keys (under any section) that change no weights, or only how a step is computed
FREE_KEYS = frozenset({"log_every", "checkpoint_every", "image_every",
                       "parallel", "accumulate", "checkpoint_activations", "compile"})
#: what every component depends on; priors and critics also on the cached views
SHARED = (("data",), ("run", "seed"))
TOKEN_SHARED = SHARED + (("loader", "views"),)

Key = tuple[str, ...]


def _flatten(tree: Any, prefix: Key = ()) -> Iterator[tuple[Key, Any]]:
    if isinstance(tree, dict) and tree:
        for key, value in tree.items():
            yield from _flatten(value, prefix + (str(key),))
    else:
        yield prefix, tree


def _inputs(config: Any, kind: str, cid: str) -> list[Key]:
    """The config sections component ``cid`` of ``kind`` was trained from (its own included)."""
    if kind == "tokenizer":
        owner = config.tokenizers[cid].share or cid
        return [*SHARED, ("tokenizers", cid), ("tokenizers", owner)]
    if kind == "critic":
        return [("critics", cid), *_inputs(config, "prior", config.critics[cid].prior)]
    entry = config.priors[cid]
    keys: list[Key] = [*TOKEN_SHARED, ("priors", cid)]
    for stream in [entry.target, *entry.conditions]:
        keys += _inputs(config, "tokenizer", split_stream_key(stream)[0])
    if entry.condition_augmentation > 0:
        for pid, other in config.priors.items():
            if other.target in entry.conditions:
                keys += _inputs(config, "prior", pid)
    return keys


def _stored(url: str) -> dict[str, Any]:
    """A stored config with today's defaults filled in (as written, if it no longer validates)."""
    try:
        return cfg.load_config(url).model_dump(mode="json")
    except ConfigError:
        try:
            stored = yaml.safe_load(checkpoint.read_bytes(url)) or {}
        except yaml.YAMLError:
            stored = None
        if not isinstance(stored, dict):
            raise StratagenError(f"{url}: not a run config (YAML mapping); the resume check needs it") from None
        return stored


def _extends(key: Key, kind: str, cid: str, old: dict[Key, Any], new: dict[Key, Any]) -> bool:
    """Whether ``key`` is component ``cid``'s own ``train.steps``, raised under a constant learning
    rate whose warmup ended within the old steps: the longer run's first steps are the old run."""
    section = (f"{kind}s", cid, "train")
    if key != section + ("steps",) or not isinstance(old.get(key), int) or not isinstance(new.get(key), int):
        return False
    schedule, warmup = section + ("lr_schedule",), section + ("warmup_steps",)
    return (new[key] > old[key] and old.get(schedule) == new.get(schedule) == "constant"
            and old.get(warmup) == new.get(warmup) and (new.get(warmup) or 0) <= old[key])


def extends_record(run: Run, config: Any, kind: str, cid: str) -> bool:
    """Whether ``config`` gives the component other training steps than its record: an extension that
    :func:`check_unchanged` let through, which the record must then hold (so steps cannot be lowered
    back under the longer weights)."""
    stored = _stored(run.component_url(kind, cid, CONFIG))
    recorded = ((stored.get(f"{kind}s") or {}).get(cid) or {}).get("train", {}).get("steps")
    return recorded != getattr(config, f"{kind}s")[cid].train.steps


def keep_records(run: Run) -> None:
    """Before the run's ``config.yaml`` is replaced: give every trained component without a config
    record of its own (a run written before those records) the one it was checked against until
    now, so a config that shares the run directory and lacks that component cannot take it away."""
    url = run.path(CONFIG)
    if not checkpoint.exists(url):
        return
    text = checkpoint.read_bytes(url)
    try:
        stored = yaml.safe_load(text)
    except yaml.YAMLError:
        return
    for section in ("tokenizers", "priors", "critics"):
        entries = stored.get(section) if isinstance(stored, dict) else None
        for cid in entries if isinstance(entries, dict) else {}:
            kind = section[:-1]
            if run.started(kind, cid) and not run.trained_with(kind, cid):
                checkpoint.write_bytes_atomic(run.component_url(kind, cid, CONFIG), text)


def _trained_with(run: Run, kind: str, cid: str) -> str | None:
    """The config a component was trained with: its own record, else (runs written before those
    records) the run's config; None if neither exists."""
    if run.trained_with(kind, cid):
        return run.component_url(kind, cid, CONFIG)
    return run.path(CONFIG) if run.exists() else None


def check_unchanged(run: Run, config: Any, trained: list[tuple[str, str]], action: str = "--resume") -> None:
    """Refuse to resume ``run`` with ``config`` if a change reaches a ``trained`` (kind, id) component;
    ``action`` names what would use the run so (``--resume``, a compare variant)."""
    new = dict(_flatten(config.model_dump(mode="json")))
    stored: dict[str, dict[Key, Any]] = {}
    for kind, cid in trained:
        url = _trained_with(run, kind, cid)
        if url is None:
            continue
        if url not in stored:
            stored[url] = dict(_flatten(_stored(url)))
        old = stored[url]
        if not any(key[:2] == (f"{kind}s", cid) for key in old):
            continue  # a run written before the components' own records, whose config names it no more
        inputs = _inputs(config, kind, cid)
        hits = sorted(k for k in old.keys() | new.keys()
                      if old.get(k) != new.get(k) and not (k and k[-1] in FREE_KEYS)
                      and any(k[:len(prefix)] == prefix for prefix in inputs)
                      and not _extends(k, kind, cid, old, new))
        if hits:
            steps = (f"{kind}s", cid, "train", "steps")
            key = next((k for k in hits if k != steps), hits[0])  # what keeps raised steps from extending it
            more = f" (and {len(hits) - 1} more)" if len(hits) > 1 else ""
            why = (f"; raising train.steps extends a component only under lr_schedule: constant with its warmup "
                   f"within the old steps, and steps cannot be lowered" if steps in hits else "")
            raise StratagenError(
                f"{run.url}: {action} with a changed config: {'.'.join(key)} was {old.get(key)!r}, now "
                f"{new.get(key)!r}{more}, and {kind} {cid!r} was trained with the old value{why}; start over in "
                f"another run.dir, or delete {run.path(kind + 's', cid)} and what was trained from it")
