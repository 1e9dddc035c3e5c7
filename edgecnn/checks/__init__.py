"""Proving converted models agree: the parity report (:mod:`.validate`), the convert
self-check against the QDQ reference (:mod:`.int8_self_check`), the per-layer int8 error table
(:mod:`.layer_table`), the accuracy-budget search (:mod:`.budget`) and int8's cost against fp32
(:mod:`.int8_cost`)."""
