// Bytes through the tunnel: bulk both ways, many concurrent streams, half-close.
import test from 'node:test'
import assert from 'node:assert/strict'
import crypto from 'node:crypto'
import {
  behaviours,
  connect,
  GUARD_MS,
  once,
  readBytes,
  readUntilEnd,
  recordEvents,
  sha256,
  startTarget,
  startTunnel,
  stopQuietly,
  waitFor,
  withTimeout,
} from './helpers.mjs'

const MiB = 1024 * 1024

test('1 MiB of random bytes each way arrives intact', { timeout: 60000 }, async () => {
  const fromClient = crypto.randomBytes(MiB)
  const fromTarget = crypto.randomBytes(MiB)
  // The target sends its own MiB at once and independently records what it receives.
  const target = await startTarget((socket, record) => {
    socket.on('data', (chunk) => record.received.push(chunk))
    socket.on('end', () => {
      record.receivedAll = Buffer.concat(record.received)
    })
    socket.end(fromTarget)
  })
  let tunnel, client
  try {
    tunnel = await startTunnel({ ports: [target.port] })
    client = await connect(target.port)
    const received = readUntilEnd(client, 40000)
    client.end(fromClient)
    const clientGot = await received
    await waitFor(() => target.connections[0]?.receivedAll, { timeoutMs: 40000, what: 'the target to read to end' })
    const targetGot = target.connections[0].receivedAll

    assert.equal(clientGot.length, MiB, 'client received byte count')
    assert.equal(sha256(clientGot), sha256(fromTarget), 'client received the target bytes')
    assert.equal(targetGot.length, MiB, 'target received byte count')
    assert.equal(sha256(targetGot), sha256(fromClient), 'target received the client bytes')
  } finally {
    client?.destroy()
    await stopQuietly(tunnel, target)
  }
})

test('200 concurrent connections each get exactly their own bytes back', { timeout: 90000 }, async () => {
  const CONNECTIONS = 200
  const target = await startTarget(behaviours.echo)
  let tunnel
  const clients = []
  try {
    tunnel = await startTunnel({ ports: [target.port] })
    const hubEvents = recordEvents(tunnel.hub, ['streamOpened', 'streamClosed'])
    const payloads = Array.from({ length: CONNECTIONS }, (_, i) => {
      const size = 16 * 1024 + crypto.randomInt(48 * 1024 + 1)
      const payload = crypto.randomBytes(size)
      payload.writeUInt32BE(i, 0) // distinct even if the random parts collided
      return payload
    })
    const results = await Promise.all(
      payloads.map(async (payload, i) => {
        const client = await connect(target.port)
        clients.push(client)
        const echoed = readBytes(client, payload.length, 60000)
        client.write(payload)
        const got = await echoed
        client.end()
        return { i, ok: got.length === payload.length && got.equals(payload), length: got.length }
      }),
    )
    const wrong = results.filter((r) => !r.ok)
    assert.deepEqual(wrong, [], 'every connection got exactly its own payload back')
    assert.equal(target.connections.length, CONNECTIONS, 'the target saw one connection per client')
    // Each client port appears in exactly one PROXY header.
    const clientPorts = new Set(target.connections.map((c) => c.source.port))
    assert.equal(clientPorts.size, CONNECTIONS)

    await waitFor(() => hubEvents.of('streamClosed').length >= CONNECTIONS, { what: `${CONNECTIONS} streamClosed events` })
    const openedIds = hubEvents.of('streamOpened').map((e) => e.streamId)
    assert.equal(new Set(openedIds).size, CONNECTIONS, 'every stream has its own id')
    assert.deepEqual(hubEvents.of('streamClosed').map((e) => e.streamId).sort((a, b) => a - b), openedIds.sort((a, b) => a - b))
    await waitFor(async () => (await tunnel.hub.getStatus()).connectedEdges[0].activeStreams === 0, { what: 'hub activeStreams back to 0' })
    await waitFor(async () => (await tunnel.edge.getStatus()).activeStreams === 0, { what: 'edge activeStreams back to 0' })
  } finally {
    for (const client of clients) client.destroy()
    await stopQuietly(tunnel, target)
  }
})

test('half-close: the client ends its side, the target replies 256 KiB after reading to end', { timeout: 60000 }, async () => {
  const reply = crypto.randomBytes(256 * 1024)
  const request = Buffer.from('GET /half-close please\n')
  const target = await startTarget(behaviours.replyAfterEnd(reply))
  let tunnel, client
  try {
    tunnel = await startTunnel({ ports: [target.port] })
    client = await connect(target.port)
    const events = []
    client.on('end', () => events.push('end'))
    client.on('close', () => events.push('close'))
    const received = readUntilEnd(client)
    client.end(request)
    const got = await received
    assert.equal(got.length, reply.length, 'the whole reply arrives after the client half-closed')
    assert.ok(got.equals(reply), 'reply bytes are identical')
    assert.equal(events[0], 'end', "the reply is followed by 'end'")
    const record = target.connections[0]
    assert.ok(record.ended, 'the target saw the client FIN')
    assert.deepEqual(Buffer.concat(record.received), request, 'the target received the request')
    await withTimeout(new Promise((resolve) => (client.closed ? resolve() : client.once('close', resolve))), GUARD_MS, 'client close')
  } finally {
    client?.destroy()
    await stopQuietly(tunnel, target)
  }
})

test('half-close the other way: the target ends first, the client keeps sending', { timeout: 60000 }, async () => {
  const greeting = Buffer.from('server speaks first and is done\n')
  const late = crypto.randomBytes(128 * 1024)
  const target = await startTarget((socket, record) => {
    socket.on('data', (chunk) => record.received.push(chunk))
    socket.end(greeting) // FIN towards the client; our read side stays open
  })
  let tunnel, client
  try {
    tunnel = await startTunnel({ ports: [target.port] })
    client = await connect(target.port)
    client.allowHalfOpen = true
    const got = await readUntilEnd(client)
    assert.ok(got.equals(greeting), 'the client got the greeting, then end')
    // After the target's FIN, the client still sends, and the target still receives.
    client.end(late)
    await waitFor(() => target.connections[0].ended, { what: 'the target to see the client FIN' })
    const received = Buffer.concat(target.connections[0].received)
    assert.equal(received.length, late.length)
    assert.equal(sha256(received), sha256(late))
  } finally {
    client?.destroy()
    await stopQuietly(tunnel, target)
  }
})

test('a client reset closes the target connection', { timeout: 60000 }, async () => {
  // The sink never ends its side, so only a reset (not a FIN) can close its socket.
  const target = await startTarget(behaviours.sink)
  let tunnel, client
  try {
    tunnel = await startTunnel({ ports: [target.port] })
    client = await connect(target.port)
    client.write('hello')
    await waitFor(() => Buffer.concat(target.connections[0]?.received ?? []).toString() === 'hello', { what: 'hello at the target' })
    const record = target.connections[0]
    const targetClosed = new Promise((resolve) => (record.socket.closed ? resolve() : record.socket.once('close', resolve)))
    client.resetAndDestroy()
    await withTimeout(targetClosed, GUARD_MS, 'the target socket to close after the client reset')
  } finally {
    client?.destroy()
    await stopQuietly(tunnel, target)
  }
})

test('a target reset closes the client connection', { timeout: 60000 }, async () => {
  const target = await startTarget((socket) => socket.once('data', () => socket.resetAndDestroy()))
  let tunnel, client
  try {
    tunnel = await startTunnel({ ports: [target.port] })
    client = await connect(target.port, undefined, GUARD_MS, { allowHalfOpen: true }) // a FIN alone would not close it
    client.on('error', () => {}) // ECONNRESET is the expected way to learn about it
    const clientClosed = new Promise((resolve) => client.once('close', resolve))
    client.write('please reset me')
    await withTimeout(clientClosed, GUARD_MS, 'the client socket to close after the target reset')
    assert.equal(client.writable, false, 'a reset closes both directions')
  } finally {
    client?.destroy()
    await stopQuietly(tunnel, target)
  }
})

test('flow control: 64 MiB to a client that pauses reading arrives intact', { timeout: 120000 }, async () => {
  // Far past the 4 MiB stream window plus what loopback socket buffers can hold (their
  // autotuning reaches several MiB per socket, so 16 MiB could fit without any backpressure).
  const SIZE = 64 * MiB
  const payload = crypto.randomBytes(SIZE)
  const target = await startTarget((socket, record) => {
    // Write in 64 KiB chunks honouring backpressure, and count how far we got.
    record.written = 0
    const writeMore = () => {
      while (record.written < SIZE) {
        const chunk = payload.subarray(record.written, record.written + 64 * 1024)
        record.written += chunk.length
        if (!socket.write(chunk)) {
          record.blocked = true
          socket.once('drain', () => {
            record.blocked = false
            writeMore()
          })
          return
        }
      }
      socket.end()
    }
    writeMore()
  })
  let tunnel, client
  try {
    tunnel = await startTunnel({ ports: [target.port] })
    client = await connect(target.port)
    client.pause()
    // With the client not reading, the target must stall (blocked, no progress for 10 polls)
    // before it has written everything: the tunnel does not buffer without bound.
    let lastWritten = -1
    let stablePolls = 0
    await waitFor(
      () => {
        const record = target.connections[0]
        if (!record) return false
        if (record.written >= SIZE) return true // no backpressure at all: the assertion below fails
        stablePolls = record.blocked && record.written === lastWritten ? stablePolls + 1 : 0
        lastWritten = record.written
        return stablePolls >= 10
      },
      { timeoutMs: 20000, intervalMs: 20, what: 'the target to stall on backpressure' },
    )
    const stalledAt = target.connections[0].written
    assert.ok(stalledAt < SIZE, `backpressure reached the target: it wrote ${stalledAt} of ${SIZE} bytes before stalling`)
    const received = readUntilEnd(client, 40000)
    client.resume()
    const got = await received
    assert.equal(got.length, SIZE)
    assert.equal(sha256(got), sha256(payload))
  } finally {
    client?.destroy()
    await stopQuietly(tunnel, target)
  }
})

test('flow control: 16 MiB from a client to a target that pauses reading arrives intact', { timeout: 60000 }, async () => {
  const SIZE = 16 * MiB
  const payload = crypto.randomBytes(SIZE)
  const target = await startTarget((socket, record) => {
    socket.pause() // not reading until the test says so
    record.startReading = () => {
      socket.on('data', (chunk) => record.received.push(chunk))
      socket.on('end', () => {
        record.receivedAll = Buffer.concat(record.received)
        socket.end()
      })
      socket.resume()
    }
  })
  let tunnel, client
  try {
    tunnel = await startTunnel({ ports: [target.port] })
    client = await connect(target.port)
    let written = 0
    let blocked = false
    const writeMore = () => {
      while (written < SIZE) {
        const chunk = payload.subarray(written, written + 64 * 1024)
        written += chunk.length
        if (!client.write(chunk)) {
          blocked = true
          client.once('drain', () => {
            blocked = false
            writeMore()
          })
          return
        }
      }
      client.end()
    }
    writeMore()
    // The client must stall (blocked, no progress for 10 polls) before it has written it all.
    let lastWritten = -1
    let stablePolls = 0
    await waitFor(
      () => {
        if (written >= SIZE) return true // no backpressure at all: the assertion below fails
        stablePolls = blocked && written === lastWritten ? stablePolls + 1 : 0
        lastWritten = written
        return stablePolls >= 10
      },
      { timeoutMs: 20000, intervalMs: 20, what: 'the client to stall on backpressure' },
    )
    assert.ok(written < SIZE, `backpressure reached the client: it wrote ${written} of ${SIZE} bytes before stalling`)
    await waitFor(() => target.connections[0]?.startReading, { what: 'the target connection' })
    target.connections[0].startReading()
    await waitFor(() => target.connections[0].receivedAll, { timeoutMs: 40000, what: 'the target to read to end' })
    const got = target.connections[0].receivedAll
    assert.equal(got.length, SIZE)
    assert.equal(sha256(got), sha256(payload))
  } finally {
    client?.destroy()
    await stopQuietly(tunnel, target)
  }
})

test('streamOpened/streamClosed reach listeners attached at any time, also after removeAllListeners()', { timeout: 60000 }, async () => {
  const target = await startTarget(behaviours.echo)
  let tunnel
  // One echoed exchange; returns the client's port, which the hub's events report.
  const exchange = async (text) => {
    const client = await connect(target.port)
    try {
      const echoed = readBytes(client, text.length)
      client.write(text)
      assert.equal((await echoed).toString(), text)
      return client.localPort
    } finally {
      client.destroy()
    }
  }
  try {
    tunnel = await startTunnel({ ports: [target.port] })
    const { hub } = tunnel
    // Attached after start: the first listener turns the native side's sending on.
    const opened = once(hub, 'streamOpened')
    const closed = once(hub, 'streamClosed')
    const firstPort = await exchange('first')
    const first = await opened
    assert.equal(first.clientPort, firstPort)
    assert.equal((await closed).streamId, first.streamId)

    // No listener left: this connection's events are not sent. The next listener gets the
    // next connection's, not a stale one.
    assert.equal(hub.listenerCount('streamOpened') + hub.listenerCount('streamClosed'), 0)
    await exchange('unheard')
    const reopened = once(hub, 'streamOpened')
    const secondPort = await exchange('second')
    assert.equal((await reopened).clientPort, secondPort)

    // removeAllListeners() also removes the facade's own tracking; events must still come.
    hub.removeAllListeners()
    const openedAfterReset = once(hub, 'streamOpened')
    const thirdPort = await exchange('third')
    assert.equal((await openedAfterReset).clientPort, thirdPort)
  } finally {
    await stopQuietly(tunnel, target)
  }
})
