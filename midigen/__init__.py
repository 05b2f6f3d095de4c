"""midigen: GPT-2 124M on MIDI event tokens — prepare, train, sample, render, evaluate."""

__version__ = "0.1.0"
