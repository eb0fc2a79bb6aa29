"""The layer everything else stands on: the bundle contract (manifest, files, canaries), the
model runtime (sessions, feeds, pooling, encoder), the machine's facts, the evaluation set and
the agreement metrics, and the offline tools' shared plumbing.

It imports nothing above it: `service`, `export`, `quantize`, `corpus` and `bench` import it.
"""
