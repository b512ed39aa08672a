"""Online RL machinery: rollouts (generation), rewards, KL control, macro-action segmenters."""
