"""Training data: built-in synthetic scenes, and readers for user data (CSV, WebDataset, text
pairs). Workers only decode images; text is rendered in the training step."""
