"""Where analysis numbers come from: pods' ``/metrics`` over HTTP, or Prometheus' query API.

I/O only over plain HTTP; nothing here talks to the Kubernetes API server (``kube`` does). The
caller passes the pod URLs (``http://<podIP>:<port>/metrics``) and the Prometheus address.
"""
from __future__ import annotations

import asyncio
from typing import Any, Mapping

import httpx

from .analysis import AnalysisError, Snapshot, parse_metrics


class ScrapeError(Exception):
    """A target could not be scraped or queried (the message says why, for status and Events)."""


async def _scrape_one(client: httpx.AsyncClient, url: str) -> Snapshot | ScrapeError:
    try:
        response = await client.get(url)
        if response.status_code != 200:
            return ScrapeError(f"{url}: HTTP {response.status_code}")
        return parse_metrics(response.text)
    except httpx.HTTPError as exc:
        return ScrapeError(f"{url}: {type(exc).__name__}: {exc}".rstrip(": "))
    except AnalysisError as exc:
        return ScrapeError(f"{url}: {exc}")


async def scrape(
    urls: list[str], timeout: float = 5.0, client: httpx.AsyncClient | None = None
) -> dict[str, Snapshot | ScrapeError]:
    """Scrape every URL concurrently; each answer is a Snapshot or the ScrapeError for that URL.

    One unreachable pod does not fail the others: the caller decides what a missing pod means.
    """
    if client is None:
        async with httpx.AsyncClient(timeout=timeout) as own:
            return await scrape(urls, timeout, own)
    results = await asyncio.gather(*(_scrape_one(client, url) for url in urls))
    return dict(zip(urls, results))


async def query_prometheus(
    base_url: str,
    queries: Mapping[str, str],
    time: float | None = None,
    timeout: float = 10.0,
    client: httpx.AsyncClient | None = None,
) -> dict[str, Any]:
    """Run instant queries against ``<base_url>/api/v1/query``; returns ``{key: data}``.

    ``time`` (unix seconds) pins the evaluation time so every query sees the same window.
    Raises ScrapeError when Prometheus is unreachable or answers with an error.
    """
    if client is None:
        async with httpx.AsyncClient(timeout=timeout) as own:
            return await query_prometheus(base_url, queries, time, timeout, own)
    url = base_url.rstrip("/") + "/api/v1/query"

    async def one(key: str, query: str) -> tuple[str, Any]:
        params = {"query": query}
        if time is not None:
            params["time"] = f"{time:.3f}"
        try:
            response = await client.post(url, data=params)
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ScrapeError(f"prometheus {url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200 or not isinstance(body, dict) or body.get("status") != "success":
            detail = body.get("error") if isinstance(body, dict) else None
            raise ScrapeError(f"prometheus {url}: HTTP {response.status_code}: {detail or response.text[:200]}")
        return key, body["data"]

    return dict(await asyncio.gather(*(one(k, q) for k, q in queries.items())))
