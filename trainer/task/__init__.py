"""A task: its schema, its YAML, its rules and its data rows. The laptop imports this too: no torch,
transformers or datasets at module level."""
