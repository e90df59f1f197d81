// UDP through the tunnel: the PROXY v2 datagram header the target sees (IPv4, IPv6, per-datagram
// modes), sessions per client (many at once, idle expiry), sizes at the limits, live port
// changes, the hub's answer to a raw edge, counted drops, and a DNS-like request/response load.
import test from 'node:test'
import assert from 'node:assert/strict'
import crypto from 'node:crypto'
import {
  canBindUdp6Loopback,
  connectRawEdge,
  EDGE_ADDRESS,
  encodeProxyV2Udp,
  FrameType,
  GUARD_MS,
  once,
  quietWindow,
  SECRET,
  startHub,
  startTunnel,
  startUdpClient,
  startUdpTarget,
  stopQuietly,
  udpBehaviours,
  V2_SIGNATURE,
  waitFor,
} from './helpers.mjs'

/** The hub's status entry for `edgeId` (undefined when not connected). */
async function hubEdgeStatus(hub, edgeId) {
  return (await hub.getStatus()).connectedEdges.find((e) => e.edgeId === edgeId)
}

/** A port number as its two network-order bytes. */
const portBytes = (port) => {
  const b = Buffer.alloc(2)
  b.writeUInt16BE(port)
  return b
}

async function closeAll(clients) {
  await Promise.all(clients.map((c) => c.close().catch(() => {})))
}

test('UDP4: the target gets the exact 28-byte PROXY v2 header on every datagram; replies return raw', { timeout: 60000 }, async () => {
  const target = await startUdpTarget(udpBehaviours.answer((payload) => Buffer.concat([Buffer.from('re:'), payload])))
  let tunnel, client
  try {
    tunnel = await startTunnel({ ports: [], udpPorts: [target.port], edgeId: 'udp-v4' })
    client = await startUdpClient()
    const P = target.port

    const first = await client.request(Buffer.from('hello udp'), P)
    assert.equal(first.toString(), 're:hello udp')
    const second = await client.request(Buffer.from('second'), P)
    assert.equal(second.toString(), 're:second')
    // Replies come from the edge's listening socket, with nothing added.
    for (const message of client.messages) assert.deepEqual(message.from, { address: EDGE_ADDRESS, port: P })
    assert.equal(client.messages.length, 2)

    // Hand-built: signature, v2 PROXY, UDP over IPv4, 12 address bytes, src ip, dst ip, ports.
    const expectedHeader = Buffer.concat([
      Buffer.from('0d0a0d0a000d0a515549540a', 'hex'),
      Buffer.from([0x21, 0x12, 0x00, 0x0c]),
      Buffer.from([127, 0, 0, 1]),
      Buffer.from([0x7f, 0x00, 0x00, 0x02]),
      portBytes(client.port),
      portBytes(P),
    ])
    assert.equal(expectedHeader.length, 28)
    assert.deepEqual(expectedHeader.subarray(0, 12), V2_SIGNATURE)

    assert.equal(target.datagrams.length, 2)
    const payloads = ['hello udp', 'second']
    target.datagrams.forEach((record, i) => {
      assert.equal(record.error, null)
      assert.equal(record.raw.toString('hex'), Buffer.concat([expectedHeader, Buffer.from(payloads[i])]).toString('hex'))
      assert.equal(record.header.protocol, 'UDP4')
      assert.equal(record.header.length, 28)
      assert.deepEqual(record.header.source, { address: '127.0.0.1', port: client.port })
      assert.deepEqual(record.header.destination, { address: EDGE_ADDRESS, port: P })
      assert.equal(record.payload.toString(), payloads[i])
      assert.equal(record.from.address, '127.0.0.1')
    })
    // One session, one hub socket.
    assert.equal(target.datagrams[0].from.port, target.datagrams[1].from.port)

    const hubSide = await hubEdgeStatus(tunnel.hub, 'udp-v4')
    assert.equal(hubSide.activeUdpSessions, 1)
    assert.ok(hubSide.bytesIn > 0 && hubSide.bytesOut > 0, `bytesIn ${hubSide.bytesIn}, bytesOut ${hubSide.bytesOut}`)
    assert.equal((await tunnel.edge.getStatus()).activeUdpSessions, 1)
  } finally {
    await client?.close()
    await stopQuietly(tunnel, target)
  }
})

test('UDP6: an edge on ::1 gives the target a 52-byte UDP6 header', { timeout: 60000 }, async (t) => {
  if (!(await canBindUdp6Loopback())) {
    t.skip('no IPv6 loopback: a UDP socket cannot be bound on ::1')
    return
  }
  const target = await startUdpTarget(udpBehaviours.echo)
  let tunnel, client
  try {
    tunnel = await startTunnel({ ports: [], udpPorts: [target.port], edgeId: 'udp-v6', edgeOptions: { bindAddress: '::1' } })
    assert.deepEqual((await tunnel.edge.getStatus()).listenPortsUdp, [target.port])
    client = await startUdpClient({ host: '::1' })
    const P = target.port
    const reply = await client.request(Buffer.from('over v6'), P, { toHost: '::1' })
    assert.equal(reply.toString(), 'over v6')
    assert.deepEqual(client.messages[0].from, { address: '::1', port: P })

    const loopback6 = Buffer.alloc(16)
    loopback6[15] = 1
    const expectedHeader = Buffer.concat([
      V2_SIGNATURE,
      Buffer.from([0x21, 0x22, 0x00, 0x24]),
      loopback6,
      loopback6,
      portBytes(client.port),
      portBytes(P),
    ])
    assert.equal(expectedHeader.length, 52)
    assert.equal(target.datagrams.length, 1)
    const record = target.datagrams[0]
    assert.equal(record.raw.toString('hex'), Buffer.concat([expectedHeader, Buffer.from('over v6')]).toString('hex'))
    assert.equal(record.header.protocol, 'UDP6')
    assert.deepEqual(record.header.source, { address: '0:0:0:0:0:0:0:1', port: client.port })
    assert.deepEqual(record.header.destination, { address: '0:0:0:0:0:0:0:1', port: P })
  } finally {
    await client?.close()
    await stopQuietly(tunnel, target)
  }
})

test('500 concurrent clients each get only their own replies; the hub counts 500 sessions', { timeout: 180000 }, async () => {
  const N = 500
  const target = await startUdpTarget(udpBehaviours.echo)
  let tunnel
  const clients = []
  try {
    tunnel = await startTunnel({ ports: [], udpPorts: [target.port], edgeId: 'udp-many' })
    for (let i = 0; i < N; i++) clients.push(await startUdpClient())
    const failures = []
    await Promise.all(
      clients.map(async (client, i) => {
        for (let k = 0; k < 3; k++) {
          const payload = Buffer.from(`client:${i}:msg:${k}`)
          try {
            // Lockstep with bounded retries: this test is about who gets what, not about loss.
            await client.request(payload, target.port, { match: (d) => d.equals(payload), timeoutMs: 5000, attempts: 5 })
          } catch (err) {
            failures.push(`client ${i} msg ${k}: ${err.message}`)
            return
          }
        }
      }),
    )
    assert.deepEqual(failures, [])

    // No cross-talk: every datagram a client received carries its own index.
    clients.forEach((client, i) => {
      assert.ok(client.messages.length >= 3, `client ${i} got ${client.messages.length} replies`)
      for (const message of client.messages) {
        assert.match(message.data.toString(), new RegExp(`^client:${i}:msg:[0-2]$`), `client ${i} got ${message.data.toString()}`)
      }
    })
    // And at the target, every header names the client whose payload follows it, and each client
    // has its own hub-side socket.
    const hubPortByClient = new Map()
    for (const record of target.datagrams) {
      assert.equal(record.error, null)
      const i = Number(/^client:(\d+):/.exec(record.payload.toString())[1])
      assert.deepEqual(record.header.source, { address: '127.0.0.1', port: clients[i].port })
      if (!hubPortByClient.has(i)) hubPortByClient.set(i, record.from.port)
      assert.equal(record.from.port, hubPortByClient.get(i), `client ${i} moved hub sockets`)
    }
    assert.equal(hubPortByClient.size, N)
    assert.equal(new Set(hubPortByClient.values()).size, N)

    await waitFor(async () => (await hubEdgeStatus(tunnel.hub, 'udp-many'))?.activeUdpSessions === N, {
      what: `hub activeUdpSessions === ${N}`,
    })
    assert.equal((await tunnel.edge.getStatus()).activeUdpSessions, N)
  } finally {
    await closeAll(clients)
    await stopQuietly(tunnel, target)
  }
})

test('a 65,000-byte datagram and an empty one cross whole, both ways', { timeout: 60000 }, async () => {
  const request = crypto.randomBytes(65000)
  const response = crypto.randomBytes(65000)
  const target = await startUdpTarget(
    udpBehaviours.answer((payload) => {
      if (payload.length === 65000) return response
      if (payload.length === 0) return Buffer.alloc(0)
      return null
    }),
  )
  let tunnel, client
  try {
    tunnel = await startTunnel({ ports: [], udpPorts: [target.port], edgeId: 'udp-sizes' })
    client = await startUdpClient()

    const big = await client.request(request, target.port, { match: (d) => d.length === 65000, timeoutMs: 5000, attempts: 3 })
    assert.ok(big.equals(response), 'the 65,000-byte reply arrived altered')
    assert.ok(target.datagrams.length >= 1)
    for (const record of target.datagrams) {
      assert.equal(record.raw.length, 65028)
      assert.equal(record.header.length, 28)
      assert.deepEqual(record.header.source, { address: '127.0.0.1', port: client.port })
      assert.ok(record.payload.equals(request), 'the 65,000-byte request arrived altered')
    }

    const before = target.datagrams.length
    const empty = await client.request(Buffer.alloc(0), target.port, { match: (d) => d.length === 0, timeoutMs: 5000, attempts: 3 })
    assert.equal(empty.length, 0)
    const emptyRecords = target.datagrams.slice(before)
    assert.ok(emptyRecords.length >= 1)
    for (const record of emptyRecords) {
      assert.equal(record.raw.length, 28, 'an empty datagram must arrive as the header alone')
      assert.equal(record.header.protocol, 'UDP4')
      assert.equal(record.payload.length, 0)
    }
  } finally {
    await client?.close()
    await stopQuietly(tunnel, target)
  }
})

test('a burst from one client arrives as separate datagrams, each with its own header', { timeout: 60000 }, async () => {
  // The hub sends runs of equal-size datagrams that queued behind each other with one
  // segmented send: the target must still see every datagram whole and apart.
  const target = await startUdpTarget(udpBehaviours.sink)
  let tunnel, client
  try {
    tunnel = await startTunnel({ ports: [], udpPorts: [target.port], edgeId: 'udp-burst' })
    client = await startUdpClient()
    const burst = Array.from({ length: 64 }, (_, i) => crypto.randomBytes(500).fill(i, 0, 1))
    await Promise.all(burst.map((payload) => client.send(payload, target.port)))
    await waitFor(() => target.datagrams.length >= burst.length, { what: `${burst.length} datagrams at the target` })
    assert.equal(target.datagrams.length, burst.length)
    const arrived = [...target.datagrams].sort((a, b) => a.payload[0] - b.payload[0])
    arrived.forEach((record, i) => {
      assert.equal(record.error, null)
      assert.equal(record.header.length, 28)
      assert.deepEqual(record.header.source, { address: '127.0.0.1', port: client.port })
      assert.ok(record.payload.equals(burst[i]), `datagram ${i} arrived whole`)
    })
    // One session, one hub socket.
    assert.equal(new Set(target.datagrams.map((r) => r.from.port)).size, 1)
  } finally {
    await client?.close()
    await stopQuietly(tunnel, target)
  }
})

test("udpProxyHeader 'firstDatagram': only a session's first datagram carries the header", { timeout: 60000 }, async () => {
  const target = await startUdpTarget(udpBehaviours.echo)
  let tunnel
  const clients = []
  try {
    tunnel = await startTunnel({ ports: [], udpPorts: [target.port], edgeId: 'udp-first', hubOptions: { udpProxyHeader: 'firstDatagram' } })
    for (const name of ['a', 'b']) {
      const client = await startUdpClient()
      clients.push(client)
      const start = target.datagrams.length
      for (const word of ['one', 'two', 'three']) {
        const payload = Buffer.from(`${name}-${word}`)
        const reply = await client.request(payload, target.port, { match: (d) => d.equals(payload) })
        assert.equal(reply.toString(), `${name}-${word}`)
      }
      const records = target.datagrams.slice(start)
      assert.equal(records.length, 3)
      assert.equal(records[0].raw.length, 28 + `${name}-one`.length)
      assert.deepEqual(records[0].header.source, { address: '127.0.0.1', port: client.port })
      assert.equal(records[0].payload.toString(), `${name}-one`)
      assert.equal(records[1].raw.toString(), `${name}-two`)
      assert.equal(records[2].raw.toString(), `${name}-three`)
      assert.equal(records[1].header, null)
      assert.equal(records[2].header, null)
    }
  } finally {
    await closeAll(clients)
    await stopQuietly(tunnel, target)
  }
})

test("udpProxyHeader 'none': datagrams reach the target exactly as sent", { timeout: 60000 }, async () => {
  const target = await startUdpTarget(udpBehaviours.echo)
  let tunnel, client
  try {
    tunnel = await startTunnel({ ports: [], udpPorts: [target.port], edgeId: 'udp-none', hubOptions: { udpProxyHeader: 'none' } })
    client = await startUdpClient()
    const words = ['one', 'two', 'three']
    for (const word of words) {
      const reply = await client.request(Buffer.from(word), target.port, { match: (d) => d.toString() === word })
      assert.equal(reply.toString(), word)
    }
    assert.deepEqual(
      target.datagrams.map((r) => r.raw.toString('hex')),
      words.map((w) => Buffer.from(w).toString('hex')),
    )
  } finally {
    await client?.close()
    await stopQuietly(tunnel, target)
  }
})

test('idle sessions end on both sides; the same client then gets a new session and hub socket', { timeout: 60000 }, async () => {
  const IDLE_MS = 1000
  const target = await startUdpTarget(udpBehaviours.echo)
  let tunnel, client
  try {
    // 'firstDatagram', so a header on a later datagram proves the session is new.
    tunnel = await startTunnel({
      ports: [],
      udpPorts: [target.port],
      edgeId: 'udp-idle',
      hubOptions: { udpIdleTimeoutMs: IDLE_MS, udpProxyHeader: 'firstDatagram' },
      edgeOptions: { udpIdleTimeoutMs: IDLE_MS },
    })
    client = await startUdpClient()
    /**
     * Sends `text` and checks the echo, then that both sides count the session: a session ends
     * IDLE_MS after its last datagram at the earliest, so a count read sooner than that after
     * sending must show it. On a machine too slow to read it in time, the count proves nothing
     * and is not checked.
     */
    const exchange = async (text) => {
      const sentAt = performance.now()
      assert.equal((await client.request(Buffer.from(text), target.port)).toString(), text)
      const [hubNow, edgeNow] = await Promise.all([hubEdgeStatus(tunnel.hub, 'udp-idle'), tunnel.edge.getStatus()])
      if (performance.now() - sentAt < IDLE_MS) {
        assert.equal(hubNow.activeUdpSessions, 1, `hub session right after the exchange '${text}'`)
        assert.equal(edgeNow.activeUdpSessions, 1, `edge session right after the exchange '${text}'`)
      }
    }
    await exchange('first')

    await waitFor(
      async () => {
        const [hubSide, edgeSide] = await Promise.all([hubEdgeStatus(tunnel.hub, 'udp-idle'), tunnel.edge.getStatus()])
        return hubSide.activeUdpSessions === 0 && edgeSide.activeUdpSessions === 0
      },
      { what: 'activeUdpSessions 0 on hub and edge' },
    )

    await exchange('again')
    assert.equal(target.datagrams.length, 2)
    const [before, after] = target.datagrams
    assert.ok(before.header && after.header, 'both sessions start with a header')
    assert.deepEqual(after.header.source, { address: '127.0.0.1', port: client.port })
    assert.equal(after.payload.toString(), 'again')
    // The header on `after` (firstDatagram mode) is what proves a new session; its hub socket
    // may even get the old port back, since the old one is closed first.
  } finally {
    await client?.close()
    await stopQuietly(tunnel, target)
  }
})

test('updateAllowedEdges: a removed UDP port stops carrying, an added one starts', { timeout: 60000 }, async () => {
  const kept = await startUdpTarget(udpBehaviours.echo)
  const removed = await startUdpTarget(udpBehaviours.echo)
  const added = await startUdpTarget(udpBehaviours.echo)
  const edgeId = 'udp-live'
  let tunnel
  const clients = []
  const client = async () => {
    const c = await startUdpClient()
    clients.push(c)
    return c
  }
  try {
    tunnel = await startTunnel({ ports: [], udpPorts: [kept.port, removed.port], edgeId })
    const onKept = await client()
    const onRemoved = await client()
    assert.equal((await onKept.request(Buffer.from('kept-1'), kept.port)).toString(), 'kept-1')
    assert.equal((await onRemoved.request(Buffer.from('removed-1'), removed.port)).toString(), 'removed-1')

    const withoutRemoved = once(tunnel.edge, 'portsUpdated', GUARD_MS, (e) => !e.listenPortsUdp.includes(removed.port))
    await tunnel.hub.updateAllowedEdges([{ id: edgeId, secret: SECRET, listenPorts: [], listenPortsUdp: [kept.port] }])
    assert.deepEqual((await withoutRemoved).listenPortsUdp, [kept.port])
    await waitFor(async () => JSON.stringify((await tunnel.edge.getStatus()).listenPortsUdp) === JSON.stringify([kept.port]), {
      what: 'edge listenPortsUdp without the removed port',
    })

    const seenAtRemoved = removed.datagrams.length
    const fresh = await client()
    for (let i = 0; i < 3; i++) {
      await fresh.send(Buffer.from(`late-${i}`), removed.port)
      await onRemoved.send(Buffer.from(`late-old-${i}`), removed.port)
    }
    // Positive control after the sends: the kept port still carries both ways.
    assert.equal((await onKept.request(Buffer.from('kept-2'), kept.port)).toString(), 'kept-2')
    assert.equal((await fresh.request(Buffer.from('kept-3'), kept.port)).toString(), 'kept-3')
    await quietWindow(400)
    assert.equal(removed.datagrams.length, seenAtRemoved, 'datagrams reached the target of a removed port')

    const withAdded = once(tunnel.edge, 'portsUpdated', GUARD_MS, (e) => e.listenPortsUdp.includes(added.port))
    await tunnel.hub.updateAllowedEdges([{ id: edgeId, secret: SECRET, listenPorts: [], listenPortsUdp: [kept.port, added.port] }])
    const byNumber = (a, b) => a - b
    assert.deepEqual([...(await withAdded).listenPortsUdp].sort(byNumber), [kept.port, added.port].sort(byNumber))
    await waitFor(async () => (await tunnel.edge.getStatus()).listenPortsUdp.includes(added.port), { what: 'edge listening on the added port' })
    const onAdded = await client()
    assert.equal((await onAdded.request(Buffer.from('added-1'), added.port)).toString(), 'added-1')
    assert.equal(added.datagrams.length, 1)
    assert.deepEqual(added.datagrams[0].header.destination, { address: EDGE_ADDRESS, port: added.port })
  } finally {
    await closeAll(clients)
    await stopQuietly(tunnel, kept, removed, added)
  }
})

test('raw edge: UDP_OPEN for an unassigned port gets UDP_CLOSE and a warning, and nothing reaches it', { timeout: 60000 }, async () => {
  const assigned = await startUdpTarget(udpBehaviours.echo)
  const unassigned = await startUdpTarget(udpBehaviours.echo)
  let hub, raw
  try {
    ;({ hub } = await startHub([{ id: 'raw-udp', secret: SECRET, listenPorts: [], listenPortsUdp: [assigned.port] }]))
    const hubPort = (await hub.getStatus()).tunnelPort
    const warning = once(hub, 'warning', GUARD_MS, (w) => w.code === 'portNotAssigned')
    raw = await connectRawEdge(hubPort, 'raw-udp')
    assert.deepEqual(raw.answer.listenPortsUdp, [assigned.port])

    // As a real edge does: the first datagram follows the open without waiting.
    raw.send(1, FrameType.UDP_OPEN, encodeProxyV2Udp({ address: '1.2.3.4', port: 5555 }, { address: EDGE_ADDRESS, port: unassigned.port }))
    raw.send(1, FrameType.UDP_DATA, Buffer.from('ping'))
    const refusal = await raw.nextFrame((f) => f.streamId === 1, GUARD_MS, 'a frame for session 1')
    assert.equal(refusal.type, FrameType.UDP_CLOSE, `frame type 0x${refusal.type.toString(16)}`)
    assert.equal(refusal.payload.length, 0)
    const warned = await warning
    assert.equal(warned.code, 'portNotAssigned')
    assert.equal(typeof warned.message, 'string')

    // Positive control on the same connection: an assigned port carries.
    raw.send(2, FrameType.UDP_OPEN, encodeProxyV2Udp({ address: '1.2.3.4', port: 5556 }, { address: EDGE_ADDRESS, port: assigned.port }))
    raw.send(2, FrameType.UDP_DATA, Buffer.from('control'))
    const back = await raw.nextFrame((f) => f.streamId === 2, GUARD_MS, 'a frame for session 2')
    assert.equal(back.type, FrameType.UDP_DATA_BACK)
    assert.equal(back.payload.toString(), 'control')
    await quietWindow(300)
    assert.equal(unassigned.datagrams.length, 0, 'a datagram reached the target of an unassigned port')
    assert.equal(raw.closed, false)
  } finally {
    raw?.close()
    await stopQuietly(hub, assigned, unassigned)
  }
})

test('raw edge: UDP_OPEN + UDP_DATA reach the target with the header; replies come as UDP_DATA_BACK', { timeout: 60000 }, async () => {
  const target = await startUdpTarget(udpBehaviours.answer((payload) => (payload.toString() === 'ping' ? Buffer.from('pong') : null)))
  let hub, raw
  try {
    ;({ hub } = await startHub([{ id: 'raw-udp-ok', secret: SECRET, listenPorts: [], listenPortsUdp: [target.port] }]))
    const hubPort = (await hub.getStatus()).tunnelPort
    raw = await connectRawEdge(hubPort, 'raw-udp-ok')
    const header = encodeProxyV2Udp({ address: '203.0.113.7', port: 40000 }, { address: EDGE_ADDRESS, port: target.port })
    raw.send(1, FrameType.UDP_OPEN, header)
    raw.send(1, FrameType.UDP_DATA, Buffer.from('ping'))
    const back = await raw.nextFrame((f) => f.streamId === 1, GUARD_MS, 'a frame for session 1')
    assert.equal(back.type, FrameType.UDP_DATA_BACK, `frame type 0x${back.type.toString(16)}`)
    assert.equal(back.payload.toString(), 'pong')

    assert.equal(target.datagrams.length, 1)
    assert.equal(target.datagrams[0].raw.toString('hex'), Buffer.concat([header, Buffer.from('ping')]).toString('hex'))
    assert.deepEqual(target.datagrams[0].header.source, { address: '203.0.113.7', port: 40000 })

    assert.equal((await hubEdgeStatus(hub, 'raw-udp-ok')).activeUdpSessions, 1)
    raw.send(1, FrameType.UDP_CLOSE)
    await waitFor(async () => (await hubEdgeStatus(hub, 'raw-udp-ok')).activeUdpSessions === 0, { what: 'the hub to end session 1' })
  } finally {
    raw?.close()
    await stopQuietly(hub, target)
  }
})

test('datagrams arriving while no tunnel is up are counted as dropped', { timeout: 60000 }, async () => {
  const target = await startUdpTarget(udpBehaviours.echo)
  let tunnel, client
  try {
    tunnel = await startTunnel({ ports: [], udpPorts: [target.port], edgeId: 'udp-drops' })
    client = await startUdpClient()
    assert.equal((await client.request(Buffer.from('up'), target.port)).toString(), 'up')

    const down = once(tunnel.edge, 'tunnelDisconnected')
    await tunnel.hub.stop()
    await down
    const status = await tunnel.edge.getStatus()
    assert.equal(status.connected, false)
    assert.deepEqual(status.listenPortsUdp, [target.port], 'the UDP listener outlives the tunnel')
    const base = status.udpDatagramsDropped
    assert.equal(typeof base, 'number')

    for (let i = 0; i < 5; i++) await client.send(Buffer.from(`lost-${i}`), target.port)
    await waitFor(async () => (await tunnel.edge.getStatus()).udpDatagramsDropped >= base + 5, {
      what: 'edge udpDatagramsDropped to rise by 5',
    })
  } finally {
    await client?.close()
    await stopQuietly(tunnel, target)
  }
})

test('DNS-style load: 100 clients x 20 lockstep exchanges, no loss', { timeout: 180000 }, async () => {
  const CLIENTS = 100
  const EXCHANGES = 20
  // Request "q:<client>:<seq>:" padded with 'x' to 30-100 bytes; answer "answer:<client>:<seq>".
  const target = await startUdpTarget(
    udpBehaviours.answer((payload) => {
      const match = /^q:(\d+):(\d+):x*$/.exec(payload.toString())
      return match ? Buffer.from(`answer:${match[1]}:${match[2]}`) : Buffer.from('bad-request')
    }),
  )
  let tunnel
  const clients = []
  try {
    tunnel = await startTunnel({ ports: [], udpPorts: [target.port], edgeId: 'udp-dns' })
    for (let i = 0; i < CLIENTS; i++) clients.push(await startUdpClient())
    const lost = []
    const started = process.hrtime.bigint()
    await Promise.all(
      clients.map(async (client, i) => {
        for (let k = 0; k < EXCHANGES; k++) {
          const prefix = `q:${i}:${k}:`
          const size = 30 + crypto.randomInt(71)
          const request = Buffer.from(prefix.padEnd(size, 'x'))
          const expected = `answer:${i}:${k}`
          try {
            // No retries: any lost request or response fails the test. A slow one does not: the
            // wait for it only guards against a loss.
            await client.request(request, target.port, { match: (d) => d.toString() === expected, attempts: 1 })
          } catch (err) {
            lost.push(`client ${i} exchange ${k}: ${err.message}`)
          }
        }
      }),
    )
    const seconds = Number(process.hrtime.bigint() - started) / 1e9
    const total = CLIENTS * EXCHANGES
    console.log(`udp dns-style: ${total - lost.length}/${total} exchanges in ${seconds.toFixed(2)} s = ${Math.round((total - lost.length) / seconds)} exchanges/s`)
    assert.deepEqual(lost.slice(0, 10), [], `${lost.length} of ${total} exchanges lost`)

    clients.forEach((client, i) => {
      assert.deepEqual(
        client.messages.map((m) => m.data.toString()),
        Array.from({ length: EXCHANGES }, (_, k) => `answer:${i}:${k}`),
        `client ${i} responses`,
      )
    })
    assert.equal(target.datagrams.length, total)
    assert.ok(target.datagrams.every((r) => r.error === null && r.header?.protocol === 'UDP4'))
  } finally {
    await closeAll(clients)
    await stopQuietly(tunnel, target)
  }
})
