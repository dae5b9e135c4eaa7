"""The embedded demo: tiny real Llama experts trained on synthetic capabilities."""
