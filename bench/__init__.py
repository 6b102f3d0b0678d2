"""``make bench``: the broker measured against a bare endpoint, its issuer and itself.

See bench/README.md; run with ``python -m bench.run``.
"""
