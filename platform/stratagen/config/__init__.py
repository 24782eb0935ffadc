"""Run and compare configs: YAML files validated against a schema assembled from installed plugins.

- :mod:`.files`: reading, ``extends`` chains, merging and ``--set`` overrides;
- :mod:`.schema`: the run-config model (data, tokenizers, priors, critics, sampler, eval);
- :mod:`.compare`: the compare-config model (variants, eval, sweeps);
- :mod:`.errors`: one short line per validation error.
"""
from stratagen.config.compare import is_compare_config, load_compare_config
from stratagen.config.files import apply_overrides, deep_merge, load_raw, read_yaml
from stratagen.config.schema import (TrainSettings, dump_config, json_schema, load_config, run_config_model,
                                     validate)

__all__ = ["TrainSettings", "apply_overrides", "deep_merge", "dump_config", "is_compare_config", "json_schema",
           "load_compare_config",
           "load_config", "load_raw", "read_yaml", "run_config_model", "validate"]
