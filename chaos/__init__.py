"""The chaos suite: ownersync's roles as processes under faults, checked against a model of the
expected owners. `python -m chaos --short` (about 3 minutes) or `python -m chaos` (8-10)."""
