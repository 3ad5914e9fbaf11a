#!/usr/bin/env python3
"""Parses an OpenMetrics exposition (stdin) with the reference parser (prometheus_client's strict OpenMetrics parser,
the format /metrics declares) and prints the samples as JSON: [{"name", "labels", "value"}]. A malformed exposition
makes the parser raise and this script exit non-zero."""
import json
import math
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        value = None if math.isnan(s.value) else s.value
        samples.append({"family": family.name, "type": family.type, "name": s.name, "labels": s.labels, "value": value})
json.dump(samples, sys.stdout)
