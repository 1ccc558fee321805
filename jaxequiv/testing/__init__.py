"""Tools for testing code built on jaxequiv (not imported by ``import jaxequiv``)."""
