"""
ccserver: an OAuth 2.0 authorization server for machine-to-machine clients.
"""

__version__ = "0.1.0"
