#!/usr/bin/env python3
"""Scrapes a Prometheus endpoint over HTTP and prints what the reference parser read, as one JSON
object: the Content-Type, each family's type, and every sample as NAME{k=v,...} -> value.

Used by Tests/CLITests/MetricsProcessTests.swift: the body must parse with
prometheus_client.parser.text_string_to_metric_families (a malformed line raises, and the
script exits 1 with the error)."""
import json
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def main() -> int:
    url = sys.argv[1]
    with urllib.request.urlopen(url, timeout=10) as response:
        status = response.status
        content_type = response.headers.get("Content-Type", "")
        body = response.read().decode("utf-8")
    families = {}
    samples = {}
    for family in text_string_to_metric_families(body):
        families[family.name] = family.type
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[sample.name + ("{" + labels + "}" if labels else "")] = sample.value
    print(json.dumps({"status": status, "contentType": content_type, "families": families, "samples": samples, "body": body}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
