"""Governance: the staged publish gate (validate, store, scan, smoke test, benchmark, bias, review, publish), its
operator policy, and lineage."""
