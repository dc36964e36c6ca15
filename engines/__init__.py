"""ComfyUI-free engines: emotion space, scorers, refiner, feedback loop, adapter, generators."""
