"""Integrations of the D-ODE solvers into other libraries' sampling code (:mod:`dode.integrations.diffusers`)."""
