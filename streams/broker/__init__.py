"""The local Apache Kafka broker (``riskstream kafka``) and topic management."""

from streams.broker.local import BrokerError, BrokerStatus, LocalKafka

__all__ = ["BrokerError", "BrokerStatus", "LocalKafka"]
