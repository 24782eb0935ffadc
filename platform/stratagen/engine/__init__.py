"""The engine: builds models from configs, trains, tokenizes, samples; never imports a plugin by name."""
