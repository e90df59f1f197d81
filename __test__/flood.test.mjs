// Floods from many sources that never log in: idle sockets that fill the hub's table of
// pending handshakes, concurrent logins from one address, and single datagrams from thousands
// of addresses at an edge's UDP port. None may keep a real edge or client out, or buy more
// secret checks than the throttle allows.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import dgram from 'node:dgram'
import net from 'node:net'
import tls from 'node:tls'
import {
  ALPN,
  EDGE_ADDRESS,
  GUARD_MS,
  SECRET,
  behaviours,
  echoOnce,
  edgeConfig,
  startConnectedEdge,
  startEndlessServer,
  startHub,
  startTarget,
  startTunnel,
  startUdpClient,
  startUdpTarget,
  stopQuietly,
  udpBehaviours,
  waitFor,
  withTimeout,
} from './helpers.mjs'

const MAX_AUTH_FAILURES = 10 // hub/throttle.rs

/** Prometheus text as a Map from sample (name and labels) to value. */
async function metricsOf(hub) {
  const samples = new Map()
  for (const line of (await hub.getMetrics()).split('\n')) {
    if (line === '' || line.startsWith('#')) continue
    const space = line.lastIndexOf(' ')
    samples.set(line.slice(0, space), Number(line.slice(space + 1)))
  }
  return samples
}

const failures = (metrics, reason) => metrics.get(`remoteingress_hub_handshake_failures_total{reason="${reason}"}`)

/**
 * Holds `perSource` idle TCP connections (they never send a byte) from each of `sources`
 * addresses to the hub, and opens a new one whenever the hub closes one, as an attacker
 * keeping the hub's pending handshakes full would. Bounded: at most `maxConnections` in all.
 */
function holdIdleConnections(hubPort, sources, perSource, maxConnections) {
  const sockets = new Set()
  let opened = 0
  let stopped = false
  const open = (localAddress) => {
    if (stopped || opened >= maxConnections) return
    opened++
    const socket = net.connect({ host: '127.0.0.1', port: hubPort, localAddress })
    sockets.add(socket)
    socket.on('error', () => {})
    socket.on('close', () => {
      sockets.delete(socket)
      setTimeout(() => open(localAddress), 20)
    })
  }
  for (const source of sources) for (let k = 0; k < perSource; k++) open(source)
  return {
    opened: () => opened,
    async stop() {
      stopped = true
      for (const socket of sockets) socket.destroy()
      await waitFor(() => sockets.size === 0, { timeoutMs: 30000, what: 'the idle connections closed' })
    },
  }
}

test('idle connections from many sources that fill the pending handshakes do not keep an edge out', { timeout: 120000 }, async () => {
  const limits = { maxPendingHandshakes: 64, maxPendingHandshakesPerSource: 4 }
  const { hub, hubPort } = await startHub([{ id: 'edge-1', secret: SECRET }], { limits })
  const sources = Array.from({ length: 64 }, (_, i) => `127.7.0.${i + 1}`)
  const flood = holdIdleConnections(hubPort, sources, 4, 20000)
  let edge
  try {
    await waitFor(async () => (await metricsOf(hub)).get('remoteingress_hub_handshakes_pending') === limits.maxPendingHandshakes, {
      timeoutMs: 30000,
      what: 'the idle connections to fill the pending handshakes',
    })
    // 256 idle connections for 64 places: every new one evicts another, and the edge's, which
    // starts its handshake at once, is evicted only behind every idle one.
    ;({ edge } = await startConnectedEdge(edgeConfig(hubPort, 'edge-1'), 30000))
    const status = await hub.getStatus()
    assert.deepEqual(
      status.connectedEdges.map((e) => e.edgeId),
      ['edge-1'],
    )
    const metrics = await metricsOf(hub)
    assert.ok(failures(metrics, 'evicted') > 0, 'idle connections were evicted')
    assert.ok(metrics.get('remoteingress_hub_handshakes_pending') <= limits.maxPendingHandshakes)
  } finally {
    await flood.stop()
    await stopQuietly(edge, hub)
  }
})

test('a connection that sends nothing is closed, and the hub says why', { timeout: 60000 }, async () => {
  const { hub, hubPort } = await startHub([{ id: 'edge-1', secret: SECRET }])
  const warnings = []
  hub.on('warning', (w) => warnings.push(w))
  try {
    const socket = net.connect({ host: '127.0.0.1', port: hubPort, localAddress: '127.0.0.6' })
    socket.on('error', () => {})
    const closed = new Promise((resolve) => socket.on('close', resolve))
    await withTimeout(closed, 30000, 'the hub to close a silent connection')
    const metrics = await metricsOf(hub)
    assert.equal(failures(metrics, 'tls'), 1)
    assert.equal(metrics.get('remoteingress_hub_handshakes_pending'), 0)
    await waitFor(() => warnings.some((w) => w.code === 'handshakeFailed' && w.message.includes('127.0.0.6') && /nothing sent/.test(w.message)), {
      timeoutMs: 10000,
      what: 'the handshakeFailed warning',
    })
  } finally {
    await stopQuietly(hub)
  }
})

/**
 * One login with a wrong secret from `localAddress`; resolves when the connection has closed,
 * however it ended.
 */
function badLogin(hubPort, localAddress) {
  return withTimeout(
    new Promise((resolve) => {
      const socket = tls.connect({ host: '127.0.0.1', port: hubPort, localAddress, rejectUnauthorized: false, ALPNProtocols: [ALPN] })
      socket.on('secureConnect', () => socket.write(`EDGE edge-1 wrong-${SECRET}\n`))
      socket.on('data', () => {})
      socket.on('error', () => {})
      socket.on('close', resolve)
    }),
    30000,
    `a login attempt from ${localAddress}`,
  )
}

test('concurrent logins from one address count against its throttle when they start', { timeout: 60000 }, async () => {
  const { hub, hubPort } = await startHub([{ id: 'edge-1', secret: SECRET }])
  try {
    const attempts = 50
    await Promise.all(Array.from({ length: attempts }, () => badLogin(hubPort, '127.0.0.5')))
    // Every attempt ended one way; only those started within the throttle's allowance reached
    // the secret check, however many were under way at once.
    const metrics = await waitFor(
      async () => {
        const m = await metricsOf(hub)
        const ended = ['tls', 'auth', 'throttled', 'evicted'].reduce((sum, reason) => sum + failures(m, reason), 0)
        return ended === attempts && m
      },
      { timeoutMs: 30000, what: `all ${attempts} attempts counted` },
    )
    assert.ok(failures(metrics, 'auth') <= MAX_AUTH_FAILURES, `secrets checked: ${failures(metrics, 'auth')}`)
    assert.ok(failures(metrics, 'throttled') >= attempts - MAX_AUTH_FAILURES, `throttled: ${failures(metrics, 'throttled')}`)
  } finally {
    await stopQuietly(hub)
  }
})

/** One datagram to the edge's UDP `port` from each of `count` addresses in 127.9.0.0/16. */
async function udpFlood(port, count, offset) {
  for (let i = offset; i < offset + count; i++) {
    const socket = dgram.createSocket('udp4')
    const address = `127.9.${Math.floor(i / 250)}.${(i % 250) + 1}`
    await new Promise((resolve, reject) => socket.bind(0, address, (err) => (err ? reject(err) : resolve())))
    await new Promise((resolve) => socket.send(Buffer.from(`flood ${i}`), port, EDGE_ADDRESS, resolve))
    await new Promise((resolve) => socket.close(resolve))
  }
}

test('a UDP flood from thousands of addresses keeps neither new clients out nor a talking client from its session', { timeout: 180000 }, async () => {
  const target = await startUdpTarget(udpBehaviours.echo)
  const limit = 128
  let tunnel
  const clients = []
  try {
    tunnel = await startTunnel({ ports: [], udpPorts: [target.port], hubOptions: { limits: { maxUdpSessionsPerEdge: 128 } } })
    // A client in a conversation: it has sent twice before the flood, and talks between waves.
    const regular = await startUdpClient()
    clients.push(regular)
    const ask = (client, text) => client.request(Buffer.from(text), target.port, { match: (d) => d.toString() === text, timeoutMs: 5000, attempts: 3 })
    const hubPortOf = (text) => target.datagrams.findLast((d) => d.payload.toString() === text).from.port
    assert.equal((await ask(regular, 'hello')).toString(), 'hello')
    assert.equal((await ask(regular, 'hello again')).toString(), 'hello again')
    const regularHubPort = hubPortOf('hello again')

    // Waves of single datagrams from new addresses, each wave twice the table, with a new
    // client after each: every new client gets its answer, and the regular client keeps its
    // session (and so its hub socket).
    let flooded = 0
    for (let wave = 0; wave < 5; wave++) {
      await udpFlood(target.port, 2 * limit, flooded)
      flooded += 2 * limit
      const client = await startUdpClient()
      clients.push(client)
      assert.equal((await ask(client, `new client ${wave}`)).toString(), `new client ${wave}`)
      assert.equal((await ask(regular, `regular ${wave}`)).toString(), `regular ${wave}`)
      assert.equal(hubPortOf(`regular ${wave}`), regularHubPort, `the regular client kept its session through wave ${wave}`)
    }

    const edgeMetrics = await tunnel.edge.getMetrics()
    const evicted = Number(/^remoteingress_edge_udp_sessions_evicted_total (\d+)$/m.exec(edgeMetrics)[1])
    assert.ok(evicted >= flooded - limit, `evicted ${evicted} of ${flooded}`)
    const edgeStatus = await tunnel.edge.getStatus()
    assert.ok(edgeStatus.activeUdpSessions <= limit, `the edge holds ${edgeStatus.activeUdpSessions}`)
    const hubStatus = await tunnel.hub.getStatus()
    assert.ok(hubStatus.connectedEdges[0].activeUdpSessions <= limit)
  } finally {
    for (const client of clients) await client.close()
    await stopQuietly(tunnel, target)
  }
})

test('connections whose clients stopped reading leave the tunnel to everyone else', { timeout: 180000 }, async () => {
  // Each stuck download holds its own window and no more. Over QUIC each once held a whole
  // 4 MiB stream window unread inside quinn, counted against the connection's window (at first
  // the 200 MiB granted in the handshake): 60 of them stopped every other connection's downloads.
  const STUCK = 60
  const endless = await startEndlessServer()
  const echo = await startTarget(behaviours.echo)
  const stuckPort = endless.address().port
  let tunnel
  const clients = []
  try {
    tunnel = await startTunnel({ ports: [stuckPort, echo.port], edgeOptions: { tunnelBufferBytes: 32 * 1024 * 1024 } })
    for (let i = 0; i < STUCK; i++) {
      const client = net.connect({ host: EDGE_ADDRESS, port: stuckPort })
      client.on('error', () => {})
      client.pause() // never reads
      clients.push(client)
    }
    const bytesOut = async () => (await tunnel.hub.getStatus()).connectedEdges[0]?.bytesOut ?? 0
    await waitFor(async () => (await tunnel.hub.getStatus()).connectedEdges[0]?.activeStreams === STUCK, {
      what: 'every stuck connection open at the hub',
    })
    // Until nothing more moves: every stuck download holds all its windows and buffers allow.
    let before = -1
    await waitFor(
      async () => {
        const now = await bytesOut()
        const still = now === before && now > 0
        before = now
        return still
      },
      { timeoutMs: 120000, intervalMs: 1000, what: 'the stuck downloads to fill what they may hold' },
    )
    assert.equal(await echoOnce(echo.port, 'still served', GUARD_MS), 'still served')
  } finally {
    for (const client of clients) client.destroy()
    await stopQuietly(tunnel, echo)
    endless.close()
  }
})

test('connections whose clients never read all end when the clients go, however full the tunnel', { timeout: 120000 }, async () => {
  const target = await startEndlessServer()
  const port = target.address().port
  let tunnel
  const clients = []
  try {
    // The smallest budget at the edge: the hub's sending is held up by the whole tunnel's
    // flow control, not by each stream's, long before the clients' sockets are full.
    tunnel = await startTunnel({ ports: [port], edgeOptions: { tunnelBufferBytes: 1024 * 1024 } })
    for (let i = 0; i < 40; i++) {
      const client = net.connect({ host: EDGE_ADDRESS, port })
      client.on('error', () => {})
      client.pause() // never reads
      clients.push(client)
    }
    const edgeStatus = () => tunnel.hub.getStatus().then((s) => s.connectedEdges[0])
    await waitFor(async () => (await edgeStatus())?.activeStreams === clients.length, { timeoutMs: 30000, what: 'every connection open at the hub' })
    // The hub has sent more than its budget: its sending side has been full.
    await waitFor(async () => (await edgeStatus()).bytesOut > 4 * 1024 * 1024, { timeoutMs: 30000, what: 'the tunnel filled' })
    for (const client of clients) client.destroy()
    await waitFor(async () => (await edgeStatus()).activeStreams === 0 && (await tunnel.edge.getStatus()).activeStreams === 0, {
      timeoutMs: 30000,
      what: 'every connection closed at hub and edge',
    })
  } finally {
    for (const client of clients) client.destroy()
    await stopQuietly(tunnel)
    target.close()
  }
})
