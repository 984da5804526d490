"""Errors that reach the user.

Every error qirc reports is a `QircError` (or subclass).  Its `str()` is ONE line naming, where known, the file, the
line:column or the op's location (the source node name), and the problem:

    model.qir:12:7: error: expected ':' after op
    model.onnx: node '/conv1/Conv' (int.conv): accumulator overflows int32 (max |acc| 3.1e9)

The CLI catches QircError, prints that line to stderr and exits 1 (2 for usage errors).  Never raise a bare
Exception for bad *input*; a bare exception means a bug in qirc.
"""
from __future__ import annotations

from typing import Optional


#: the page that says what qirc supports (formats, ops, element types, per-target limits); a refusal points there
SUPPORT_DOC = "docs/support.md"
#: what marks a message as a refusal (qirc cannot take this model or op, as opposed to a malformed input)
REFUSAL_MARKS = ("not supported", "unsupported ops", "has no form", "has no Deeploy form", "has no RequantizedAdd form",
                 "exceeds Deeploy's")


class QircError(Exception):
    """A user-facing error: file, position or op location, and message.

    A refusal (something qirc or the target does not support) is printed by the tools with a pointer to
    SUPPORT_DOC at the end (`user_message`): subclasses set `refusal = True` when every error of theirs is one, else
    a message containing one of REFUSAL_MARKS is."""

    kind = "error"
    refusal: Optional[bool] = None

    def __init__(self, message: str, *, file: Optional[str] = None, line: Optional[int] = None,
                 column: Optional[int] = None, loc: Optional[str] = None, op: Optional[str] = None):
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line
        self.column = column
        self.loc = loc
        self.op = op

    def with_file(self, file: str) -> "QircError":
        if self.file is None:
            self.file = file
        return self

    def __str__(self) -> str:
        parts = []
        if self.file:
            where = str(self.file)
            if self.line is not None:
                where += f":{self.line}"
                if self.column is not None:
                    where += f":{self.column}"
            parts.append(where)
        if self.loc is not None or self.op is not None:
            node = f"node '{self.loc}'" if self.loc else "node"
            if self.op:
                node += f" ({self.op})"
            parts.append(node)
        msg = " ".join(self.message.split())  # one line, always
        return ": ".join(parts + [msg]) if parts else msg

    def user_message(self) -> str:
        """The line a tool prints: str(self), and for a refusal a pointer to SUPPORT_DOC at the end."""
        text = str(self)
        if self.is_refusal() and SUPPORT_DOC not in text:
            text += f"; see {SUPPORT_DOC}"
        return text

    def is_refusal(self) -> bool:
        if self.refusal is not None:
            return self.refusal
        return any(mark in self.message for mark in REFUSAL_MARKS)


class ParseError(QircError):
    """Malformed IR text."""


class VerifyError(QircError):
    """A module that breaks an IR rule (types, shapes, scales, dangling values, cycles)."""


class InterpretError(QircError):
    """The interpreter could not execute an op (including integer overflow)."""


class OverflowError_(InterpretError):
    """An integer result does not fit its declared storage type (an int32 accumulator overflow)."""


class FrontendError(QircError):
    """An input model qirc cannot import (malformed, unsupported op or pattern, bad quantization parameters)."""


class LoweringError(QircError):
    """A pass cannot keep the model's meaning (range and precision cannot both be met, op left unlowered)."""


class BackendError(QircError):
    """The target cannot take an op or form."""

    refusal = True


class UsageError(QircError):
    """Bad command-line usage (exit code 2)."""


def op_error(cls, op, message: str) -> QircError:
    """An error of class `cls` located at `op` (an Operation)."""
    return cls(message, loc=getattr(op, "loc", None) or None, op=getattr(op, "name", None))
