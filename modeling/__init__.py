"""riskstream's pure core: records, features, networks, predictor, registry, evaluation.

Imports neither faust nor Kafka.
"""

from modeling import native as _native

# The compiled hot-path modules (modeling/native.py) are used only when built from these sources.
_native.install()
