"""Generation: the generator protocol, the diffusers and ComfyUI backends, the emotion adapter, sweeps."""
