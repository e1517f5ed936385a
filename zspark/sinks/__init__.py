"""Sinks: where the forwarders deliver journaled events (Kafka, MongoDB, ZeroMQ PUB)."""
