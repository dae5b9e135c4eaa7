"""Reading and writing models: safetensors checkpoints, the streaming writer, atomic
outputs, downloads, model references, config.json checks, tokenizers and LoRA adapters."""
