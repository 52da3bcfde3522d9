"""Experiment configs: one `get_config()` per released VRT model / task, plus the CPU demo."""
