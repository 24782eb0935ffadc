"""Where the work runs: torchrun processes, a component spread over them, results gathered on rank 0,
and the floating-point type each device computes in."""
