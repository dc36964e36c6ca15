"""Fine-tuning the LVLM judge (soft-label digit readout or GRPO on the paper's format) and evaluating it."""
