"""Smoke test: the real Elasticsearch server indexes, refreshes and finds documents."""

from __future__ import annotations

import pytest
from elasticsearch import Elasticsearch

pytestmark = pytest.mark.elasticsearch


def test_server_major_is_9(es_client: Elasticsearch) -> None:
    nodes = es_client.nodes.info(node_id="_local")["nodes"]
    (node,) = nodes.values()
    assert node["version"].split(".")[0] == "9"


def test_index_refresh_search_round_trip(es_client: Elasticsearch, es_index: str) -> None:
    es_client.indices.create(
        index=es_index,
        settings={"number_of_shards": 1, "number_of_replicas": 0},
        mappings={
            "properties": {
                "flow": {"type": "keyword"},
                "message": {"type": "text"},
                "seconds": {"type": "double"},
            }
        },
    )
    docs = [
        {"flow": "solve", "message": "julia worker started", "seconds": 0.5},
        {"flow": "solve", "message": "julia worker finished", "seconds": 2.5},
        {"flow": "other", "message": "unrelated line", "seconds": 9.0},
    ]
    for i, doc in enumerate(docs):
        es_client.index(index=es_index, id=str(i), document=doc)
    es_client.indices.refresh(index=es_index)

    assert es_client.count(index=es_index)["count"] == 3
    found = es_client.search(
        index=es_index,
        query={
            "bool": {
                "filter": [{"term": {"flow": "solve"}}],
                "must": [{"match": {"message": "julia"}}],
            }
        },
        aggs={"total": {"sum": {"field": "seconds"}}},
        sort=[{"seconds": "asc"}],
    )
    hits = found["hits"]["hits"]
    assert [h["_id"] for h in hits] == ["0", "1"]
    assert hits[1]["_source"]["message"] == "julia worker finished"
    assert found["aggregations"]["total"]["value"] == pytest.approx(3.0)
    assert es_client.get(index=es_index, id="2")["_source"]["flow"] == "other"
