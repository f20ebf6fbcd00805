"""riskstream's pure core: records, features, networks, predictor, registry, evaluation.

Imports neither faust nor Kafka.
"""
