"""Talking to models: endpoint settings, clients and retries, probing, the embedded server."""
