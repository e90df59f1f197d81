// transport: tcpTls only (a hand-driven TLS hub checks the TCP+TLS wire the edge speaks)
// The edge seen from the wire: a hand-driven hub (TLS server in this process) checks what the
// real edge sends — handshake line, OPEN/DATA/CLOSE frames, PONGs — and drives it with CONFIG,
// DATA_BACK/CLOSE_BACK, PING and silence.
import test from 'node:test'
import assert from 'node:assert/strict'
import crypto from 'node:crypto'
import net from 'node:net'
import {
  behaviours,
  connect,
  EDGE_ADDRESS,
  edgeConfig,
  FrameType,
  GUARD_MS,
  metric,
  once,
  probeConnect,
  readBytes,
  readUntilEnd,
  RemoteIngressEdge,
  SECRET,
  socketEnding,
  startConnectedEdge,
  startHub,
  startRawHub,
  startTarget,
  stopQuietly,
  waitFor,
  withTimeout,
} from './helpers.mjs'

/** A port free on the edge address right now. */
function freeEdgePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer()
    server.once('error', reject)
    server.listen(0, EDGE_ADDRESS, () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
  })
}

const answerWith = (config) => () => JSON.stringify({ listenPortsUdp: [], stunIntervalSecs: 300, ...config }) + '\n'

/** Starts an edge against the raw hub and waits until it is connected; returns { edge, ports }. */
const startEdgeAgainst = (rawHub, edgeId, extra = {}) => startConnectedEdge(edgeConfig(rawHub.port, edgeId, SECRET, extra))

test('edge wire: auth line, then OPEN with the PROXY line, DATA, CLOSE; replies reach the client', { timeout: 60000 }, async () => {
  const port = await freeEdgePort()
  // An unknown key in the answer must be ignored (room for extensions).
  const rawHub = await startRawHub({ answer: answerWith({ listenPorts: [port], someFutureOption: { x: 1 } }) })
  let edge
  const clients = []
  try {
    const started = await startEdgeAgainst(rawHub, 'wire-edge')
    edge = started.edge
    assert.deepEqual(started.ports, { listenPorts: [port], listenPortsUdp: [] })
    const session = rawHub.sessions[0]
    assert.equal(session.authLine, `EDGE wire-edge ${SECRET}\n`)

    await waitFor(async () => (await probeConnect(port)) === 'connected', { what: 'the edge listener' })
    // The probe itself opened (and closed) a stream; collect its frames out of the way.
    const probeOpen = await session.nextFrame((f) => f.type === FrameType.OPEN, GUARD_MS, 'the probe OPEN')

    const client = await connect(port)
    clients.push(client)
    const clientPort = client.localPort
    const open = await session.nextFrame((f) => f.type === FrameType.OPEN, GUARD_MS, 'an OPEN frame')
    assert.equal(open.payload.toString('latin1'), `PROXY TCP4 127.0.0.1 127.0.0.2 ${clientPort} ${port}\r\n`)
    assert.ok(open.streamId > probeOpen.streamId, `stream ids increase: ${probeOpen.streamId} then ${open.streamId}`)
    assert.equal(probeOpen.streamId, 1, 'the first stream of a tunnel is 1')
    const id = open.streamId

    const upload = crypto.randomBytes(300 * 1024)
    client.end(upload)
    const dataFrames = []
    let total = 0
    for (let i = 0; i < 1000 && total < upload.length; i++) {
      const frame = await session.nextFrame((f) => f.streamId === id && f.type === FrameType.DATA, GUARD_MS, `DATA for stream ${id}`)
      dataFrames.push(frame)
      total += frame.payload.length
      // As a hub does once the bytes reached the target: past its initial window the edge
      // sends only on credit.
      const credit = Buffer.alloc(4)
      credit.writeUInt32BE(frame.payload.length)
      session.send(id, FrameType.WINDOW_UPDATE_BACK, credit)
    }
    assert.ok(Buffer.concat(dataFrames.map((f) => f.payload)).equals(upload), 'DATA frames carry the client bytes in order')
    assert.ok(dataFrames.every((f) => f.payload.length > 0 && f.payload.length <= 64 * 1024), 'DATA payloads are 1..64 KiB')
    const close = await session.nextFrame((f) => f.streamId === id && f.type === FrameType.CLOSE, GUARD_MS, `CLOSE for stream ${id}`)
    assert.equal(close.payload.length, 0, 'a client FIN is a half-close (empty CLOSE)')

    const replied = readUntilEnd(client)
    session.send(id, FrameType.DATA_BACK, Buffer.from('answer from the hub'))
    session.send(id, FrameType.CLOSE_BACK, Buffer.alloc(0))
    assert.equal((await replied).toString(), 'answer from the hub')
  } finally {
    for (const client of clients) client.destroy()
    await stopQuietly(edge, rawHub)
  }
})

test('edge wire: on a wildcard address the PROXY line names the local address each client reached', { timeout: 60000 }, async () => {
  const port = await new Promise((resolve, reject) => {
    const server = net.createServer()
    server.once('error', reject)
    server.listen(0, '0.0.0.0', () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
  })
  const rawHub = await startRawHub({ answer: answerWith({ listenPorts: [port] }) })
  let edge
  const clients = []
  try {
    ;({ edge } = await startEdgeAgainst(rawHub, 'wildcard-edge', { bindAddress: '0.0.0.0' }))
    const session = rawHub.sessions[0]
    await waitFor(async () => (await probeConnect(port, '127.0.0.3')) === 'connected', { what: 'the edge listener' })
    await session.nextFrame((f) => f.type === FrameType.OPEN, GUARD_MS, 'the probe OPEN')
    for (const host of ['127.0.0.3', '127.0.0.4']) {
      const client = await connect(port, host)
      clients.push(client)
      const open = await session.nextFrame((f) => f.type === FrameType.OPEN, GUARD_MS, `the OPEN for ${host}`)
      assert.equal(open.payload.toString('latin1'), `PROXY TCP4 127.0.0.1 ${host} ${client.localPort} ${port}\r\n`)
    }
  } finally {
    for (const client of clients) client.destroy()
    await stopQuietly(edge, rawHub)
  }
})

test('edge wire: a reset from the hub (CLOSE_BACK with a reason) closes the client', { timeout: 60000 }, async () => {
  const port = await freeEdgePort()
  const rawHub = await startRawHub({ answer: answerWith({ listenPorts: [port] }) })
  let edge, client
  try {
    ;({ edge } = await startEdgeAgainst(rawHub, 'reset-edge'))
    const session = rawHub.sessions[0]
    await waitFor(async () => (await probeConnect(port)) === 'connected', { what: 'the edge listener' })
    client = await connect(port, EDGE_ADDRESS, GUARD_MS, { allowHalfOpen: true }) // a FIN alone would not close it
    client.on('error', () => {})
    const clientPort = client.localPort
    const open = await session.nextFrame(
      (f) => f.type === FrameType.OPEN && f.payload.toString().includes(` ${clientPort} `),
      GUARD_MS,
      "the client's OPEN",
    )
    const clientClosed = new Promise((resolve) => client.once('close', resolve))
    session.send(open.streamId, FrameType.CLOSE_BACK, Buffer.from([0x01])) // reset: refused
    await withTimeout(clientClosed, GUARD_MS, 'the client to be closed by the reset')
    assert.equal(client.writable, false)
  } finally {
    client?.destroy()
    await stopQuietly(edge, rawHub)
  }
})

test('edge wire: PING is answered with a PONG carrying the same 8 bytes', { timeout: 60000 }, async () => {
  const rawHub = await startRawHub({ answer: answerWith({ listenPorts: [] }) })
  let edge
  try {
    ;({ edge } = await startEdgeAgainst(rawHub, 'ping-edge'))
    const session = rawHub.sessions[0]
    const nonce = crypto.randomBytes(8)
    session.send(0, FrameType.PING, nonce)
    const pong = await session.nextFrame((f) => f.type === FrameType.PONG, GUARD_MS, 'a PONG')
    assert.equal(pong.streamId, 0)
    assert.equal(pong.payload.toString('hex'), nonce.toString('hex'))
  } finally {
    await stopQuietly(edge, rawHub)
  }
})

test('edge wire: CONFIG pushed by the hub changes the listening ports', { timeout: 60000 }, async () => {
  const first = await freeEdgePort()
  const second = await freeEdgePort()
  const rawHub = await startRawHub({ answer: answerWith({ listenPorts: [first] }) })
  let edge
  try {
    ;({ edge } = await startEdgeAgainst(rawHub, 'config-edge'))
    const session = rawHub.sessions[0]
    const updated = once(edge, 'portsUpdated')
    session.send(0, FrameType.CONFIG, Buffer.from(JSON.stringify({ listenPorts: [second], listenPortsUdp: [], stunIntervalSecs: 300 })))
    assert.deepEqual(await updated, { listenPorts: [second], listenPortsUdp: [] })
    await waitFor(async () => (await probeConnect(second)) === 'connected', { what: `the edge to listen on ${second}` })
    await waitFor(async () => (await probeConnect(first)) === 'ECONNREFUSED', { what: `the edge to stop listening on ${first}` })
    assert.deepEqual((await edge.getStatus()).listenPorts, [second])
  } finally {
    await stopQuietly(edge, rawHub)
  }
})

test('edge wire: an edge that hears nothing for heartbeatTimeoutMs reconnects', { timeout: 60000 }, async () => {
  const rawHub = await startRawHub({ answer: answerWith({ listenPorts: [] }) })
  let edge
  try {
    ;({ edge } = await startEdgeAgainst(rawHub, 'quiet-edge', { heartbeatTimeoutMs: 400 }))
    const disconnected = once(edge, 'tunnelDisconnected')
    const reconnected = disconnected.then(() => once(edge, 'tunnelConnected'))
    // The raw hub never sends anything after the handshake.
    assert.equal(typeof (await disconnected).reason, 'string')
    await reconnected
    await waitFor(() => rawHub.sessions.length >= 2 && rawHub.sessions[1].authLine, { what: 'a second handshake at the hub' })
    assert.equal(rawHub.sessions[1].authLine, `EDGE quiet-edge ${SECRET}\n`)
    await waitFor(() => rawHub.sessions[0].closed, { what: 'the edge to close its silent tunnel' })
  } finally {
    await stopQuietly(edge, rawHub)
  }
})

// A client whose stream is on a hub that dies before acknowledging it (OPEN_ACK) has reached no
// target: the edge carries it to its other hub, request bytes first. One the hub acknowledged
// may have reached a target, so it is lost with the tunnel.
for (const acknowledged of [false, true]) {
  const title = acknowledged
    ? 'edge wire: a stream the hub acknowledged is reset when its tunnel ends'
    : 'edge wire: a stream the hub never acknowledged goes to another hub, bytes and all, when its tunnel ends'
  test(title, { timeout: 60000 }, async () => {
    const target = await startTarget(behaviours.echo)
    const rawHub = await startRawHub({ answer: answerWith({ listenPorts: [target.port] }), answerPings: true })
    const edge = new RemoteIngressEdge()
    let realHub, client
    try {
      // The second hub's port is taken by the hub only later: until then this tunnel retries.
      const reserved = await startHub()
      const realHubPort = reserved.hubPort
      await reserved.hub.stop()
      const { hubHost, hubPort, ...config } = edgeConfig(0, 'recarry-edge', SECRET, { reconnectMinMs: 20, reconnectMaxMs: 200 })
      await edge.start({ ...config, hubs: [{ host: '127.0.0.1', port: rawHub.port }, { host: '127.0.0.1', port: realHubPort }] })
      await waitFor(() => rawHub.sessions[0]?.authLine, { what: 'the edge to log in at the hand-driven hub' })
      const session = rawHub.sessions[0]
      // Not probed: a probe would be a stream of its own, unanswered.
      await waitFor(async () => (await edge.getStatus()).listenPorts.includes(target.port), { what: 'the edge listener' })

      client = await connect(target.port)
      client.on('error', () => {})
      const request = 'a request that must reach the target exactly once\n'
      client.write(request)
      const open = await session.nextFrame(
        (f) => f.type === FrameType.OPEN && f.payload.toString().includes(` ${client.localPort} `),
        GUARD_MS,
        "the client's OPEN",
      )
      const data = await session.nextFrame((f) => f.type === FrameType.DATA && f.streamId === open.streamId, GUARD_MS, "the client's DATA")
      assert.equal(data.payload.toString(), request)
      if (acknowledged) session.send(open.streamId, FrameType.OPEN_ACK)

      ;({ hub: realHub } = await startHub([{ id: 'recarry-edge', secret: SECRET, listenPorts: [target.port] }], { tunnelPort: realHubPort }))
      await waitFor(async () => (await edge.getStatus()).tunnels.filter((t) => t.connected).length === 2, { what: 'both tunnels up' })
      const ending = acknowledged ? socketEnding(client) : null
      // The hand-driven hub dies: its connection just closes.
      session.close()

      if (acknowledged) {
        assert.equal((await ending).how, 'reset', 'the client sees an abort')
        assert.equal(metric(await edge.getMetrics(), 'remoteingress_edge_connections_carried_again_total'), 0)
        assert.equal(target.connections.length, 0)
      } else {
        assert.equal((await readBytes(client, Buffer.byteLength(request))).toString(), request, 'the echo came back through the other hub')
        assert.equal(metric(await edge.getMetrics(), 'remoteingress_edge_connections_carried_again_total'), 1)
        assert.equal(target.connections.length, 1, 'the target saw the connection once')
        assert.equal(target.connections[0].source.port, client.localPort, 'with the real client in its PROXY header')
        client.end('and the connection goes on\n')
        assert.equal((await readUntilEnd(client)).toString(), 'and the connection goes on\n')
      }
    } finally {
      client?.destroy()
      await stopQuietly(edge, realHub, rawHub, target)
    }
  })
}
