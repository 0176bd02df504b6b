"""The YAML files people write: personas and scenarios, found and validated."""
