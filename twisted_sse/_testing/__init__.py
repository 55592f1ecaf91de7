"""
The modules behind :mod:`twisted_sse.testing`: the strict response reader,
the client's turns, the two kinds of in-memory connection, the response, the
client and the leak check.
"""
