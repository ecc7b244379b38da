"""Server side of the federation: the ServerApp, its strategy and evaluation aggregation.

The server coordinates and aggregates; it never holds or receives customer rows.
"""
