"""Side-by-side comparison runs: the plan checked before any work, the runs, spreads over seeds and
the paper's claims with verdicts."""
