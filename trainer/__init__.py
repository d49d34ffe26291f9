"""Turns the store's feedback into LoRA adapters: datasets, TRL training, the eval gate, the service."""
