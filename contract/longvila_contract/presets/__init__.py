"""Trainer config presets as data files (*.yaml), read by longvila_contract.config; the stage
type table (longvila_contract.stages) names the preset of each type."""
