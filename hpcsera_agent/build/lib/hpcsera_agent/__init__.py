"""The HPCSerA agent: runs functions on a cluster for calls pulled from the server."""

__version__ = "0.1.0"
