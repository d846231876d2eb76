"""`GET /dashboard`: a live, read-only page of the fleet (off unless `dashboard: true` or
`--dashboard`).

- `/dashboard` and its script and stylesheet, from the package (nothing from a CDN);
- `/dashboard/state`: JSON the page polls every second: per pool and replica the scraped
  queue, running requests, KV use and prefix-cache hit rate, the gateway's in-flight count and
  health; with admission on, per pool the requests waiting in the gateway, the batch slots
  kept free for the top priority and how often it found none; the last routing decisions
  with each scorer's score; requests/s, output tokens/s and TTFT over the last five minutes;
- `/dashboard/chat`: the chat box's streamed reply, from the gateway's `/v1/chat/completions`.

With tenants on, every one of them wants a key: `/dashboard` answers a sign-in form (401)
until `/dashboard/login` has taken a key from its body and set a session cookie (`sessions.py`);
the state takes that cookie or the API's bearer key, the others the cookie (401 JSON without).
"""

from .routes import add_dashboard

__all__ = ["add_dashboard"]
