"""Test bed for doras-oras and for its users: a real OCI registry
(Debian ``docker-registry``) and a Doras-compatible delta server, both on
loopback. Nothing in the library imports this package.
"""
