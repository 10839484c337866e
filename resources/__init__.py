"""One module per outside system; `resources.settings` chooses the implementations from the environment."""
