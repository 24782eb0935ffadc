"""What a person watches and reads: TensorBoard logs and progress, PNG images and figures."""
