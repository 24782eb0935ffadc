"""The engine: builds models from configs, trains, tokenizes, samples; never imports a plugin by name.

At the door: :mod:`.build` turns a run config into components, :mod:`.pipeline` trains them and
samples with them, :mod:`.editing` edits images with a pipeline. The rooms, grouped by job:

- ``reporting/``: the TensorBoard writer and progress lines, PNG images and figures, the dashboard check;
- ``devices/``: the torchrun processes, how a component trains across them, work gathered on
  rank 0, and the number type each device computes in;
- ``training/``: the training plan, the optimisation loop, each component kind's training, the
  token cache, and what a resumed run may change;
- ``evaluation/``: sample and reconstruction quality, and speed (seconds, FLOPs, MFU);
- ``comparison/``: side-by-side compare runs, their check before any work, spreads over seeds
  and the paper's claims.

Imports point one way, in this order (a module imports only its own place or earlier ones):
reporting, devices, training, build, pipeline, editing, evaluation, comparison
(``tests/test_import_graph.py`` checks it).
"""
