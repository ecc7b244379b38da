"""Simulations: the synthetic travel platform, the centralized oracle and simulated runs.

Only simulations may pool silo data (for the oracle); nothing here runs in a
real deployment.
"""
