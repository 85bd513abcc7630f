"""Base models and how they are loaded: backends that give a 4-bit base with a LoRA adapter
(`peft` anywhere, `unsloth` on a CUDA GPU), and the offline `tiny` model."""
