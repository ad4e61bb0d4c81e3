"""CDISC exports of the log at a data cut-off: ODM 1.3.2 with the audit trail, SDTMIG 3.4
datasets (SAS XPORT v5 or Dataset-JSON v1.1) with define.xml 2.1, and our conformance checks.
See docs/exports.md."""
