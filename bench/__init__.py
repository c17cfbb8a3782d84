"""`make bench`: ownersync end to end against the real Postgres and RabbitMQ, beside a raw baseline.

Not a test: it prints figures beside their targets and always exits 0 when it could measure.
See `python -m bench --help`.
"""
