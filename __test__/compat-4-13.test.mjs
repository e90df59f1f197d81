// transport: tcpTls only (the 4.13 protocol is TCP+TLS only)
// Interoperability with the documented 4.13 wire protocol: an independent peer written from the
// upstream documentation (helpers/upstream413.mjs) plays a 4.13 edge against our real hub, and
// a 4.13 hub for our real edge. It checks the login without ALPN, TCP streams, bursts within the
// documented 4 MB window, UDP sessions, heartbeats, refusals and CONFIG, and that nothing
// outside the documentation ever reaches the peer.
import test from 'node:test'
import assert from 'node:assert/strict'
import crypto from 'node:crypto'
import dgram from 'node:dgram'
import net from 'node:net'
import {
  behaviours,
  connect,
  EDGE_ADDRESS,
  edgeConfig,
  encodeProxyV2Udp,
  GUARD_MS,
  once,
  parseProxyHeader,
  readUntilEnd,
  recordEvents,
  remoteingress,
  RemoteIngressEdge,
  SECRET,
  sha256,
  startConnectedEdge,
  startHub,
  startTarget,
  startUdpClient,
  startUdpTarget,
  stopQuietly,
  TARGET_ADDRESS,
  udpBehaviours,
  waitFor,
  withTimeout,
} from './helpers.mjs'
import { connect413Edge, start413Hub, T413, WINDOW_413, CHUNK_413 } from './helpers/upstream413.mjs'

const DOCUMENTED_KEYS = ['listenPorts', 'listenPortsUdp', 'stunIntervalSecs']
const BURST = 48 * CHUNK_413 // 3 MiB: within the documented 4 MB window, far past 64 KiB

/** The peer saw only documented frames: types 0x01..0x0E, empty CLOSEs, 4-byte credits. */
function assertClean(peer) {
  const types = [...new Set(peer.frames.map((f) => f.type))]
  assert.ok(types.every((t) => t >= 0x01 && t <= 0x0e), `frame types received: ${types.map((t) => `0x${t.toString(16)}`)}`)
  assert.deepEqual(peer.violations, [], 'frames outside the documented 4.13 protocol')
}

/** Whether the Prometheus text has exactly this sample line. */
const hasLine = (text, line) => text.split('\n').includes(line)

/** A TCP port free on `host` right now. */
function freeTcpPort(host = EDGE_ADDRESS) {
  return new Promise((resolve, reject) => {
    const server = net.createServer()
    server.once('error', reject)
    server.listen(0, host, () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
  })
}

/** A UDP port free on the edge address right now. */
function freeEdgeUdpPort() {
  const socket = dgram.createSocket('udp4')
  return new Promise((resolve, reject) => {
    socket.once('error', reject)
    socket.bind(0, EDGE_ADDRESS, () => {
      const { port } = socket.address()
      socket.close(() => resolve(port))
    })
  })
}

const proxyLine = (client, port) => `PROXY TCP4 ${client.address} ${EDGE_ADDRESS} ${client.port} ${port}\r\n`

// ---------------------------------------------------------------------------------------------
// A 4.13 edge against our hub

/** Our hub with one allowed edge, and the 4.13 peer logged in to it. */
async function hubWith413Edge({ edgeId = 'compat-413', ports = [], udpPorts = [], hubOptions = {} } = {}) {
  const { hub, hubPort } = await startHub([{ id: edgeId, secret: SECRET, listenPorts: ports, listenPortsUdp: udpPorts }], hubOptions)
  const hubEvents = recordEvents(hub, ['edgeConnected', 'edgeDisconnected', 'warning'])
  let peer
  try {
    peer = await connect413Edge(hubPort, edgeId, SECRET)
    const answer = await withTimeout(peer.answer, GUARD_MS, 'the answer line')
    assert.ok(answer, `the hub closed without an answer (${peer.tlsError?.message ?? 'after TLS'})`)
    await waitFor(() => hubEvents.of('edgeConnected').some((e) => e.edgeId === edgeId), { what: "hub 'edgeConnected'" })
    return { hub, hubPort, peer, answer, hubEvents, edgeId, stop: () => stopQuietly(peer, hub) }
  } catch (err) {
    await stopQuietly(peer, hub)
    throw err
  }
}

async function hubEdgeStatus(hub, edgeId) {
  return (await hub.getStatus()).connectedEdges.find((e) => e.edgeId === edgeId)
}

/** The tunnel is still up: peer connected, the hub lists the edge and never dropped it. */
async function assertHubTunnelUp(ctx) {
  assert.equal(ctx.peer.closed, false, 'the 4.13 peer is still connected')
  assert.deepEqual(ctx.hubEvents.of('edgeDisconnected'), [])
  assert.ok(await hubEdgeStatus(ctx.hub, ctx.edgeId), 'the hub still lists the edge')
}

test('4.13 edge → hub: a login without ALPN gets exactly the documented keys; the hub says protocol 4.13', { timeout: 60000 }, async () => {
  for (const hubOptions of [{}, { limits: { maxUdpSessionsPerEdge: 100 } }]) {
    const ctx = await hubWith413Edge({ ports: [18080], udpPorts: [15353], hubOptions })
    try {
      const { hub, peer, answer, edgeId } = ctx
      const label = JSON.stringify(hubOptions)
      assert.equal(peer.alpnProtocol, false, 'no ALPN protocol selected')
      assert.deepEqual(Object.keys(answer).sort(), DOCUMENTED_KEYS, `answer keys with ${label}: ${peer.line}`)
      assert.deepEqual(answer, { listenPorts: [18080], listenPortsUdp: [15353], stunIntervalSecs: 300 })

      const connected = ctx.hubEvents.of('edgeConnected').find((e) => e.edgeId === edgeId)
      assert.equal(connected.protocol, '4.13')
      assert.equal(connected.transport, 'tcpTls')
      const status = await hubEdgeStatus(hub, edgeId)
      assert.equal(status.protocol, '4.13')
      assert.equal(status.transport, 'tcpTls')
      const infoLine = `remoteingress_hub_edge_info{edge="${edgeId}",tunnel="${connected.tunnelId}",transport="tcpTls",protocol="4.13"} 1`
      await waitFor(async () => hasLine(await hub.getMetrics(), infoLine), { what: infoLine })

      // A CONFIG pushed on an allowed-edges change carries the same documented keys only.
      await hub.updateAllowedEdges([{ id: edgeId, secret: SECRET, listenPorts: [18080, 18081], listenPortsUdp: [15353] }])
      const config = await peer.nextFrame((f) => f.type === T413.CONFIG, GUARD_MS, 'a CONFIG frame')
      assert.equal(config.streamId, 0)
      const pushed = JSON.parse(config.payload.toString('utf8'))
      assert.deepEqual(Object.keys(pushed).sort(), DOCUMENTED_KEYS, `CONFIG keys with ${label}: ${config.payload}`)
      assert.deepEqual(pushed, { listenPorts: [18080, 18081], listenPortsUdp: [15353], stunIntervalSecs: 300 })
      await assertHubTunnelUp(ctx)
      assertClean(peer)
    } finally {
      await ctx.stop()
    }
  }
})

test('4.13 edge → hub: a TCP request with a PROXY v1 OPEN reaches the target; the response comes back', { timeout: 60000 }, async () => {
  const response = Buffer.from('HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello')
  const target = await startTarget(behaviours.replyAfterEnd(response))
  let ctx
  try {
    ctx = await hubWith413Edge({ ports: [target.port] })
    const { peer } = ctx
    const client = { address: '203.0.113.7', port: 40000 }
    const request = Buffer.from('GET / HTTP/1.1\r\nhost: compat.example\r\n\r\n')
    peer.open(1, proxyLine(client, target.port))
    await peer.sendData(1, request)
    peer.closeStream(1) // the client's FIN: the target sees 'end' and answers

    const closeBack = await peer.nextFrame((f) => f.streamId === 1 && f.type === T413.CLOSE_BACK, GUARD_MS, 'CLOSE_BACK on stream 1')
    assert.equal(closeBack.payload.length, 0)
    assert.equal(peer.dataOf(1).toString(), response.toString(), 'DATA_BACK carries the response before CLOSE_BACK')
    const onStream = peer.frames.filter((f) => f.streamId === 1).map((f) => f.type)
    assert.ok(onStream.every((t) => [T413.DATA_BACK, T413.CLOSE_BACK, T413.WINDOW_UPDATE_BACK].includes(t)), `frames on stream 1: ${onStream}`)

    assert.equal(target.connections.length, 1)
    const record = target.connections[0]
    assert.equal(record.raw.toString('latin1'), `PROXY TCP4 203.0.113.7 ${EDGE_ADDRESS} 40000 ${target.port}\r\n`)
    assert.deepEqual(record.source, client)
    assert.deepEqual(record.destination, { address: EDGE_ADDRESS, port: target.port })
    assert.equal(Buffer.concat(record.received).toString(), request.toString())
    await assertHubTunnelUp(ctx)
    assertClean(peer)
  } finally {
    await stopQuietly(ctx, target)
  }
})

test('4.13 edge → hub: a 3 MiB upload sent at once within the documented window arrives intact', { timeout: 60000 }, async () => {
  const target = await startTarget(behaviours.sink)
  let ctx
  try {
    ctx = await hubWith413Edge({ ports: [target.port] })
    const { peer } = ctx
    const upload = crypto.randomBytes(BURST)
    peer.open(1, proxyLine({ address: '203.0.113.8', port: 40001 }, target.port))
    const sent = peer.sendData(1, upload)
    // All 48 frames were written before any WINDOW_UPDATE_BACK could have been read.
    assert.equal(peer.dataSent.get(1), upload.length, 'the whole burst was written without waiting for credit')
    assert.ok(upload.length <= WINDOW_413)
    await sent
    peer.closeStream(1)

    const arrived = waitFor(() => Buffer.concat(target.connections[0]?.received ?? []).length >= upload.length, { what: `${upload.length} bytes at the target` })
    const dropped = peer.whenClosed.then(() => {
      throw new Error(`the hub closed the tunnel: ${JSON.stringify(ctx.hubEvents.of('edgeDisconnected'))}`)
    })
    await Promise.race([arrived, dropped])
    const received = Buffer.concat(target.connections[0].received)
    assert.equal(received.length, upload.length)
    assert.equal(sha256(received), sha256(upload))
    await waitFor(() => target.connections[0].ended, { what: 'the CLOSE to reach the target as a FIN' })

    const credit = peer.creditReceived.get(1) ?? 0
    assert.ok(credit <= upload.length, `WINDOW_UPDATE_BACK credited ${credit} bytes of ${upload.length} sent`)
    for (const f of peer.frames.filter((f) => f.type === T413.WINDOW_UPDATE_BACK)) assert.equal(f.payload.length, 4)
    await assertHubTunnelUp(ctx)
    assertClean(peer)
  } finally {
    await stopQuietly(ctx, target)
  }
})

test('4.13 edge → hub: a UDP session opened with a PROXY v2 header reaches the target; replies come back', { timeout: 60000 }, async () => {
  const target = await startUdpTarget(udpBehaviours.answer((payload) => Buffer.concat([Buffer.from('re:'), payload])))
  let ctx
  try {
    ctx = await hubWith413Edge({ udpPorts: [target.port] })
    const { peer } = ctx
    const session = 7
    const client = { address: '203.0.113.9', port: 5353 }
    peer.udpOpen(session, encodeProxyV2Udp(client, { address: EDGE_ADDRESS, port: target.port }))
    for (const text of ['first query', 'second query']) {
      peer.sendDatagram(session, Buffer.from(text))
      const reply = await peer.nextFrame((f) => f.type === T413.UDP_DATA_BACK && f.streamId === session, GUARD_MS, `the reply to '${text}'`)
      assert.equal(reply.payload.toString(), `re:${text}`)
    }
    assert.equal(target.datagrams.length, 2)
    for (const [i, record] of target.datagrams.entries()) {
      assert.equal(record.error, null)
      assert.equal(record.header.protocol, 'UDP4')
      assert.deepEqual(record.header.source, client)
      assert.deepEqual(record.header.destination, { address: EDGE_ADDRESS, port: target.port })
      assert.equal(record.payload.toString(), ['first query', 'second query'][i])
    }
    assert.equal((await hubEdgeStatus(ctx.hub, ctx.edgeId)).activeUdpSessions, 1)
    peer.udpClose(session)
    await waitFor(async () => (await hubEdgeStatus(ctx.hub, ctx.edgeId)).activeUdpSessions === 0, { what: 'UDP_CLOSE to end the session' })
    await assertHubTunnelUp(ctx)
    assertClean(peer)
  } finally {
    await stopQuietly(ctx, target)
  }
})

test('4.13 edge → hub: the hub PINGs, the peer answers with PONGs, and the edge stays connected', { timeout: 60000 }, async () => {
  // 15 answered PINGs 200 ms apart span more than the 2000 ms heartbeat timeout.
  const ctx = await hubWith413Edge({ hubOptions: { heartbeatIntervalMs: 200, heartbeatTimeoutMs: 2000 } })
  try {
    await waitFor(() => ctx.peer.pingsAnswered >= 15, { what: '15 PINGs answered' })
    const pings = ctx.peer.frames.filter((f) => f.type === T413.PING)
    assert.ok(pings.every((f) => f.streamId === 0))
    await assertHubTunnelUp(ctx)
    assertClean(ctx.peer)
  } finally {
    await ctx.stop()
  }
})

/** Connects a 4.13 edge that the hub refuses; asserts it is closed having received nothing. */
async function assertRefusedSilently(hubPort, secret, what) {
  const peer = await connect413Edge(hubPort, 'refused-413', secret)
  try {
    await withTimeout(peer.whenClosed, GUARD_MS, `the hub to close the connection (${what})`)
    assert.equal(peer.line, null, `no answer line (${what}), got ${JSON.stringify(peer.line)}`)
    assert.equal(peer.bytesReceived, 0, `nothing received (${what})`)
  } finally {
    await stopQuietly(peer)
  }
}

test('4.13 edge → hub: with accept413 false the hub closes without an answer and warns handshakeFailed', { timeout: 60000 }, async () => {
  const { hub, hubPort } = await startHub([{ id: 'refused-413', secret: SECRET, listenPorts: [18080] }], { accept413: false })
  try {
    const hubEvents = recordEvents(hub, ['edgeConnected'])
    const handshakeFailed = once(hub, 'warning', GUARD_MS, (w) => w.code === 'handshakeFailed')
    handshakeFailed.catch(() => {}) // awaited below
    await assertRefusedSilently(hubPort, SECRET, 'accept413: false')
    assert.match((await handshakeFailed).message, /4\.13/)
    assert.deepEqual(hubEvents.of('edgeConnected'), [])
  } finally {
    await stopQuietly(hub)
  }
})

test('4.13 edge → hub: a wrong secret is refused by closing, without any answer line', { timeout: 60000 }, async () => {
  const { hub, hubPort } = await startHub([{ id: 'refused-413', secret: SECRET, listenPorts: [18080] }])
  try {
    const hubEvents = recordEvents(hub, ['edgeConnected'])
    // Refused as a login (the hub's usual authFailed), not for the dialect.
    const authFailed = once(hub, 'warning', GUARD_MS, (w) => w.code === 'authFailed')
    authFailed.catch(() => {}) // awaited below
    await assertRefusedSilently(hubPort, 'not-the-secret', 'a wrong secret')
    await authFailed
    assert.deepEqual(hubEvents.of('edgeConnected'), [])
  } finally {
    await stopQuietly(hub)
  }
})

test('4.13 edge → hub: an OPEN to an unassigned port or an unreachable target gets an empty CLOSE_BACK', { timeout: 60000 }, async () => {
  const target = await startTarget(behaviours.echo)
  const deadPort = await freeTcpPort(TARGET_ADDRESS) // assigned, nothing listening
  const unassignedPort = await freeTcpPort(TARGET_ADDRESS)
  let ctx
  try {
    ctx = await hubWith413Edge({ ports: [target.port, deadPort] })
    const { peer } = ctx
    const client = { address: '203.0.113.10', port: 40002 }
    for (const [id, port, why] of [[1, unassignedPort, 'unassigned port'], [3, deadPort, 'unreachable target']]) {
      peer.open(id, proxyLine(client, port))
      const reply = await peer.nextFrame((f) => f.streamId === id, GUARD_MS, `the answer to an OPEN to an ${why}`)
      assert.equal(reply.type, T413.CLOSE_BACK, `${why}: frame ${reply.type}`)
      assert.equal(reply.payload.length, 0, `${why}: CLOSE_BACK is empty`)
    }
    // The tunnel still carries a stream to the assigned, listening target.
    peer.open(5, proxyLine(client, target.port))
    await peer.sendData(5, Buffer.from('still up'))
    await waitFor(() => peer.dataOf(5).length >= 8, { what: 'the echo on stream 5' })
    assert.equal(peer.dataOf(5).toString(), 'still up')
    assert.equal(target.connections.length, 1)
    const codes = ctx.hubEvents.of('warning').map((w) => w.code)
    assert.ok(codes.includes('portNotAssigned') && codes.includes('targetUnreachable'), `warnings: ${codes}`)
    await assertHubTunnelUp(ctx)
    assertClean(peer)
  } finally {
    await stopQuietly(ctx, target)
  }
})

// ---------------------------------------------------------------------------------------------
// Our edge against a 4.13 hub

/**
 * A 4.13 hub answering `compat-edge` with one TCP and one UDP port, and our edge connected to it
 * with both listeners up. Returns { peerHub, session, edge, events, tcpPort, udpPort, stop }.
 */
async function edgeWith413Hub({ edgeId = 'compat-edge', edgeOptions = {} } = {}) {
  const tcpPort = await freeTcpPort()
  const udpPort = await freeEdgeUdpPort()
  const expected = `EDGE ${edgeId} ${SECRET}\n`
  const peerHub = await start413Hub({
    answer: (line) => (line === expected ? { listenPorts: [tcpPort], listenPortsUdp: [udpPort], stunIntervalSecs: 300 } : null),
  })
  const edge = new RemoteIngressEdge()
  const events = recordEvents(edge, ['tunnelConnected', 'tunnelDisconnected', 'portsAssigned', 'portsUpdated', 'warning'])
  try {
    await edge.start(edgeConfig(peerHub.port, edgeId, SECRET, edgeOptions))
    await waitFor(() => events.of('tunnelConnected').length > 0 && events.of('portsAssigned').length > 0, { what: 'the edge to connect' })
    await waitFor(
      async () => {
        const status = await edge.getStatus()
        return status.listenPorts.includes(tcpPort) && status.listenPortsUdp.includes(udpPort)
      },
      { what: 'the edge listeners' },
    )
    const session = peerHub.sessions.find((s) => s.authLine === expected)
    return { peerHub, session, edge, events, tcpPort, udpPort, edgeId, stop: () => stopQuietly(edge, peerHub) }
  } catch (err) {
    await stopQuietly(edge, peerHub)
    throw err
  }
}

/** Our edge's tunnel is still up: one session, never disconnected. */
async function assertEdgeTunnelUp(ctx) {
  assert.deepEqual(ctx.events.of('tunnelDisconnected'), [])
  assert.equal((await ctx.edge.getStatus()).connected, true)
  assert.equal(ctx.session.closed, false)
  assert.equal(ctx.peerHub.sessions.length, 1, 'no reconnect')
}

/** The OPEN the edge sent for the client on local port `clientPort`. */
const openFor = (session, clientPort) =>
  session.nextFrame((f) => f.type === T413.OPEN && f.payload.toString('latin1').includes(` ${clientPort} `), GUARD_MS, `the OPEN for client port ${clientPort}`)

test('our edge → 4.13 hub: auth line, documented answer; the edge says protocol 4.13 and opens no extra lanes', { timeout: 60000 }, async () => {
  const ctx = await edgeWith413Hub({ edgeOptions: { lanes: 4 } })
  try {
    assert.ok(ctx.session, 'the 4.13 hub got the auth line')
    assert.equal(ctx.session.authLine, `EDGE compat-edge ${SECRET}\n`)
    assert.equal(ctx.session.alpnProtocol, false, 'no ALPN offered')
    assert.deepEqual(ctx.events.of('portsAssigned')[0], { listenPorts: [ctx.tcpPort], listenPortsUdp: [ctx.udpPort] })
    const connected = ctx.events.of('tunnelConnected')[0]
    assert.equal(connected.protocol, '4.13')
    assert.equal(connected.transport, 'tcpTls')
    const status = await ctx.edge.getStatus()
    assert.equal(status.protocol, '4.13')
    assert.equal(status.transport, 'tcpTls')
    const hub = `127.0.0.1:${ctx.peerHub.port}`
    assert.deepEqual(status.tunnels.map((t) => [t.hub, t.connected, t.instanceId, t.protocol]), [[hub, true, null, '4.13']], 'a 4.13 hub names no instance')
    const infoLine = `remoteingress_edge_tunnel_info{hub="${hub}",address="${hub}",transport="tcpTls",protocol="4.13"} 1`
    await waitFor(async () => hasLine(await ctx.edge.getMetrics(), infoLine), { what: infoLine })
    await assertEdgeTunnelUp(ctx)
    assertClean(ctx.session)
  } finally {
    await ctx.stop()
  }
})

test('our edge → 4.13 hub: a pinned key is checked as with our hubs; with another key the secret never leaves', { timeout: 60000 }, async () => {
  const peerHub = await start413Hub({ answer: () => ({ listenPorts: [], listenPortsUdp: [], stunIntervalSecs: 300 }) })
  let tlsConnections = 0
  peerHub.server.on('secureConnection', () => tlsConnections++)
  const wrong = new RemoteIngressEdge()
  let right
  try {
    const events = recordEvents(wrong, ['warning', 'tunnelConnected'])
    const otherKey = remoteingress.generateHubCertificate().fingerprint
    await wrong.start(edgeConfig(peerHub.port, 'pinned-edge', SECRET, { hubFingerprint: otherKey }))
    await waitFor(() => events.of('warning').filter((w) => w.code === 'connectFailed').length >= 2, { what: 'two refused attempts' })
    await stopQuietly(wrong)
    assert.equal(events.of('tunnelConnected').length, 0)
    assert.equal(tlsConnections, 0, 'no TLS session was completed with a hub of another key')
    assert.ok(peerHub.sessions.every((s) => s.authLine === undefined), 'no auth line was received')

    ;({ edge: right } = await startConnectedEdge(edgeConfig(peerHub.port, 'pinned-edge', SECRET, { hubFingerprint: peerHub.fingerprint })))
    assert.equal((await right.getStatus()).protocol, '4.13')
    assert.equal(peerHub.sessions.at(-1).authLine, `EDGE pinned-edge ${SECRET}\n`)
  } finally {
    await stopQuietly(wrong, right, peerHub)
  }
})

test('our edge → 4.13 hub: a TCP request is OPEN + DATA + empty CLOSE; DATA_BACK and CLOSE_BACK reach the client', { timeout: 60000 }, async () => {
  const ctx = await edgeWith413Hub()
  let client
  try {
    const { session, tcpPort } = ctx
    client = await connect(tcpPort)
    const clientPort = client.localPort
    const open = await openFor(session, clientPort)
    assert.equal(open.payload.toString('latin1'), `PROXY TCP4 ${TARGET_ADDRESS} ${EDGE_ADDRESS} ${clientPort} ${tcpPort}\r\n`)
    const id = open.streamId
    const replied = readUntilEnd(client)
    client.end('GET /compat HTTP/1.1\r\n\r\n')
    const close = await session.nextFrame((f) => f.streamId === id && f.type === T413.CLOSE, GUARD_MS, `CLOSE on stream ${id}`)
    assert.equal(close.payload.length, 0)
    assert.equal(session.dataOf(id).toString(), 'GET /compat HTTP/1.1\r\n\r\n')

    await session.sendData(id, Buffer.from('answer from the 4.13 hub'))
    session.closeStream(id)
    assert.equal((await replied).toString(), 'answer from the 4.13 hub')
    await assertEdgeTunnelUp(ctx)
    assertClean(session)
  } finally {
    client?.destroy()
    await ctx.stop()
  }
})

test('our edge → 4.13 hub: a 3 MiB download sent at once within the documented window reaches the client', { timeout: 60000 }, async () => {
  const ctx = await edgeWith413Hub()
  let client
  try {
    const { session, tcpPort } = ctx
    client = await connect(tcpPort)
    const open = await openFor(session, client.localPort)
    const id = open.streamId
    const received = readUntilEnd(client)
    const download = crypto.randomBytes(BURST)
    const sent = session.sendData(id, download)
    assert.equal(session.dataSent.get(id), download.length, 'the whole burst was written without waiting for credit')
    await sent
    session.closeStream(id)
    const got = await received
    assert.equal(got.length, download.length)
    assert.equal(sha256(got), sha256(download))

    const updates = session.frames.filter((f) => f.type === T413.WINDOW_UPDATE)
    for (const f of updates) assert.equal(f.payload.length, 4)
    const credit = session.creditReceived.get(id) ?? 0
    assert.ok(credit <= download.length, `WINDOW_UPDATE credited ${credit} bytes of ${download.length} sent`)
    await assertEdgeTunnelUp(ctx)
    assertClean(session)
  } finally {
    client?.destroy()
    await ctx.stop()
  }
})

test('our edge → 4.13 hub: a datagram is UDP_OPEN (PROXY v2) + UDP_DATA; UDP_DATA_BACK reaches the client', { timeout: 60000 }, async () => {
  const ctx = await edgeWith413Hub()
  let client
  try {
    const { session, udpPort } = ctx
    client = await startUdpClient()
    await client.send(Buffer.from('udp hello'), udpPort)
    const open = await session.nextFrame((f) => f.type === T413.UDP_OPEN, GUARD_MS, 'UDP_OPEN')
    const header = parseProxyHeader(open.payload)
    assert.ok(header, 'a whole PROXY v2 header')
    assert.equal(header.version, 2)
    assert.equal(header.protocol, 'UDP4')
    assert.equal(header.length, open.payload.length, 'the payload is the header only')
    assert.deepEqual(header.source, { address: TARGET_ADDRESS, port: client.port })
    assert.deepEqual(header.destination, { address: EDGE_ADDRESS, port: udpPort })
    const data = await session.nextFrame((f) => f.type === T413.UDP_DATA && f.streamId === open.streamId, GUARD_MS, 'UDP_DATA')
    assert.equal(data.payload.toString(), 'udp hello')

    const reply = client.nextMessage()
    session.sendDatagram(open.streamId, Buffer.from('udp answer'))
    const message = await reply
    assert.equal(message.data.toString(), 'udp answer')
    assert.deepEqual(message.from, { address: EDGE_ADDRESS, port: udpPort })
    await assertEdgeTunnelUp(ctx)
    assertClean(session)
  } finally {
    await client?.close()
    await ctx.stop()
  }
})

test('our edge → 4.13 hub: PINGs with 0, 4, 8 and 64 payload bytes get PONGs echoing them', { timeout: 60000 }, async () => {
  const ctx = await edgeWith413Hub()
  try {
    for (const length of [0, 4, 8, 64]) {
      const payload = crypto.randomBytes(length)
      const pong = await ctx.session.ping(payload)
      assert.equal(pong.streamId, 0)
      assert.equal(pong.payload.toString('hex'), payload.toString('hex'), `PONG to a ${length}-byte PING`)
    }
    await assertEdgeTunnelUp(ctx)
    assertClean(ctx.session)
  } finally {
    await ctx.stop()
  }
})

test('our edge → 4.13 hub: a CONFIG adding a TCP port opens it; connections on it are tunneled', { timeout: 60000 }, async () => {
  const ctx = await edgeWith413Hub()
  let client
  try {
    const { session, tcpPort, udpPort } = ctx
    const newPort = await freeTcpPort()
    session.sendConfig({ listenPorts: [tcpPort, newPort], listenPortsUdp: [udpPort], stunIntervalSecs: 300 })
    // The edge reports the new ports (portsUpdated, or portsAssigned again).
    const portEvent = await waitFor(
      () => [...ctx.events.of('portsAssigned'), ...ctx.events.of('portsUpdated')].find((e) => e.listenPorts.includes(newPort)),
      { what: `an event listing port ${newPort}` },
    )
    assert.deepEqual([...portEvent.listenPorts].sort(), [tcpPort, newPort].sort())
    assert.deepEqual(portEvent.listenPortsUdp, [udpPort])
    await waitFor(async () => (await ctx.edge.getStatus()).listenPorts.includes(newPort), { what: `the edge to listen on ${newPort}` })

    client = await connect(newPort)
    const open = await openFor(session, client.localPort)
    assert.equal(open.payload.toString('latin1'), `PROXY TCP4 ${TARGET_ADDRESS} ${EDGE_ADDRESS} ${client.localPort} ${newPort}\r\n`)
    await assertEdgeTunnelUp(ctx)
    assertClean(session)
  } finally {
    client?.destroy()
    await ctx.stop()
  }
})
