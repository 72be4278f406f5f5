"""`rowcall ui`: the status page, served on 127.0.0.1 by a small server that holds the stack's
credentials and proxies the management API for the page (the browser never sees a token or a key)."""

from rowcall_client.ui.server import DEFAULT_PORT, StatusServer, serve

__all__ = ["DEFAULT_PORT", "StatusServer", "serve"]
