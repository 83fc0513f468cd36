"""Reading a service's /metrics (Prometheus text) in tests."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Samples:
    """One scrape: every sample by (name, labels)."""

    values: dict[tuple[str, frozenset[tuple[str, str]]], float]

    def get(self, name: str, **labels: str) -> float:
        """The sample's value; 0 when the series does not exist (yet)."""
        return self.values.get((name, frozenset(labels.items())), 0.0)

    def has(self, name: str, **labels: str) -> bool:
        return (name, frozenset(labels.items())) in self.values

    def names(self) -> set[str]:
        return {name for name, _ in self.values}

    def matching(self, name: str, **labels: str) -> dict[frozenset[tuple[str, str]], float]:
        """Every series of `name` whose labels include `labels`."""
        want = set(labels.items())
        return {
            series: value
            for (n, series), value in self.values.items()
            if n == name and want <= series
        }


async def scrape(http: aiohttp.ClientSession, base_url: str) -> Samples:
    async with http.get(f"{base_url}/metrics") as resp:
        assert resp.status == 200, resp.status
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    values: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return Samples(values)
