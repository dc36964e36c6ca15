"""The feedback loop: generate, judge, refine the prompt, steer toward the target; its plot."""
