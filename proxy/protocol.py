"""uvicorn's httptools protocol, with the request target kept honest.

httptools' ``parse_url`` reduces an absolute-form target such as
``GET http://evil.example/v1/x HTTP/1.1`` to its path, so the app would see
``/v1/x`` and never know. A reverse proxy should refuse such a request, so the
whole target is put back into ``raw_path``, where path validation rejects it.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class StrictHttpToolsProtocol(HttpToolsProtocol):
    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        # The ASGI task has been created but not run yet, so it still sees this.
        if not self.url.startswith(b"/") and self.scope.get("raw_path") is not None:
            self.scope["raw_path"] = self.url.partition(b"?")[0]
