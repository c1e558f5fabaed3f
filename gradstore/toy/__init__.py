"""Offline toy assets: a skill-labelled instruction corpus and a small pre-trained Llama."""
