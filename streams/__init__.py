"""The Faust shell around modeling/: app, topics, tables, agents, micro-batcher, metrics, replay."""

# Before any module of this package is found: modeling/native.py decides whether the compiled
# streams.pipeline and streams.terminal_overlay are used, together with modeling's.
import modeling as _modeling  # noqa: F401
