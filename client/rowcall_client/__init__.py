"""Clients of rowcall's management API, local or deployed: the `rowcall` command line and its helpers.

Never imports the local runtime (`rowcall_local`) except inside `rowcall up` and `rowcall demo`:
talking to a deployed stack needs only this package, httpx and botocore.
"""
