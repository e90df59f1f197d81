// Client rules at the edge (`clients`, `ports` in an allowed edge): allow and deny lists and
// per-source limits, applied before a stream or session exists, by the edge, over either
// transport. Clients come from many loopback addresses (127.0.0.0/8) and from ::1.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import net from 'node:net'
import {
  EDGE_ADDRESS,
  GUARD_MS,
  SECRET,
  behaviours,
  canBindUdp6Loopback,
  connect,
  echoOnce,
  metric,
  once,
  readBytes,
  recordEvents,
  socketEnding,
  startTarget,
  startTunnel,
  startUdpClient,
  startUdpTarget,
  stopQuietly,
  udpBehaviours,
  waitFor,
} from './helpers.mjs'

/**
 * Connects to the edge's `port` from `localAddress` and sends `text`: 'echoed' when the echo
 * target sent it back, else how the connection ended ('reset', or the error code).
 */
async function tryEcho(port, text, localAddress, host = EDGE_ADDRESS) {
  let socket
  try {
    socket = await connect(port, host, GUARD_MS, { localAddress })
  } catch (err) {
    // The reset can beat the connect event on loopback.
    return err.code === 'ECONNRESET' ? 'reset' : err.code ?? err.message
  }
  const ending = socketEnding(socket)
  const echoed = readBytes(socket, Buffer.byteLength(text)).then(
    (bytes) => bytes.toString(),
    () => null,
  )
  socket.write(text)
  const answer = await echoed
  socket.destroy()
  const { how, bytes } = await ending
  if (answer === text) return 'echoed'
  assert.equal(bytes, 0, `a refused client got ${bytes} bytes`)
  return how
}

const refused = (outcome) => outcome === 'reset' || outcome === 'EPIPE'

/** The edge's count of clients its rules turned away, or 0 before the first. */
async function refusals(edge, reason, protocol, port) {
  try {
    return metric(await edge.getMetrics(), `remoteingress_edge_clients_refused_total{reason="${reason}",protocol="${protocol}",port="${port}"}`)
  } catch {
    return 0
  }
}

/** Sources the target saw in PROXY headers. */
const sourcesSeen = (target) => target.connections.map((c) => c.source?.address)

test('a denied client is reset at accept and never reaches the hub; others are served', { timeout: 120000 }, async () => {
  const target = await startTarget(behaviours.echo)
  let tunnel
  try {
    tunnel = await startTunnel({ ports: [target.port], rules: { clients: { deny: ['127.0.5.0/24'] } } })
    const warnings = recordEvents(tunnel.edge, ['warning'])
    const streams = recordEvents(tunnel.hub, ['streamOpened'])
    assert.ok(refused(await tryEcho(target.port, 'denied', '127.0.5.1')))
    assert.equal(await tryEcho(target.port, 'served', '127.0.6.1'), 'echoed')
    await waitFor(async () => (await refusals(tunnel.edge, 'denied', 'tcp', target.port)) === 1, { what: 'one denial counted' })
    assert.deepEqual(sourcesSeen(target), ['127.0.6.1'])
    assert.deepEqual(
      streams.of('streamOpened').map((s) => s.clientAddress),
      ['127.0.6.1'],
    )
    const warning = warnings.of('warning').find((w) => w.code === 'clientRefused')
    assert.match(warning.message, /127\.0\.5\.1.*TCP port.*deny/)
  } finally {
    await stopQuietly(tunnel, target)
  }
})

test('a port\'s allow list overrides the edge\'s rules, and new rules apply without a reconnect', { timeout: 120000 }, async () => {
  const open = await startTarget(behaviours.echo)
  const guarded = await startTarget(behaviours.echo)
  let tunnel
  try {
    const ports = [open.port, guarded.port]
    tunnel = await startTunnel({ ports, rules: { ports: { [guarded.port]: { clients: { allow: ['127.0.7.0/24'] } } } } })
    assert.ok(refused(await tryEcho(guarded.port, 'outsider', '127.0.8.1')))
    assert.equal(await tryEcho(guarded.port, 'insider', '127.0.7.1'), 'echoed')
    assert.equal(await tryEcho(open.port, 'anyone', '127.0.8.1'), 'echoed')
    const [before] = (await tunnel.hub.getStatus()).connectedEdges

    // The allow list goes, a deny list for the former insiders comes: the same tunnel obeys.
    await tunnel.hub.updateAllowedEdges([{ id: 'edge-1', secret: SECRET, listenPorts: ports, clients: { deny: ['127.0.7.0/24'] } }])
    await waitFor(async () => refused(await tryEcho(open.port, 'now denied', '127.0.7.1')), { what: 'the deny list applied' })
    assert.equal(await tryEcho(guarded.port, 'now allowed', '127.0.8.1'), 'echoed')
    const [after] = (await tunnel.hub.getStatus()).connectedEdges
    assert.equal(after.tunnelId, before.tunnelId, 'no reconnect')
  } finally {
    await stopQuietly(tunnel, open, guarded)
  }
})

test('idle connections from a few sources cannot take the hub\'s streams from everyone else', { timeout: 180000 }, async () => {
  const target = await startTarget(behaviours.echo)
  let tunnel
  const idle = []
  try {
    // 10 sources open 60 idle connections each: 600, past the hub's 250 streams for the edge,
    // which would reset everyone else's connections (streamLimit) without the per-source limit.
    const perSource = 20
    tunnel = await startTunnel({
      ports: [target.port],
      hubOptions: { limits: { maxStreamsPerEdge: 250 } },
      rules: { clients: { maxConnectionsPerSource: perSource } },
    })
    for (let s = 1; s <= 10; s++) {
      // Those past the limit are reset, perhaps before their connect event.
      const opened = await Promise.allSettled(Array.from({ length: 60 }, () => connect(target.port, EDGE_ADDRESS, GUARD_MS, { localAddress: `127.0.9.${s}` })))
      for (const attempt of opened) {
        if (attempt.status === 'rejected') continue
        attempt.value.on('error', () => {})
        idle.push(attempt.value)
      }
    }
    await waitFor(async () => (await refusals(tunnel.edge, 'connectionLimit', 'tcp', target.port)) === 10 * (60 - perSource), {
      what: 'the connections past each source\'s limit refused',
    })
    for (let s = 1; s <= 20; s++) assert.equal(await echoOnce(target.port, `legitimate ${s}`, GUARD_MS, { localAddress: `127.0.10.${s}` }), `legitimate ${s}`)
    const [edge] = (await tunnel.hub.getStatus()).connectedEdges
    assert.ok(edge.activeStreams <= 10 * perSource + 20, `streams open at the hub: ${edge.activeStreams}`)

    // The places come back as the connections end.
    for (const socket of idle) socket.destroy()
    await waitFor(async () => (await tryEcho(target.port, 'back again', '127.0.9.1')) === 'echoed', { what: 'a source\'s places given back' })
  } finally {
    for (const socket of idle) socket.destroy()
    await stopQuietly(tunnel, target)
  }
})

test('new connections from one source follow its token bucket; other sources are unaffected', { timeout: 120000 }, async () => {
  const target = await startTarget(behaviours.echo)
  let tunnel
  try {
    const rate = 2
    const burst = 5
    tunnel = await startTunnel({ ports: [target.port], rules: { clients: { connectionRatePerSource: rate, connectionBurstPerSource: burst } } })
    const started = performance.now()
    const outcomes = await Promise.all(Array.from({ length: 30 }, (_, i) => tryEcho(target.port, `burst ${i}`, '127.0.11.1')))
    const elapsedSeconds = (performance.now() - started) / 1000
    const admitted = outcomes.filter((o) => o === 'echoed').length
    assert.ok(outcomes.every((o) => o === 'echoed' || refused(o)), outcomes.join())
    // The burst at once, then the refill over the time the attempts took, measured.
    assert.ok(admitted >= burst && admitted <= burst + Math.ceil(rate * elapsedSeconds), `${admitted} admitted in ${elapsedSeconds.toFixed(2)} s`)
    assert.equal(await tryEcho(target.port, 'another source', '127.0.11.2'), 'echoed')
    await waitFor(async () => (await refusals(tunnel.edge, 'rateLimit', 'tcp', target.port)) === 30 - admitted, { what: 'the refusals counted' })
  } finally {
    await stopQuietly(tunnel, target)
  }
})

test('a client silent past firstByteTimeoutMs is reset without a stream; one that speaks first is carried', { timeout: 120000 }, async () => {
  const target = await startTarget(behaviours.echo)
  let tunnel
  try {
    const timeoutMs = 300
    tunnel = await startTunnel({ ports: [target.port], rules: { clients: { firstByteTimeoutMs: timeoutMs } } })
    const streams = recordEvents(tunnel.hub, ['streamOpened'])
    const silent = await connect(target.port, EDGE_ADDRESS, GUARD_MS, { localAddress: '127.0.12.1' })
    const connectedAt = performance.now()
    const { how, bytes } = await socketEnding(silent)
    assert.equal(how, 'reset')
    assert.equal(bytes, 0)
    // Not before its time (less a little: the edge's clock starts at accept, ours after).
    assert.ok(performance.now() - connectedAt >= timeoutMs - 50, `reset after ${performance.now() - connectedAt} ms`)
    assert.equal(await tryEcho(target.port, 'speaks first', '127.0.12.2'), 'echoed')
    assert.deepEqual(
      streams.of('streamOpened').map((s) => s.clientAddress),
      ['127.0.12.2'],
    )
    await waitFor(async () => (await refusals(tunnel.edge, 'firstByteTimeout', 'tcp', target.port)) === 1, { what: 'the silent client counted' })
  } finally {
    await stopQuietly(tunnel, target)
  }
})

test('denied datagrams are dropped at the edge, and a source\'s UDP sessions are bounded and given back', { timeout: 120000 }, async () => {
  const target = await startUdpTarget(udpBehaviours.echo)
  let tunnel
  const clients = []
  try {
    tunnel = await startTunnel({
      ports: [],
      udpPorts: [target.port],
      // Long enough that no session ends before the third asks; the end is waited for below.
      edgeOptions: { udpIdleTimeoutMs: 3000 },
      rules: { clients: { deny: ['127.0.13.0/24'], maxUdpSessionsPerSource: 2 } },
    })
    const port = target.port
    const denied = await startUdpClient({ host: '127.0.13.1' })
    clients.push(denied)
    await denied.send(Buffer.from('denied'), port)
    await waitFor(async () => (await refusals(tunnel.edge, 'denied', 'udp', port)) === 1, { what: 'the denied datagram counted' })

    // Two sessions from 127.0.14.1 (two client ports) are answered; a third is dropped.
    const mine = []
    for (let i = 0; i < 3; i++) {
      const client = await startUdpClient({ host: '127.0.14.1' })
      clients.push(client)
      mine.push(client)
    }
    for (const client of mine.slice(0, 2)) assert.equal((await client.request(Buffer.from(`hello ${client.port}`), port)).toString(), `hello ${client.port}`)
    await mine[2].send(Buffer.from('one too many'), port)
    await waitFor(async () => (await refusals(tunnel.edge, 'udpSessionLimit', 'udp', port)) === 1, { what: 'the third session refused' })
    assert.equal((await startUdpClient({ host: '127.0.14.2' }).then((c) => (clients.push(c), c.request(Buffer.from('other source'), port)))).toString(), 'other source')
    assert.ok(target.datagrams.every((d) => !['127.0.13.1'].includes(d.header?.source?.address)))
    assert.ok(!target.datagrams.some((d) => d.payload?.toString() === 'one too many'))

    // Idle sessions end (udpIdleTimeoutMs), and the source's places come back.
    const answer = await mine[2].request(Buffer.from('my turn'), port, { timeoutMs: 1000, attempts: Math.ceil(GUARD_MS / 1000) })
    assert.equal(answer.toString(), 'my turn')
  } finally {
    for (const client of clients) await client.close()
    await stopQuietly(tunnel, target)
  }
})

test('rules apply to IPv6 clients on ::1', { timeout: 120000 }, async (t) => {
  if (!(await canBindUdp6Loopback())) return t.skip('no IPv6 loopback')
  const denying = await startTarget(behaviours.echo)
  const limiting = await startTarget(behaviours.echo)
  let tunnel
  const held = []
  try {
    tunnel = await startTunnel({
      ports: [denying.port, limiting.port],
      edgeOptions: { bindAddress: '::1' },
      rules: {
        clients: { maxConnectionsPerSource: 2 },
        ports: { [denying.port]: { clients: { deny: ['::1/128'] } } },
      },
    })
    assert.ok(refused(await tryEcho(denying.port, 'denied', '::1', '::1')))
    for (let i = 0; i < 2; i++) {
      const socket = await connect(limiting.port, '::1', GUARD_MS, { localAddress: '::1' })
      socket.on('error', () => {})
      held.push(socket)
    }
    await waitFor(async () => limiting.connections.length === 2, { what: 'both connections at the target' })
    assert.ok(refused(await tryEcho(limiting.port, 'third', '::1', '::1')))
    assert.equal(limiting.connections[0].source.address, '::1')
    held.pop().destroy()
    await waitFor(async () => (await tryEcho(limiting.port, 'a place again', '::1', '::1')) === 'echoed', { what: 'a place given back' })
    assert.equal(await refusals(tunnel.edge, 'denied', 'tcp', denying.port), 1)
  } finally {
    for (const socket of held) socket.destroy()
    await stopQuietly(tunnel, denying, limiting)
  }
})
