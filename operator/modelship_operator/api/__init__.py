"""The ModelDeployment API declared once: typed models (`v1alpha1`), the CRD generated from them
(`crdgen`), and offline validation with the API server's semantics (`validate`).

Import what you need from the submodules; this package imports nothing at import time beyond
them being importable (no side effects)."""
