"""The training run on the host: the pipeline, recipes, model, tokens, callbacks, evaluation, merge."""
