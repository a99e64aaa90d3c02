"""AG-UI over Server-Sent Events: a run's lifecycle events as AG-UI events, resumable from the log.

``events`` is the mapping (documented field by field in docs/protocol.md,
section 12), ``sse`` the framing and the resume position, ``request`` the
reading of ``RunAgentInput``, and ``consumers`` the HTTP consumer.
"""
