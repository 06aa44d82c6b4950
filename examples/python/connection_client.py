"""The Python client of examples/connection_server.rs: the same as connection_client.rs,
written with the standard library's multiprocessing.connection.

    python3 examples/python/connection_client.py                 # TCP 127.0.0.1:6000
    python3 examples/python/connection_client.py /tmp/app.sock   # a Unix socket
"""
import sys
from multiprocessing.connection import Client

text = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:6000"
text = text.removeprefix("tcp://")  # as connection_server prints it
if text.startswith("@"):
    address = "\0" + text[1:]
elif "/" in text:
    address = text
else:
    host, port = text.rsplit(":", 1)
    address = (host, int(port))

with Client(address, authkey=b"secret password") as conn:
    print(conn.recv_bytes().decode())
    for request in ["sum 2 3 4", "upper hello from python"]:
        conn.send_bytes(request.encode())
        print(f"{request} -> {conn.recv_bytes().decode()}")
