"""Kamailio cfg conversion for the bridge (issue 6): lexer, preprocessor, rewriter.

Pure: files come in through an injected reader and go out as texts (see :func:`convert`).
"""

from kazoo_amqp.core.kamailio.convert import Conversion, ConversionFailed, Problem, convert

__all__ = ["Conversion", "ConversionFailed", "Problem", "convert"]
