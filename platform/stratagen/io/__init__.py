"""Storage below the engine and the evaluation code: run directories and atomic safetensors IO."""
