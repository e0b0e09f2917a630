"""Kaiko Stream (gRPC): trades and top of book via the ``kaikosdk`` generated types.

:class:`~fairfeed.providers.kaiko.adapter.KaikoAdapter` is the client,
``fairfeed.local.kaiko.KaikoServer`` the local server with faults; see
docs/providers/kaiko.md.
"""
