"""Harvests citygate's DCAT-AP catalog as an open-data portal would: fetches the JSON-LD,
parses it into RDF with rdflib, and queries it with SPARQL. Prints what it found as JSON.

Usage: dcat_catalog.py URL
"""
import json
import sys
import urllib.request

from rdflib import Graph

url = sys.argv[1]
with urllib.request.urlopen(url) as resp:
    content_type = resp.headers.get("Content-Type")
    body = resp.read()

graph = Graph()
graph.parse(data=body, format="json-ld")

query = """
PREFIX dcat: <http://www.w3.org/ns/dcat#>
PREFIX dct: <http://purl.org/dc/terms/>
PREFIX foaf: <http://xmlns.com/foaf/0.1/>
SELECT ?id ?title ?publisher ?license ?frequency ?access ?modified WHERE {
    ?catalog a dcat:Catalog ; dcat:dataset ?ds .
    ?ds a dcat:Dataset ;
        dct:identifier ?id ;
        dct:title ?title ;
        dct:publisher/foaf:name ?publisher ;
        dct:accrualPeriodicity ?frequency ;
        dct:modified ?modified ;
        dcat:distribution/dcat:accessURL ?access .
    OPTIONAL { ?ds dct:license ?license . }
}
ORDER BY ?id
"""
datasets = []
for row in graph.query(query):
    datasets.append({
        "id": str(row.id),
        "title": str(row.title),
        "publisher": str(row.publisher),
        "license": str(row.license) if row.license is not None else None,
        "frequency": str(row.frequency),
        "access": str(row.access),
        "modified_type": str(row.modified.datatype),
    })
keywords = sorted(str(k) for k in graph.objects(None, graph.namespace_manager.expand_curie("dcat:keyword")))
print(json.dumps({"content_type": content_type, "triples": len(graph), "datasets": datasets, "keywords": keywords}))
