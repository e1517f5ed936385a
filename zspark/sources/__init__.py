"""Sources: the ways events come in (HTTP, ZeroMQ). Each decodes its wire format and hands raw
events to `zspark.ingest.Ingest`; none knows anything about sinks."""
