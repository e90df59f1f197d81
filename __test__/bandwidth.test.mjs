// Bandwidth limits the hub enforces (`bandwidth` per edge and per port in an allowed edge): a
// connection's bytes wait for their turn, datagrams over the rate are dropped, and
// getStatus() and the metrics show each limit. Bounds are computed from the time measured.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import {
  EDGE_ADDRESS,
  GUARD_MS,
  SECRET,
  behaviours,
  connect,
  startEndlessServer,
  startTarget,
  startTunnel,
  startUdpClient,
  startUdpTarget,
  stopQuietly,
  udpBehaviours,
  waitFor,
} from './helpers.mjs'

/** What a limit lets through in `seconds`: the rate, its 100 ms burst, and one 64 KiB chunk. */
const mostThrough = (bytesPerSecond, seconds) => bytesPerSecond * (seconds + 0.1) + 64 * 1024

/** Reads from `socket` for `ms`; resolves with the bytes received. */
function receiveFor(socket, ms) {
  let received = 0
  socket.on('data', (chunk) => (received += chunk.length))
  return new Promise((resolve) => setTimeout(() => resolve(received), ms))
}

const statusOf = async (hub) => (await hub.getStatus()).connectedEdges[0].bandwidth

test('downloads share the edge\'s outbound limit evenly and never pass it', { timeout: 120000 }, async () => {
  const server = await startEndlessServer()
  const port = server.address().port
  let tunnel
  const sockets = []
  try {
    const rate = 400_000
    tunnel = await startTunnel({ ports: [port], rules: { bandwidth: { outboundBytesPerSecond: rate } } })
    const started = performance.now()
    for (let i = 0; i < 2; i++) sockets.push(await connect(port))
    const received = await Promise.all(sockets.map((s) => receiveFor(s, 2000)))
    const seconds = (performance.now() - started) / 1000
    const total = received[0] + received[1]
    assert.ok(total > 0)
    assert.ok(total <= mostThrough(rate, seconds), `${total} bytes in ${seconds.toFixed(2)} s at ${rate} B/s`)
    assert.ok(Math.min(...received) >= total / 4, `shares ${received.join(' / ')}`)
    const status = await statusOf(tunnel.hub)
    assert.equal(status.outbound.bytesPerSecond, rate)
    assert.ok(status.outbound.delayedMs > 0, 'the limit held bytes back')
    assert.equal(status.inbound, undefined)
    const metrics = await tunnel.hub.getMetrics()
    assert.match(metrics, new RegExp(`remoteingress_hub_bandwidth_limit_bytes_per_second\\{edge="edge-1",port="all",direction="outbound"\\} ${rate}`))
  } finally {
    for (const socket of sockets) socket.destroy()
    await stopQuietly(tunnel)
    server.close()
  }
})

test('a port\'s inbound limit holds uploads back, and a new rate reaches the bytes already waiting', { timeout: 120000 }, async () => {
  const target = await startTarget(behaviours.sink)
  let tunnel
  const clients = []
  let writing = true
  try {
    // Eight uploads at 10 kB/s: each 64 KiB chunk books 6.5 s, so the chunks of all eight
    // wait in a queue almost a minute long.
    const rate = 10_000
    const rules = { ports: { [target.port]: { bandwidth: { inboundBytesPerSecond: rate } } } }
    tunnel = await startTunnel({ ports: [target.port], rules })
    const chunk = Buffer.alloc(64 * 1024, 7)
    const started = performance.now()
    for (let i = 0; i < 8; i++) {
      const client = await connect(target.port)
      client.on('error', () => {})
      const pump = () => {
        while (writing && client.write(chunk)) {}
      }
      client.on('drain', pump)
      pump()
      clients.push(client)
    }
    const arrived = () => target.connections.reduce((n, c) => n + c.received.reduce((m, b) => m + b.length, 0), 0)
    await new Promise((resolve) => setTimeout(resolve, 2000))
    const seconds = (performance.now() - started) / 1000
    const atLimit = arrived()
    assert.ok(atLimit <= mostThrough(rate, seconds), `${atLimit} bytes in ${seconds.toFixed(2)} s at ${rate} B/s`)
    const [port] = (await statusOf(tunnel.hub)).ports
    assert.equal(port.port, target.port)
    assert.equal(port.inbound.bytesPerSecond, rate)

    // A thousand times the rate: the waiting chunks book their turn again, so more arrives
    // than the old rate would ever have let through in the time it took (the queue at the
    // old rate outlasts the wait's bound).
    const faster = rate * 1000
    await tunnel.hub.updateAllowedEdges([
      { id: 'edge-1', secret: SECRET, listenPorts: [target.port], ports: { [target.port]: { bandwidth: { inboundBytesPerSecond: faster } } } },
    ])
    const before = arrived()
    const from = performance.now()
    await waitFor(() => arrived() - before > mostThrough(rate, (performance.now() - from) / 1000), { what: 'the uploads speeding up' })
    assert.equal((await statusOf(tunnel.hub)).ports[0].inbound.bytesPerSecond, faster)

    // Lifted: no limit left to show.
    await tunnel.hub.updateAllowedEdges([{ id: 'edge-1', secret: SECRET, listenPorts: [target.port] }])
    await waitFor(async () => (await statusOf(tunnel.hub)) === undefined, { what: 'the limit gone from getStatus' })
  } finally {
    writing = false
    for (const client of clients) client.destroy()
    await stopQuietly(tunnel, target)
  }
})

test('datagrams over an edge\'s inbound limit are dropped and counted; one larger than the burst still fits a quiet limit', { timeout: 120000 }, async () => {
  const target = await startUdpTarget(udpBehaviours.sink)
  let tunnel
  let client
  try {
    const rate = 20_000
    tunnel = await startTunnel({ ports: [], udpPorts: [target.port], rules: { bandwidth: { inboundBytesPerSecond: rate } } })
    client = await startUdpClient()
    // A quiet limit takes a datagram larger than its burst (100 ms of the rate: 2,000 bytes).
    const large = Buffer.alloc(3000, 2)
    await client.send(large, target.port)
    await waitFor(() => target.datagrams.some((d) => d.payload?.length === large.length), { what: 'the large datagram' })
    const payload = Buffer.alloc(1000, 1)
    const started = performance.now()
    // 100 a second, five times the rate: well within what either transport carries.
    for (let i = 0; i < 200; i++) {
      await client.send(payload, target.port)
      await new Promise((resolve) => setTimeout(resolve, 10))
    }
    // What the edge carried has reached the hub once the hub's counts add up.
    const seen = () => target.datagrams.length - 1
    await waitFor(async () => {
      const status = await statusOf(tunnel.hub)
      return status.inbound.droppedDatagrams > 0 && seen() + status.inbound.droppedDatagrams === 200
    }, { what: 'every datagram delivered or dropped' })
    const seconds = (performance.now() - started) / 1000
    // Each datagram carries its PROXY header to the target; the limit counts the payload.
    assert.ok(seen() * payload.length <= mostThrough(rate, seconds), `${seen()} datagrams in ${seconds.toFixed(2)} s`)
    const [edge] = (await tunnel.hub.getStatus()).connectedEdges
    assert.equal(edge.udpDatagramsDropped, 200 - seen())
  } finally {
    await client?.close()
    await stopQuietly(tunnel, target)
  }
})
