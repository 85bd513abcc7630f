"""Export a registered adapter: adapter, merged safetensors, GGUF, Ollama."""
