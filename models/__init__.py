"""Packaged data for vreason_local: the model registry (installed as ``vreason_local.registry_data``)."""
