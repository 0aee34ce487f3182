"""Sans-I/O protocol code: bytes in, past-tense event dataclasses and Exchanges out."""
