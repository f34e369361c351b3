"""The account service's shared code: domain, event store, service, HTTP mapping and configuration.

Deployed to Lambda as a layer (``python/shared/``) so every handler imports it as ``shared.*``.
"""
