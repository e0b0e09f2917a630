"""Local servers that speak providers' real wire protocols, for tests and the embedded default."""
