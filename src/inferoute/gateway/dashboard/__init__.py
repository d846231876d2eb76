"""`GET /dashboard`: a live, read-only page of the fleet (off unless `dashboard: true` or
`--dashboard`).

- `/dashboard` and its script and stylesheet, from the package (nothing from a CDN);
- `/dashboard/state`: JSON the page polls every second: per pool and replica the scraped
  queue, running requests, KV use and prefix-cache hit rate, the gateway's in-flight count and
  health; the last routing decisions with each scorer's score; requests/s, output tokens/s and
  TTFT over the last five minutes. Behind the API keys when tenants are on (the page asks for
  a key and sends it as a bearer token, as its chat box does to /v1/chat/completions).
"""

from .routes import add_dashboard

__all__ = ["add_dashboard"]
