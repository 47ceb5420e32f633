"""The dashboard: one page and its assets (script, worker, style sheet), inside the package, served with ETags, gzip
and a strict CSP. The page holds no data (every data call it makes carries the token), so it needs no token itself."""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response

from service.http.delivery import choose_encoding, etag_matches, request_headers
from service.snapshot.body import variant_etag

PAGE_PATHS = ("/", "/dashboard")
ASSET_PREFIX = "/dashboard/"
ASSETS = ("dashboard.js", "dashboard.css", "stream.js")  # stream.js: the page's worker
# Open to anyone (still rate limited): they hold no data.
PUBLIC_PATHS = frozenset(PAGE_PATHS) | {ASSET_PREFIX + name for name in ASSETS}
# No inline script or style anywhere: the page's code and styles are the files below (its worker falls under
# script-src). connect-src 'self': the page talks to this service only. frame-ancestors 'none': nobody can frame
# it (clickjacking).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_HEADERS = {
    "vary": "Accept-Encoding",
    # revalidate each time (a 304 is a few bytes): a new release's page is never mixed with an old script
    "cache-control": "no-cache",
    "content-security-policy": CSP,
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    gzipped: bytes
    etag: str  # strong, of the identity body; the gzip variant is tagged as the API's are
    content_type: str

    @classmethod
    def load(cls, name: str) -> Asset:
        body = resources.files("service.http").joinpath("static", name).read_bytes()
        digest = hashlib.sha256(body).hexdigest()[:20]
        suffix = name[name.rindex(".") :]
        return cls(body, gzip.compress(body, 9, mtime=0), f'"{digest}"', _TYPES[suffix])


class Dashboard:
    """The page at `/` and `/dashboard`, its script, worker and style sheet under `/dashboard/`."""

    def __init__(self) -> None:
        self.page = Asset.load("index.html")
        self.assets = {name: Asset.load(name) for name in ASSETS}

    async def page_endpoint(self, request: Request) -> Response:
        return _deliver(request, self.page)

    async def asset_endpoint(self, request: Request) -> Response:
        """One route per asset (`ASSETS`): the path names it."""
        return _deliver(request, self.assets[request.url.path.removeprefix(ASSET_PREFIX)])


def _deliver(request: Request, asset: Asset) -> Response:
    if_none_match, accept_encoding = request_headers(request.scope)
    encoding = choose_encoding(accept_encoding)
    headers = {**_HEADERS, "etag": variant_etag(asset.etag, encoding)}
    if etag_matches(asset.etag, if_none_match):
        return Response(None, 304, headers)
    if encoding is None:
        return Response(asset.body, 200, headers, media_type=asset.content_type)
    headers["content-encoding"] = encoding
    return Response(asset.gzipped, 200, headers, media_type=asset.content_type)
