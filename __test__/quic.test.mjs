// transport: tcpTls only (its edges set QUIC or QUIC-with-fallback themselves)
// What only the QUIC transport has: falling back to TCP+TLS, and thousands of connections as
// streams of one QUIC connection. Everything else runs over QUIC in `npm run test:quic`.
import test from 'node:test'
import assert from 'node:assert/strict'
import dgram from 'node:dgram'
import net from 'node:net'
import {
  behaviours,
  connect,
  echoOnce,
  edgeConfig,
  once,
  readBytes,
  recordEvents,
  RemoteIngressEdge,
  SECRET,
  startHub,
  startTarget,
  startTunnel,
  stopQuietly,
  waitFor,
} from './helpers.mjs'

/** A TCP-only forwarder to `port`; its UDP twin is held by a socket that drops everything. */
async function startTcpOnlyForwarder(port) {
  const sockets = new Set()
  const server = net.createServer((client) => {
    const upstream = net.connect(port, '127.0.0.1')
    for (const s of [client, upstream]) {
      sockets.add(s)
      s.on('close', () => sockets.delete(s))
      s.on('error', () => {})
    }
    client.pipe(upstream)
    upstream.pipe(client)
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  const forwardPort = server.address().port
  const blackHole = dgram.createSocket('udp4')
  blackHole.on('message', () => {})
  await new Promise((resolve, reject) => {
    blackHole.once('error', reject)
    blackHole.bind(forwardPort, '127.0.0.1', resolve)
  })
  return {
    port: forwardPort,
    async stop() {
      for (const s of sockets) s.destroy()
      blackHole.close()
      await new Promise((resolve) => server.close(resolve))
    },
  }
}

test('quicWithFallback: with QUIC unreachable the edge says so and falls back to TCP+TLS', { timeout: 90000 }, async () => {
  const target = await startTarget(behaviours.echo)
  let hub, forwarder, edge
  try {
    let hubPort
    ;({ hub, hubPort } = await startHub([{ id: 'edge-fb', secret: SECRET, listenPorts: [target.port] }]))
    forwarder = await startTcpOnlyForwarder(hubPort)
    edge = new RemoteIngressEdge()
    const events = recordEvents(edge, ['warning', 'tunnelConnected'])
    // The edge gives QUIC 5 s before it falls back; the rest only guards against a hang.
    const connected = once(edge, 'tunnelConnected', 30000)
    const hubSaw = once(hub, 'edgeConnected', 30000)
    await edge.start(edgeConfig(forwarder.port, 'edge-fb', SECRET, { transportMode: 'quicWithFallback' }))
    const { instanceId } = await hub.getStatus()
    const through = `127.0.0.1:${forwarder.port}`
    assert.deepEqual(await connected, { transport: 'tcpTls', protocol: 'remoteingress/1', hub: through, address: through, instanceId })
    assert.equal((await hubSaw).transport, 'tcpTls')
    const fallback = events.of('warning').filter((w) => w.code === 'quicFallback')
    assert.equal(fallback.length, 1, 'one quicFallback warning')
    assert.match(fallback[0].message, /QUIC did not come up/)
    assert.equal((await edge.getStatus()).transport, 'tcpTls')
    await waitFor(async () => (await edge.getStatus()).listenPorts.length === 1, { what: 'the edge to listen' })
    assert.equal(await echoOnce(target.port, 'through the fallback'), 'through the fallback')
  } finally {
    await stopQuietly(edge, hub, forwarder, target)
  }
})

test('quicWithFallback: with QUIC reachable the tunnel runs over QUIC', { timeout: 60000 }, async () => {
  const target = await startTarget(behaviours.echo)
  let tunnel
  try {
    tunnel = await startTunnel({ ports: [target.port], edgeOptions: { transportMode: 'quicWithFallback' } })
    assert.equal((await tunnel.edge.getStatus()).transport, 'quic')
    assert.equal((await tunnel.hub.getStatus()).connectedEdges[0].transport, 'quic')
    assert.equal(await echoOnce(target.port, 'over quic'), 'over quic')
  } finally {
    await stopQuietly(tunnel, target)
  }
})

test('2,000 concurrent connections over one QUIC tunnel each get their own bytes back', { timeout: 240000 }, async (t) => {
  const CONNECTIONS = 2000
  const target = await startTarget(behaviours.echo)
  let tunnel
  const clients = []
  try {
    tunnel = await startTunnel({ ports: [target.port], edgeOptions: { transportMode: 'quic' } })
    const hubEvents = recordEvents(tunnel.hub, ['streamOpened', 'warning', 'edgeDisconnected'])
    const edgeEvents = recordEvents(tunnel.edge, ['warning', 'tunnelDisconnected'])
    // Whatever the hub and edge said, to explain a failure.
    t.after(() => t.diagnostic(JSON.stringify({ hub: [...hubEvents.of('warning'), ...hubEvents.of('edgeDisconnected')], edge: [...edgeEvents.of('warning'), ...edgeEvents.of('tunnelDisconnected')] }).slice(0, 2000)))
    // Connect in batches, below the listen backlog.
    for (let i = 0; i < CONNECTIONS; i += 250) {
      const batch = await Promise.all(Array.from({ length: Math.min(250, CONNECTIONS - i) }, () => connect(target.port)))
      clients.push(...batch)
    }
    // Every connection is open at once: each says who it is and waits for its echo.
    const payloads = clients.map((_, i) => Buffer.from(`connection-${String(i).padStart(5, '0')}|`))
    const echoes = clients.map((client, i) => readBytes(client, payloads[i].length, 60000))
    clients.forEach((client, i) => client.write(payloads[i]))
    const got = await Promise.all(echoes)
    got.forEach((bytes, i) => assert.equal(bytes.toString(), payloads[i].toString(), `connection ${i}`))
    await waitFor(async () => (await tunnel.hub.getStatus()).connectedEdges[0].activeStreams === CONNECTIONS, {
      timeoutMs: 20000,
      what: `${CONNECTIONS} active streams on the hub`,
    })
    assert.equal((await tunnel.edge.getStatus()).activeStreams, CONNECTIONS)
    assert.equal(hubEvents.of('streamOpened').length, CONNECTIONS)
    assert.equal(target.connections.length, CONNECTIONS)
    for (const client of clients) client.destroy()
    await waitFor(async () => (await tunnel.hub.getStatus()).connectedEdges[0].activeStreams === 0, {
      timeoutMs: 30000,
      what: 'every stream to end on the hub',
    })
  } finally {
    for (const client of clients) client.destroy()
    await stopQuietly(tunnel, target)
  }
})
