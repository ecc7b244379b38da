"""Silo side of the federation: the ClientApp, the silo store, ingestion and features.

Everything here runs inside one business line's silo, on that line's own data.
"""
