"""zspark: an event ingestion appliance. HTTP and ZeroMQ in, a durable journal, Kafka and MongoDB out.

The package's public API is the client (`ZSparkClient`, `ZarkovClient`); everything else is run
through `zcmd` (see zspark/cli.py).
"""
__version__ = "0.1.0"
