"""The trial's rules as pure code: no I/O, no event store, no web framework.

Modules:
- ``parameters``: protocol parameters (the trial text's numbers and the documented assumptions).
- ``errors``: input errors that name the offending field.
- ``eligibility``: inclusion and exclusion criteria from raw values with units.
- ``dosing``: planned and delivered CAR-T cell doses.
- ``toxicity``: ASTCT CRS and ICANS grading, explicit grades under a named scale.
- ``response``: CR / CRi / PR / NR classification for B-ALL.
- ``machine``: the course state machine (one ``transitions`` machine per protocol version).
- ``versions``: the registry of protocol versions.
- ``registry``: the command registry, one definition per command (``building_blocks``: the parsers,
  contexts and outcomes its definitions name; ``schema_parts``: their JSON Schema parts).
- ``commands``: ``prepare``, the decision of a move; ``allowed_now``.
- ``corrections``, ``signatures``: the decisions of ``correct`` and ``sign``.
- ``catalog``: the commands as data and as the docs' Markdown tables.
"""
