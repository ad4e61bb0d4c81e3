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
"""
