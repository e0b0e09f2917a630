"""Local servers that speak providers' real wire protocols (simulator, replay of captures, one
server per provider protocol, with a random-walk market and faults), for tests and the
embedded default."""
