"""Measuring a trained run: sample and reconstruction quality, and speed against the hardware."""
