"""Chinese free-text risk model: input filters, character tokenizer, ERNIE classifier, scorer.

``filters`` is pure Python. The other modules import Paddle and paddlenlp; they call
:func:`modeling.text.env.prepare_paddlenlp` first, so paddlenlp never reaches for the network.
"""
