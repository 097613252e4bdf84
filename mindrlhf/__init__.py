"""mindrlhf: the InstructGPT recipe (SFT → reward model → PPO), plus DPO and GRPO, on MindSpore."""
__version__ = "0.1.0"
