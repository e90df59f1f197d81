// Graceful drain: hub.stop({ graceMs }) sends GOAWAY, the edge moves new connections elsewhere
// (another hub, or a wait for the next tunnel) while open ones finish, the hub closes each
// tunnel once it is idle; a 4.13 edge gets only the close; the wire exchange byte by byte.
import test from 'node:test'
import assert from 'node:assert/strict'
import {
  behaviours,
  connect,
  connectRawEdge,
  echoOnce,
  echoOver,
  edgeConfig,
  FrameType,
  once,
  recordEvents,
  RemoteIngressEdge,
  SECRET,
  startConnectedEdge,
  startHub,
  startTarget,
  stopQuietly,
  waitFor,
} from './helpers.mjs'
import { connect413Edge } from './helpers/upstream413.mjs'

/** Sends `text` over an open client connection to an echo target and checks it comes back. */
const assertEchoes = async (client, text) => assert.equal(await echoOver(client, text), text)

test('a hub drained with graceMs: new connections go to the other hub at once, an open one finishes, then the tunnel closes', { timeout: 90000 }, async () => {
  const target = await startTarget(behaviours.echo)
  const allowed = [{ id: 'drained', secret: SECRET, listenPorts: [target.port] }]
  const hubs = []
  const edge = new RemoteIngressEdge()
  const clients = []
  try {
    hubs.push(await startHub(allowed), await startHub(allowed))
    const [draining, staying] = hubs
    const drainingEvents = recordEvents(draining.hub, ['streamOpened', 'edgeDisconnected'])
    const stayingEvents = recordEvents(staying.hub, ['streamOpened'])
    const edgeEvents = recordEvents(edge, ['tunnelDisconnected'])
    const { hubHost, hubPort, ...rest } = edgeConfig(0, 'drained')
    await edge.start({ ...rest, hubs: hubs.map(({ hubPort: port }) => ({ host: '127.0.0.1', port })) })
    await waitFor(async () => (await edge.getStatus()).tunnels.filter((t) => t.connected).length === 2, { what: 'both tunnels up' })

    // A long-lived connection on the hub about to drain: connections take turns, so one of
    // the first few lands there.
    let long
    for (let i = 0; i < 10 && !long; i++) {
      const client = await connect(target.port)
      clients.push(client)
      await assertEchoes(client, `hello ${i}`)
      if (drainingEvents.of('streamOpened').length > 0) long = client
    }
    assert.ok(long, 'a connection on the hub that drains')

    const stopped = draining.hub.stop({ graceMs: 60000 })
    let stopDone = false
    stopped.then(() => (stopDone = true))
    await waitFor(async () => (await draining.hub.getStatus()).draining === true, { what: 'the hub says it drains' })
    assert.match(await draining.hub.getMetrics(), /^remoteingress_hub_draining 1$/m)
    assert.match(await staying.hub.getMetrics(), /^remoteingress_hub_draining 0$/m)
    const drainingHub = `127.0.0.1:${draining.hubPort}`
    await waitFor(async () => (await edge.getStatus()).tunnels.some((t) => t.hub === drainingHub && t.draining), { what: 'the edge marks the tunnel draining' })

    // New connections: all on the hub that stays, none fail.
    const openedBefore = drainingEvents.of('streamOpened').length
    for (let i = 0; i < 10; i++) assert.equal(await echoOnce(target.port, `during ${i}`), `during ${i}`)
    assert.equal(drainingEvents.of('streamOpened').length, openedBefore, 'nothing new on the draining hub')
    assert.ok(stayingEvents.of('streamOpened').length >= 10)

    // The open connection still works; the hub waits for it.
    await assertEchoes(long, 'still here')
    assert.equal(stopDone, false, 'the drain waits for the open connection')
    for (const client of clients) client.destroy()
    await stopped // once idle, well before the grace
    const closed = drainingEvents.of('edgeDisconnected')
    assert.equal(closed.length, 1)
    assert.equal(closed[0].reason, 'hub draining: its connections ended')
    await waitFor(() => edgeEvents.of('tunnelDisconnected').some((e) => e.hub === drainingHub), { what: "the edge sees the drained tunnel's end" })
    assert.equal(await echoOnce(target.port, 'after'), 'after')
  } finally {
    for (const client of clients) client.destroy()
    await stopQuietly(edge, ...hubs.map(({ hub }) => hub), target)
  }
})

test('the only hub drains and comes back: connections made meanwhile wait for the new one, none fail', { timeout: 90000 }, async () => {
  const target = await startTarget(behaviours.echo)
  const allowed = [{ id: 'alone', secret: SECRET, listenPorts: [target.port] }]
  let first, second, edge
  try {
    first = await startHub(allowed)
    ;({ edge } = await startConnectedEdge(edgeConfig(first.hubPort, 'alone')))
    assert.equal(await echoOnce(target.port, 'before'), 'before')
    await first.hub.stop({ graceMs: 30000 })
    await waitFor(async () => (await edge.getStatus()).connected === false, { what: 'the edge to see the tunnel end' })

    // Requests while no hub is up: they wait (connectWaitMs, 10 s by default) for the next.
    const started = Date.now()
    const waiting = Array.from({ length: 5 }, (_, i) => echoOnce(target.port, `meanwhile ${i}`, 30000).then((text) => ({ text, ms: Date.now() - started })))
    await waitFor(async () => (await edge.getStatus()).waitingConnections === 5, { what: 'five connections waiting' })
    second = await startHub(allowed, { tunnelPort: first.hubPort })
    const answers = await Promise.all(waiting)
    assert.deepEqual(answers.map((a) => a.text), [0, 1, 2, 3, 4].map((i) => `meanwhile ${i}`))
    console.log(`# waited for the hub to come back: longest ${Math.max(...answers.map((a) => a.ms))} ms`)
  } finally {
    await stopQuietly(edge, first?.hub, second?.hub, target)
  }
})

test('raw edge: GOAWAY, the edge answers with its last id; a later OPEN is refused, an earlier stream runs to its end', { timeout: 60000 }, async () => {
  const target = await startTarget(behaviours.echo)
  let hub, raw
  try {
    let hubPort
    ;({ hub, hubPort } = await startHub([{ id: 'raw-drain', secret: SECRET, listenPorts: [target.port] }]))
    const hubEvents = recordEvents(hub, ['edgeDisconnected'])
    raw = await connectRawEdge(hubPort, 'raw-drain')
    raw.send(1, FrameType.OPEN, Buffer.from(`PROXY TCP4 203.0.113.9 127.0.0.2 4000 ${target.port}\r\n`))
    raw.send(1, FrameType.DATA, Buffer.from('one'))
    await raw.nextFrame((f) => f.streamId === 1 && f.type === FrameType.DATA_BACK, undefined, 'the echo on stream 1')

    const stopped = hub.stop({ graceMs: 60000 })
    const goaway = await raw.nextFrame((f) => f.type === FrameType.GOAWAY, undefined, 'GOAWAY')
    assert.deepEqual([goaway.streamId, goaway.payload.length], [0, 0], 'GOAWAY: stream 0, no payload')
    // The answer: stream 1 is the last this edge opened.
    raw.send(0, FrameType.GOAWAY, Buffer.from([0, 0, 0, 1]))
    raw.send(2, FrameType.OPEN, Buffer.from(`PROXY TCP4 203.0.113.9 127.0.0.2 4001 ${target.port}\r\n`))
    const refused = await raw.nextFrame((f) => f.streamId === 2, undefined, 'the answer to OPEN 2')
    assert.equal(refused.type, FrameType.CLOSE_BACK)
    assert.deepEqual([...refused.payload], [0x01], 'reset reason "refused"')

    // Stream 1 still carries, then closes; with nothing left, the hub closes the tunnel.
    raw.send(1, FrameType.DATA, Buffer.from('two'))
    await raw.nextFrame((f) => f.streamId === 1 && f.type === FrameType.DATA_BACK, undefined, 'the echo after GOAWAY')
    raw.send(1, FrameType.CLOSE)
    await stopped
    assert.equal(hubEvents.of('edgeDisconnected')[0]?.reason, 'hub draining: its connections ended')
  } finally {
    raw?.close()
    await stopQuietly(hub, target)
  }
})

test('a 4.13 edge gets no GOAWAY: it is served until the grace ends, then closed', { timeout: 60000 }, async () => {
  let hub, peer
  try {
    let hubPort
    ;({ hub, hubPort } = await startHub([{ id: 'old-edge', secret: SECRET, listenPorts: [18080] }]))
    peer = await connect413Edge(hubPort, 'old-edge', SECRET)
    assert.ok(await peer.answer, 'logged in')
    const disconnected = once(hub, 'edgeDisconnected')
    await hub.stop({ graceMs: 1500 })
    assert.equal((await disconnected).reason, 'hub stopped')
    await peer.whenClosed
    assert.deepEqual(peer.violations, [], 'nothing outside the 4.13 documentation, GOAWAY included')
  } finally {
    peer?.close?.()
    await stopQuietly(hub)
  }
})

test('stop options are checked', async () => {
  const { hub } = await startHub([])
  try {
    for (const [options, message] of [
      [{ graceMs: -1 }, /graceMs: must be an integer from 0 to 3600000/],
      [{ grace: 5 }, /grace: is not a known option \(known: graceMs\)/],
    ]) {
      await assert.rejects(hub.stop(options), (err) => err.code === 'ERR_INVALID_CONFIG' && message.test(err.message))
      assert.equal(hub.running, true, 'a refused stop leaves the hub running')
    }
  } finally {
    await stopQuietly(hub)
  }
})
