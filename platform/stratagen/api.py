"""The public Python API: what every CLI verb calls, and what scripts and notebooks use.

::

    from stratagen.api import Pipeline, load, train
    pipe = train(load("configs/demo/maskgit_f16.yaml"), resume=True)   # trains what is missing
    pipe = Pipeline.from_run("runs/demo/maskgit_f16")                   # or load a trained run
    images = pipe.sample(classes=[0, 1, 2], seed=0).images             # [3, 3, H, W] in [-1, 1]

The engine never imports this module; it sits on top.
"""
from __future__ import annotations

from stratagen.engine.build import BuiltRun, build, build_metrics
from stratagen.engine.comparison.compare import CompareResult, check_compare, compare, show_compare
from stratagen.engine.pipeline import Pipeline, load_config, resolve_device, train

load = load_config

__all__ = ["BuiltRun", "CompareResult", "Pipeline", "build", "build_metrics", "check_compare", "compare", "load",
           "load_config", "resolve_device", "show_compare", "train"]
