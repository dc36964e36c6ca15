"""Headless GRPO training of the generator LoRA and emotion adapter. Reuses the engines; never imports nodes."""
