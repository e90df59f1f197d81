// Edges and the hub's view of them: authentication, connecting by token, live changes to the
// allowed-edges list, and getStatus on both sides.
import test from 'node:test'
import assert from 'node:assert/strict'
import net from 'node:net'
import {
  behaviours,
  connect,
  edgeConfig,
  GUARD_MS,
  once,
  probeConnect,
  readBytes,
  readUntilEnd,
  recordEvents,
  remoteingress,
  RemoteIngressEdge,
  SECRET,
  startConnectedEdge,
  startHub,
  startTarget,
  startTunnel,
  stopQuietly,
  waitFor,
  TEST_TRANSPORT,
} from './helpers.mjs'

const sorted = (ports) => [...ports].sort((a, b) => a - b)

/** Sends `text` over an open client connection to an echo target and checks it comes back. */
async function assertEchoes(client, text) {
  const echoed = readBytes(client, Buffer.byteLength(text))
  client.write(text)
  assert.equal((await echoed).toString(), text)
}

test('a wrong secret is rejected: edge warns and retries, hub warns, nothing connects', { timeout: 60000 }, async () => {
  const WRONG_SECRET = 'wrong-secret-31337'
  const { hub, hubPort } = await startHub([{ id: 'edge-1', secret: SECRET, listenPorts: [] }])
  const edge = new RemoteIngressEdge()
  const edgeEvents = recordEvents(edge, ['tunnelConnected', 'portsAssigned', 'warning', 'tunnelDisconnected'])
  const hubEvents = recordEvents(hub, ['warning', 'edgeConnected'])
  try {
    const hubWarned = once(hub, 'warning', GUARD_MS, (w) => w.code === 'authFailed')
    await edge.start(edgeConfig(hubPort, 'edge-1', WRONG_SECRET))
    // Two rejections in a row prove it keeps retrying, and bound the window we watch.
    await waitFor(() => edgeEvents.of('warning').filter((w) => w.code === 'authRejected').length >= 2, {
      what: "the edge's second 'authRejected' warning",
    })
    await hubWarned

    assert.equal(edgeEvents.of('tunnelConnected').length, 0, 'never tunnelConnected')
    assert.equal(edgeEvents.of('portsAssigned').length, 0, 'never portsAssigned')
    assert.equal(hubEvents.of('edgeConnected').length, 0, 'hub never reports edgeConnected')
    const status = await hub.getStatus()
    assert.deepEqual(status.connectedEdges, [])
    const edgeStatus = await edge.getStatus()
    assert.equal(edgeStatus.running, true)
    assert.equal(edgeStatus.connected, false)

    const messages = [...edgeEvents, ...hubEvents].map((e) => JSON.stringify(e.payload))
    for (const message of messages) {
      assert.ok(!message.includes(WRONG_SECRET), `an event leaks the edge's secret: ${message}`)
      assert.ok(!message.includes(SECRET), `an event leaks the hub's secret: ${message}`)
    }
  } finally {
    await stopQuietly(edge, hub)
  }
})

test('an edge connects with a token, and with a token pinning the hub fingerprint', { timeout: 60000 }, async () => {
  const target = await startTarget(behaviours.echo)
  const edges = []
  let hub, hubPort
  try {
    ;({ hub, hubPort } = await startHub([{ id: 'token-edge', secret: SECRET, listenPorts: [target.port] }]))
    const { certFingerprint } = await hub.getStatus()
    assert.match(certFingerprint, /^sha256\/[A-Za-z0-9_-]{43}$/)
    const plain = remoteingress.encodeConnectionToken({ hubHost: '127.0.0.1', hubPort, edgeId: 'token-edge', secret: SECRET })
    const pinned = remoteingress.encodeConnectionToken({
      hubHost: '127.0.0.1',
      hubPort,
      edgeId: 'token-edge',
      secret: SECRET,
      hubFingerprint: certFingerprint,
    })
    for (const token of [plain, pinned]) {
      const extras = { bindAddress: '127.0.0.2', stunServers: [], reconnectMinMs: 50, reconnectMaxMs: 200 }
      const { edge, ports } = await startConnectedEdge({ token, ...extras })
      edges.push(edge)
      assert.deepEqual(ports.listenPorts, [target.port])
      const client = await connect(target.port)
      await assertEchoes(client, `via token ${token === pinned ? 'pinned' : 'plain'}`)
      client.destroy()
      await edge.stop()
      assert.equal(edge.running, false)
    }
    // And the explicit form, for symmetry.
    const { edge } = await startConnectedEdge(edgeConfig(hubPort, 'token-edge'))
    edges.push(edge)
    const client = await connect(target.port)
    await assertEchoes(client, 'via explicit config')
    client.destroy()
  } finally {
    await stopQuietly(...edges, hub, target)
  }
})

test('an edge pinned to another fingerprint refuses the hub', { timeout: 60000 }, async () => {
  const { hub, hubPort } = await startHub([{ id: 'pinned', secret: SECRET, listenPorts: [] }])
  const other = remoteingress.generateHubCertificate().fingerprint
  const edge = new RemoteIngressEdge()
  const events = recordEvents(edge, ['tunnelConnected', 'warning'])
  const hubEvents = recordEvents(hub, ['edgeConnected', 'warning'])
  try {
    await edge.start(edgeConfig(hubPort, 'pinned', SECRET, { hubFingerprint: other }))
    await waitFor(() => events.of('warning').length >= 2, { what: 'two edge warnings' })
    assert.equal(events.of('tunnelConnected').length, 0)
    assert.equal(hubEvents.of('edgeConnected').length, 0)
    assert.ok(!hubEvents.of('warning').some((w) => w.code === 'authFailed'), 'the secret was never sent (no authFailed at the hub)')
  } finally {
    await stopQuietly(edge, hub)
  }
})

test('updateAllowedEdges live: ports added and removed, edge removed', { timeout: 90000 }, async () => {
  const targetA = await startTarget(behaviours.echo)
  const targetB = await startTarget(behaviours.echo)
  const portA = targetA.port
  const portB = targetB.port
  let tunnel
  const clients = []
  try {
    tunnel = await startTunnel({ ports: [portA], edgeId: 'live' })
    const { hub, edge } = tunnel

    // Add port B.
    let updated = once(edge, 'portsUpdated')
    await hub.updateAllowedEdges([{ id: 'live', secret: SECRET, listenPorts: [portA, portB] }])
    assert.deepEqual(sorted((await updated).listenPorts), sorted([portA, portB]))
    await waitFor(async () => (await probeConnect(portB)) === 'connected', { what: `the edge to listen on ${portB}` })
    const onB = await connect(portB)
    clients.push(onB)
    await assertEchoes(onB, 'through the new port')
    // (The probes above reached the target too; find this client's connection by its port.)
    const recordB = targetB.connections.find((c) => c.source?.port === onB.localPort)
    assert.deepEqual(recordB.destination, { address: '127.0.0.2', port: portB })

    // Remove port A while a connection on it is open.
    const onA = await connect(portA)
    clients.push(onA)
    await assertEchoes(onA, 'before removal')
    updated = once(edge, 'portsUpdated')
    await hub.updateAllowedEdges([{ id: 'live', secret: SECRET, listenPorts: [portB] }])
    assert.deepEqual((await updated).listenPorts, [portB])
    await waitFor(async () => (await probeConnect(portA)) === 'ECONNREFUSED', {
      what: `127.0.0.2:${portA} to refuse connections`,
    })
    assert.deepEqual((await edge.getStatus()).listenPorts, [portB])
    await assertEchoes(onA, 'after removal the existing connection still works')
    const endedA = readUntilEnd(onA)
    onA.end()
    await endedA

    // Re-adding port A right away works (its old connection may linger in TIME_WAIT).
    updated = once(edge, 'portsUpdated')
    await hub.updateAllowedEdges([{ id: 'live', secret: SECRET, listenPorts: [portA, portB] }])
    assert.deepEqual(sorted((await updated).listenPorts), sorted([portA, portB]))
    await waitFor(async () => (await probeConnect(portA)) === 'connected', { what: `the edge to listen on ${portA} again` })
    const againA = await connect(portA)
    clients.push(againA)
    await assertEchoes(againA, 'port A is back')
    againA.destroy()

    // Remove the edge entirely.
    const hubDisconnected = once(hub, 'edgeDisconnected')
    const edgeDisconnected = once(edge, 'tunnelDisconnected')
    await hub.updateAllowedEdges([])
    const { edgeId, reason } = await hubDisconnected
    assert.equal(edgeId, 'live')
    assert.match(reason, /remov/i)
    assert.equal(typeof (await edgeDisconnected).reason, 'string')
    await waitFor(async () => (await hub.getStatus()).connectedEdges.length === 0, { what: 'hub status without the edge' })
  } finally {
    for (const client of clients) client.destroy()
    await stopQuietly(tunnel, targetA, targetB)
  }
})

test("changing an edge's secret disconnects it", { timeout: 60000 }, async () => {
  const target = await startTarget(behaviours.echo)
  let tunnel
  try {
    tunnel = await startTunnel({ ports: [target.port], edgeId: 'rekey' })
    const hubDisconnected = once(tunnel.hub, 'edgeDisconnected')
    const edgeDisconnected = once(tunnel.edge, 'tunnelDisconnected')
    const rejected = once(tunnel.edge, 'warning', GUARD_MS, (w) => w.code === 'authRejected')
    await tunnel.hub.updateAllowedEdges([{ id: 'rekey', secret: 'a-new-secret', listenPorts: [target.port] }])
    assert.equal((await hubDisconnected).edgeId, 'rekey')
    await edgeDisconnected
    await rejected // it reconnects with the old secret, which is no longer accepted
    assert.deepEqual((await tunnel.hub.getStatus()).connectedEdges, [])
  } finally {
    await stopQuietly(tunnel, target)
  }
})

test('getStatus on hub and edge reflects the connection, streams and bytes', { timeout: 60000 }, async () => {
  const target = await startTarget(behaviours.echo)
  let tunnel, client
  try {
    const before = Date.now()
    tunnel = await startTunnel({ ports: [target.port], edgeId: 'status' })
    const after = Date.now()
    const { hub, edge, hubPort } = tunnel

    const hubStatus = await hub.getStatus()
    assert.equal(hubStatus.running, true)
    assert.equal(hubStatus.tunnelPort, tunnel.hubPort)
    assert.equal(hubStatus.connectedEdges.length, 1)
    const entry = hubStatus.connectedEdges[0]
    assert.equal(entry.edgeId, 'status')
    assert.equal(entry.remoteAddress.replace(/:\d+$/, ''), '127.0.0.1')
    assert.equal(entry.transport, TEST_TRANSPORT)
    assert.equal(entry.protocol, 'remoteingress/1')
    assert.equal(typeof entry.connectedAt, 'number')
    assert.ok(entry.connectedAt >= before - 1000 && entry.connectedAt <= after + 1000, `connectedAt ${entry.connectedAt} not near ${before}..${after}`)
    assert.equal(entry.activeStreams, 0)

    const edgeStatus = await edge.getStatus()
    const { instanceId } = await hub.getStatus()
    assert.match(instanceId, /^[0-9a-f]{16}$/, 'a random instance id by default')
    const tunnelStatus = { hub: `127.0.0.1:${hubPort}`, address: `127.0.0.1:${hubPort}`, connected: true, draining: false, instanceId, lane: 0, transport: TEST_TRANSPORT, protocol: 'remoteingress/1', activeStreams: 0, activeUdpSessions: 0 }
    assert.deepEqual(
      { ...edgeStatus, activeStreams: undefined },
      { running: true, connected: true, publicIp: null, activeStreams: undefined, activeUdpSessions: 0, listenPorts: [target.port], listenPortsUdp: [], transport: TEST_TRANSPORT, protocol: 'remoteingress/1', udpDatagramsDropped: 0, waitingConnections: 0, tunnels: [tunnelStatus] },
    )
    assert.equal(edgeStatus.activeStreams, 0)

    client = await connect(target.port)
    await assertEchoes(client, 'x'.repeat(10000))
    const during = await hub.getStatus()
    assert.equal(during.connectedEdges[0].activeStreams, 1, 'hub counts the open stream')
    assert.equal((await edge.getStatus()).activeStreams, 1, 'edge counts the open stream')
    // Counters may be bumped just after the bytes moved; allow them a moment to catch up.
    const grown = await waitFor(
      async () => {
        const now = (await hub.getStatus()).connectedEdges[0]
        return now.bytesIn > entry.bytesIn + 10000 && now.bytesOut > entry.bytesOut + 10000 && now
      },
      { what: `bytesIn/bytesOut to grow by the 10000 echoed bytes (from ${entry.bytesIn}/${entry.bytesOut})` },
    )
    assert.equal(typeof grown.bytesIn, 'number')

    const ended = readUntilEnd(client)
    client.end()
    await ended
    await waitFor(async () => (await hub.getStatus()).connectedEdges[0].activeStreams === 0, { what: 'hub activeStreams back to 0' })
    await waitFor(async () => (await edge.getStatus()).activeStreams === 0, { what: 'edge activeStreams back to 0' })
  } finally {
    client?.destroy()
    await stopQuietly(tunnel, target)
  }
})

test('a port the edge cannot bind is a warning naming it; the other ports keep working', { timeout: 60000 }, async () => {
  const target = await startTarget(behaviours.echo)
  const busyTarget = await startTarget(behaviours.echo)
  const squatter = net.createServer((socket) => socket.destroy())
  const edge = new RemoteIngressEdge()
  const warnings = recordEvents(edge, ['warning'])
  let hub, client
  try {
    // Something else already listens on 127.0.0.2:<busy port>.
    await new Promise((resolve, reject) => {
      squatter.once('error', reject)
      squatter.listen(busyTarget.port, '127.0.0.2', resolve)
    })
    let hubPort
    ;({ hub, hubPort } = await startHub([{ id: 'busy', secret: SECRET, listenPorts: [target.port, busyTarget.port] }]))
    const connected = once(edge, 'tunnelConnected')
    await edge.start(edgeConfig(hubPort, 'busy'))
    await connected
    await waitFor(() => warnings.of('warning').find((w) => w.code === 'listenFailed'), { what: "the edge's 'listenFailed' warning" })
    const warning = warnings.of('warning').find((w) => w.code === 'listenFailed')
    assert.match(warning.message, new RegExp(String(busyTarget.port)))
    await waitFor(async () => (await edge.getStatus()).listenPorts.length > 0, { what: 'a listening port in the edge status' })
    assert.deepEqual((await edge.getStatus()).listenPorts, [target.port], 'status lists only the ports actually listening')
    client = await connect(target.port)
    await assertEchoes(client, 'the other port works')
  } finally {
    client?.destroy()
    await stopQuietly(edge, hub, target, busyTarget)
    if (squatter.listening) await new Promise((resolve) => squatter.close(resolve))
  }
})

test('two edges on one hub each carry their own port', { timeout: 60000 }, async () => {
  const targetA = await startTarget(behaviours.echo)
  const targetB = await startTarget(behaviours.echo)
  const edges = []
  const clients = []
  let hub
  try {
    let hubPort
    ;({ hub, hubPort } = await startHub([
      { id: 'edge-a', secret: SECRET, listenPorts: [targetA.port] },
      { id: 'edge-b', secret: 'secret-of-b', listenPorts: [targetB.port] },
    ]))
    const hubEvents = recordEvents(hub, ['streamOpened', 'edgeConnected'])
    edges.push((await startConnectedEdge(edgeConfig(hubPort, 'edge-a'))).edge)
    edges.push((await startConnectedEdge(edgeConfig(hubPort, 'edge-b', 'secret-of-b', { bindAddress: '127.0.0.3' }))).edge)
    await waitFor(() => hubEvents.of('edgeConnected').length >= 2, { what: "the hub's 'edgeConnected' for both edges" })
    const status = await hub.getStatus()
    assert.deepEqual(status.connectedEdges.map((e) => e.edgeId).sort(), ['edge-a', 'edge-b'])
    const connectedEvents = hubEvents.of('edgeConnected').sort((x, y) => x.edgeId.localeCompare(y.edgeId))
    assert.deepEqual(
      connectedEvents.map(({ edgeId, transport }) => ({ edgeId, transport })),
      [{ edgeId: 'edge-a', transport: TEST_TRANSPORT }, { edgeId: 'edge-b', transport: TEST_TRANSPORT }],
    )
    for (const event of connectedEvents) assert.match(event.remoteAddress, /^127\.0\.0\.1(:\d+)?$/)

    const viaA = await connect(targetA.port, '127.0.0.2')
    const viaB = await connect(targetB.port, '127.0.0.3')
    clients.push(viaA, viaB)
    await assertEchoes(viaA, 'through edge a')
    await assertEchoes(viaB, 'through edge b')
    assert.equal(targetB.connections[0].destination.address, '127.0.0.3', 'the PROXY header names the accepting address')
    // The events come on their own path, not ordered with the echoed bytes: wait for both.
    await waitFor(() => hubEvents.of('streamOpened').length >= 2, { what: "the hub's 'streamOpened' for both connections" })
    assert.deepEqual(
      hubEvents.of('streamOpened').map((e) => [e.edgeId, e.port]).sort(),
      [['edge-a', targetA.port], ['edge-b', targetB.port]].sort(),
    )
    // Edge a does not listen on edge b's port.
    assert.equal(await probeConnect(targetB.port, '127.0.0.2'), 'ECONNREFUSED')
  } finally {
    for (const client of clients) client.destroy()
    await stopQuietly(...edges, hub, targetA, targetB)
  }
})

test('a CONFIG that changes only the STUN interval is not reported as a port update', { timeout: 60000 }, async () => {
  const target = await startTarget(behaviours.echo)
  const other = await startTarget(behaviours.echo)
  let tunnel
  try {
    tunnel = await startTunnel({ ports: [target.port] })
    const updates = recordEvents(tunnel.edge, ['portsUpdated'])
    await tunnel.hub.updateAllowedEdges([{ id: tunnel.edgeId, secret: SECRET, listenPorts: [target.port], stunIntervalSecs: 77 }])
    // CONFIG frames arrive in order: once the port change below is reported, the interval-only
    // CONFIG before it has been handled too.
    const portChange = once(tunnel.edge, 'portsUpdated', GUARD_MS, (e) => e.listenPorts.includes(other.port))
    await tunnel.hub.updateAllowedEdges([
      { id: tunnel.edgeId, secret: SECRET, listenPorts: [target.port, other.port], stunIntervalSecs: 77 },
    ])
    await portChange
    assert.deepEqual(updates.of('portsUpdated'), [{ listenPorts: [target.port, other.port].sort((a, b) => a - b), listenPortsUdp: [] }])
  } finally {
    await stopQuietly(tunnel, target, other)
  }
})

test('an edge id past limits.maxTunnelsPerEdge: the new tunnel replaces the oldest, which ends cleanly', { timeout: 60000 }, async () => {
  const target = await startTarget(behaviours.echo)
  const edges = []
  let hub
  try {
    let hubPort
    ;({ hub, hubPort } = await startHub([{ id: 'dup', secret: SECRET, listenPorts: [target.port] }], { limits: { maxTunnelsPerEdge: 1 } }))
    const hubEvents = recordEvents(hub, ['edgeConnected', 'edgeDisconnected'])
    // The first edge does not come back within the test, however slowly it runs, so the
    // replacement is not undone.
    const first = await startConnectedEdge(edgeConfig(hubPort, 'dup', SECRET, { reconnectMinMs: 3_600_000, reconnectMaxMs: 3_600_000 }))
    edges.push(first.edge)
    await waitFor(() => hubEvents.of('edgeConnected').length === 1, { what: 'the first edge on the hub' })
    const firstLost = once(first.edge, 'tunnelDisconnected')
    const second = await startConnectedEdge(edgeConfig(hubPort, 'dup', SECRET, { bindAddress: '127.0.0.3' }))
    edges.push(second.edge)

    // The old edge sees its tunnel closed by the hub. Over QUIC the hub's close usually
    // carries its reason too, but the control stream's end can arrive first.
    assert.match((await firstLost).reason, /^peer closed the tunnel/)
    await waitFor(() => hubEvents.of('edgeDisconnected').length === 1 && hubEvents.of('edgeConnected').length === 2, {
      what: "the hub's replacement events",
    })
    const [firstTunnel, secondTunnel] = hubEvents.of('edgeConnected').map((e) => e.tunnelId)
    assert.notEqual(firstTunnel, secondTunnel)
    assert.deepEqual(hubEvents.of('edgeDisconnected'), [
      { edgeId: 'dup', tunnelId: firstTunnel, reason: 'replaced by a newer tunnel of the same edge (1 at most, limits.maxTunnelsPerEdge)' },
    ])
    const status = await hub.getStatus()
    assert.deepEqual(status.connectedEdges.map((e) => e.tunnelId), [secondTunnel], 'one tunnel for the id, the old one is gone')
    assert.equal((await first.edge.getStatus()).connected, false)
    // The new session carries traffic.
    const client = await connect(target.port, '127.0.0.3')
    try {
      await assertEchoes(client, 'through the replacement')
    } finally {
      client.destroy()
    }
  } finally {
    await stopQuietly(...edges, hub, target)
  }
})

test('two edges with the same id on different addresses serve at once; removing the id disconnects both', { timeout: 60000 }, async () => {
  const target = await startTarget(behaviours.echo)
  const edges = []
  let hub
  try {
    let hubPort
    ;({ hub, hubPort } = await startHub([{ id: 'twin', secret: SECRET, listenPorts: [target.port] }]))
    const hubEvents = recordEvents(hub, ['edgeConnected', 'edgeDisconnected', 'streamOpened'])
    edges.push((await startConnectedEdge(edgeConfig(hubPort, 'twin', SECRET))).edge)
    edges.push((await startConnectedEdge(edgeConfig(hubPort, 'twin', SECRET, { bindAddress: '127.0.0.3' }))).edge)
    await waitFor(() => hubEvents.of('edgeConnected').length === 2, { what: 'both tunnels on the hub' })
    const tunnels = hubEvents.of('edgeConnected').map((e) => e.tunnelId).sort((a, b) => a - b)
    const status = await hub.getStatus()
    assert.deepEqual(status.connectedEdges.map((e) => [e.edgeId, e.tunnelId]), tunnels.map((id) => ['twin', id]))

    // Each carries its own clients, on its own tunnel.
    for (const address of ['127.0.0.2', '127.0.0.3']) {
      const client = await connect(target.port, address)
      try {
        await assertEchoes(client, `through ${address}`)
      } finally {
        client.destroy()
      }
    }
    const usedTunnels = [...new Set(hubEvents.of('streamOpened').map((e) => e.tunnelId))].sort((a, b) => a - b)
    assert.deepEqual(usedTunnels, tunnels, 'each edge used its own tunnel')
    const metrics = await hub.getMetrics()
    assert.match(metrics, /^remoteingress_hub_edges_connected 1$/m, 'one edge id')
    assert.match(metrics, /^remoteingress_hub_edge_connected\{edge="twin"\} 1$/m)

    await hub.updateAllowedEdges([])
    await waitFor(() => hubEvents.of('edgeDisconnected').length === 2, { what: 'both tunnels closed' })
    for (const event of hubEvents.of('edgeDisconnected')) assert.equal(event.reason, 'edge removed from the allowed list')
    assert.deepEqual(hubEvents.of('edgeDisconnected').map((e) => e.tunnelId).sort((a, b) => a - b), tunnels)
    assert.deepEqual((await hub.getStatus()).connectedEdges, [])
  } finally {
    await stopQuietly(...edges, hub, target)
  }
})

test('allowedEdges at start: an edge logs in at once, without updateAllowedEdges; a bad list names its field', { timeout: 60000 }, async () => {
  const target = await startTarget(behaviours.echo)
  let hub, edge
  try {
    ;({ hub } = await startHub([], { allowedEdges: [{ id: 'from-start', secret: SECRET, listenPorts: [target.port] }] }))
    const hubPort = (await hub.getStatus()).tunnelPort
    ;({ edge } = await startConnectedEdge(edgeConfig(hubPort, 'from-start', SECRET)))
    const client = await connect(target.port)
    try {
      await assertEchoes(client, 'allowed from the start')
    } finally {
      client.destroy()
    }
    const refused = new remoteingress.RemoteIngressHub()
    await assert.rejects(
      refused.start({ tunnelPort: 0, bindAddress: '127.0.0.1', allowedEdges: [{ id: 'x' }] }),
      (err) => err.code === 'ERR_INVALID_CONFIG' && /^allowedEdges\[0\]\.secret: is required/.test(err.message),
    )
    assert.equal(refused.running, false)
  } finally {
    await stopQuietly(edge, hub, target)
  }
})
