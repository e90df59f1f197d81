#!/usr/bin/env python3
"""Small-request probes for bench/wan/run.

  probe.py echo-server PORT [--max-seconds T]    echo every connection on PORT (all addresses)
  probe.py latency HOST PORT [--seconds S]       one connection, a 64-byte exchange every 10 ms:
                                                 prints p50 and p99 in ms
  probe.py ttfb HOST PORT [--count N]            N new connections, one after the other, each
                                                 sends 64 bytes: prints the median and p90 time
                                                 from connect() to the first byte back, in ms
  probe.py requests HOST PORT [--count N] [--concurrency C]
                                                 N requests, each on a new connection (64 bytes
                                                 there and back, then close), C at a time: prints
                                                 the requests that failed and the seconds taken
Every mode stops by itself (the server after --max-seconds, default 900)."""
import asyncio
import socket
import sys
import threading
import time

MESSAGE = b"x" * 64


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def echo_server(port, max_seconds):
    async def echo(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "0.0.0.0", port, backlog=1024)
    async with server:
        await asyncio.sleep(max_seconds)


def exchange(sock):
    sock.sendall(MESSAGE)
    got = 0
    while got < len(MESSAGE):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        got += len(chunk)


def latency(host, port, seconds):
    sock = socket.create_connection((host, port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    exchange(sock)  # the first one opens the stream
    samples, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.monotonic()
        exchange(sock)
        samples.append((time.monotonic() - start) * 1000)
        time.sleep(0.01)
    sock.close()
    print(round(percentile(samples, 0.5), 2), round(percentile(samples, 0.99), 2), len(samples))


def ttfb(host, port, count):
    samples = []
    for _ in range(count):
        start = time.monotonic()
        sock = socket.create_connection((host, port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(MESSAGE)
        if not sock.recv(65536):
            raise ConnectionError("closed before the first byte")
        samples.append((time.monotonic() - start) * 1000)
        sock.close()
    print(round(percentile(samples, 0.5), 2), round(percentile(samples, 0.9), 2), len(samples))


def requests(host, port, count, concurrency):
    lock = threading.Lock()
    left, failed = [count], [0]

    def worker():
        while True:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
            try:
                with socket.create_connection((host, port), timeout=30) as sock:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    exchange(sock)
            except OSError:
                with lock:
                    failed[0] += 1

    start = time.monotonic()
    workers = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    print(failed[0], round(time.monotonic() - start, 2))


def option(args, name, default):
    return float(args[args.index(name) + 1]) if name in args else default


def main(args):
    try:
        if args[0] == "echo-server":
            asyncio.run(echo_server(int(args[1]), option(args, "--max-seconds", 900)))
        elif args[0] == "latency":
            latency(args[1], int(args[2]), option(args, "--seconds", 5))
        elif args[0] == "ttfb":
            ttfb(args[1], int(args[2]), int(option(args, "--count", 20)))
        elif args[0] == "requests":
            requests(args[1], int(args[2]), int(option(args, "--count", 2000)),
                     int(option(args, "--concurrency", 20)))
        else:
            raise IndexError
    except (IndexError, ValueError):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        print(f"failed failed ({e})", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
