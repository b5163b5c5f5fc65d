"""Fixtures of the durable broker tests: a Tansu broker for the Kafka cases."""

from __future__ import annotations

from .. import tansu

kafka_bootstrap = tansu.kafka_bootstrap  # tests/tansu.py: Tansu on a free loopback port
