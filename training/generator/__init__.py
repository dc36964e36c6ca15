"""GRPO fine-tuning of the generator's LoRA and emotion adapter (config, policies, rewards, trainer, export)."""
