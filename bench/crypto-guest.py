# bench/crypto, the guest's part: the kernel's AEAD transforms through AF_ALG, sealing frames the
# size the kernel link uses. Prints "AEAD NAME DRIVER BYTES SECONDS" per algorithm.
import os
import socket
import sys
import time

SIZES = [int(s) for s in sys.argv[1].split(",")]
SECONDS = float(sys.argv[2])


def driver(name):
    with open("/proc/crypto") as f:
        blocks = f.read().split("\n\n")
    for b in blocks:
        fields = {}
        for line in b.splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                fields[k.strip()] = v.strip()
        if fields.get("name") == name:
            return fields.get("driver", "?")
    return "?"


for name in ["gcm(aes)", "rfc7539(chacha20,poly1305)"]:
    s = socket.socket(socket.AF_ALG, socket.SOCK_SEQPACKET, 0)
    s.bind(("aead", name))
    s.setsockopt(socket.SOL_ALG, socket.ALG_SET_KEY, os.urandom(32))
    s.setsockopt(socket.SOL_ALG, socket.ALG_SET_AEAD_AUTHSIZE, None, 16)
    op, _ = s.accept()
    for size in SIZES:
        data = b"\0" * 4 + os.urandom(size)
        iv = os.urandom(12)
        n, start = 0, time.monotonic()
        while time.monotonic() - start < SECONDS:
            op.sendmsg_afalg([data], op=socket.ALG_OP_ENCRYPT, iv=iv, assoclen=4)
            op.recv(len(data) + 16)
            n += 1
        print("AEAD", name, driver(name), size, n, time.monotonic() - start, flush=True)
