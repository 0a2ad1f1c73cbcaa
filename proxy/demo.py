"""The start-up banner: where Sluice listens, where each provider goes, how to try it."""

from __future__ import annotations

from .config import PROVIDERS, Settings
from .http import native


def banner(settings: Settings, url: str) -> str:
    workers = f"{settings.workers} worker{'s' if settings.workers > 1 else ''}"
    build = "compiled" if native.COMPILED else "interpreted"
    lines = [f"Sluice listening on {url} ({workers}, {settings.http}, {build})"]
    for p in PROVIDERS:
        up = settings.upstreams[p]
        count = len(up.credentials)
        key = f"{count} credential{'s' if count > 1 else ''}" if count else f"no key: set {up.key_setting}"
        lines.append(f"  {p:<9} → {up.base_url}  ({'mock' if settings.mock else key})")
    if settings.mock:
        lines.append(_try_it(url))
    return "\n".join(lines)


def start_warnings(settings: Settings) -> list[str]:
    warnings = []
    if settings.workers > 1 and not settings.redis_url:
        warnings.append(
            f"{settings.workers} workers without SLUICE_REDIS_URL: rate limits and concurrency "
            "slots are kept per worker, so each key gets up to that many times its limits"
        )
    return warnings


def _try_it(url: str) -> str:
    return f"""
No provider key is configured, so every provider is served by the built-in mock.
Try it (any api_key works until client keys are configured):

  curl -N {url}/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{{"model": "gpt-4o-mini", "stream": true, "messages": [{{"role": "user", "content": "Hi"}}]}}'

  python - <<'PY'
  from openai import OpenAI
  client = OpenAI(base_url="{url}/v1", api_key="anything")
  for chunk in client.chat.completions.create(
          model="gpt-4o-mini", stream=True, messages=[{{"role": "user", "content": "Hi"}}]):
      print(chunk.choices[0].delta.content or "" if chunk.choices else "", end="", flush=True)
  print()
  PY
"""
