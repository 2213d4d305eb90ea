"""Pure numerics: simulators, priors, estimators, proposal, buffer policy, diagnostics.

Imports only the standard library, numpy and torch; never reads the environment.
"""
