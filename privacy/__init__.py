"""Privacy mechanisms.

Differential privacy (Opacus DP-SGD and the privacy-budget ledger),
pseudonymisation and private set intersection land here; see the README for
what is in place today.
"""
