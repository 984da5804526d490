"""The built-in dialects: qir (structure), onnx (float ops as imported), quant (casts), int (exact integer ops)."""
