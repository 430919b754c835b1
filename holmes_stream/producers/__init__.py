"""Everything the service writes to Kafka."""

from holmes_stream.producers.kafka import KafkaProducers, make_broker

__all__ = ["KafkaProducers", "make_broker"]
