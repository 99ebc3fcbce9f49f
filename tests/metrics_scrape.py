"""Reading ``GET /metrics`` in tests: every sample by name and labels."""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.bridge_harness import API_TOKEN


class Scrape:
    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        self.families: set[str] = set()
        self.family_list = list(text_string_to_metric_families(text))
        for family in self.family_list:
            self.families.add(family.name)
            for sample in family.samples:
                key = (sample.name, frozenset(sample.labels.items()))
                self.samples[key] = sample.value

    def value(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        """The sample's value; 0 for a labelled series that has not appeared yet."""
        key = (name, frozenset((labels or {}).items()))
        if key in self.samples:
            return self.samples[key]
        if labels:
            return 0.0
        raise KeyError(f"{name} is not in the scrape")

    def names(self) -> set[str]:
        return {name for name, _ in self.samples}

    def matching(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        return {labels: value for (n, labels), value in self.samples.items() if n == name}


async def scrape(http: aiohttp.ClientSession, base_url: str, token: str = API_TOKEN) -> Scrape:
    response = await http.get(f"{base_url}/metrics", headers={"Authorization": f"Bearer {token}"})
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    return Scrape(await response.text())
