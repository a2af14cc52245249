"""Trainer config presets as data files (*.yaml), read by longvila_trainer.config."""
