"""Training a run: the plan of stages, the optimisation loop, each component kind, the token cache
and what a resumed run may change."""
