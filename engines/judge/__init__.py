"""The judge: reads valence/arousal from images (LVLM digit readout, colour heuristic) and writes text."""
