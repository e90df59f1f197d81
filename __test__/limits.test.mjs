// Limits an operator sets in the hub's `limits` option: connected edges and connections per edge.
import test from 'node:test'
import assert from 'node:assert/strict'
import net from 'node:net'
import {
  behaviours,
  connect,
  EDGE_ADDRESS,
  edgeConfig,
  GUARD_MS,
  once,
  readBytes,
  recordEvents,
  RemoteIngressEdge,
  SECRET,
  startConnectedEdge,
  startHub,
  startTarget,
  startTunnel,
  stopQuietly,
  TEST_TRANSPORT,
  waitFor,
  withTimeout,
} from './helpers.mjs'

test('limits.maxEdges: an edge past the limit is refused with a reason, and gets in once a place is free', { timeout: 60000 }, async () => {
  let hub
  const edges = []
  try {
    let hubPort
    ;({ hub, hubPort } = await startHub(
      [
        { id: 'first', secret: SECRET, listenPorts: [] },
        { id: 'second', secret: SECRET, listenPorts: [] },
      ],
      { limits: { maxEdges: 1 } },
    ))
    const hubEvents = recordEvents(hub, ['warning', 'edgeConnected'])
    const first = await startConnectedEdge(edgeConfig(hubPort, 'first'))
    edges.push(first.edge)

    const second = new RemoteIngressEdge()
    edges.push(second)
    const refused = once(second, 'warning', GUARD_MS, (w) => w.code === 'authRejected')
    await second.start(edgeConfig(hubPort, 'second'))
    assert.match((await refused).message, /edge limit reached/)
    await waitFor(() => hubEvents.of('warning').some((w) => w.code === 'edgeLimit'), { what: "the hub's edgeLimit warning" })
    assert.match(hubEvents.of('warning').find((w) => w.code === 'edgeLimit').message, /second .*1 edges are connected/)
    assert.deepEqual((await hub.getStatus()).connectedEdges.map((e) => e.edgeId), ['first'])

    // The refusal is not a failed login: the second edge gets in as soon as the first leaves.
    const secondIn = once(second, 'tunnelConnected')
    await first.edge.stop()
    await secondIn
    assert.deepEqual((await hub.getStatus()).connectedEdges.map((e) => e.edgeId), ['second'])
  } finally {
    await stopQuietly(...edges, hub)
  }
})

test('limits.maxStreamsPerEdge: a connection past the limit is refused (TLS) or waits for a free stream (QUIC)', { timeout: 60000 }, async () => {
  const target = await startTarget(behaviours.echo)
  let tunnel
  const clients = []
  try {
    tunnel = await startTunnel({ ports: [target.port], hubOptions: { limits: { maxStreamsPerEdge: 2 } } })
    const hubEvents = recordEvents(tunnel.hub, ['warning'])
    for (let i = 0; i < 2; i++) {
      const client = await connect(target.port)
      clients.push(client)
      const echoed = readBytes(client, 2)
      client.write(`c${i}`)
      assert.equal((await echoed).toString(), `c${i}`)
    }
    if (TEST_TRANSPORT === 'tcpTls') {
      // The reset can beat Node's 'connect' event, so do not wait for it.
      const third = net.connect({ port: target.port, host: EDGE_ADDRESS })
      clients.push(third)
      third.on('error', () => {})
      const closed = new Promise((resolve) => third.once('close', resolve))
      third.write('c2')
      await withTimeout(closed, GUARD_MS, 'the connection past the limit to be closed')
      await waitFor(() => hubEvents.of('warning').some((w) => w.code === 'streamLimit'), { what: "the hub's streamLimit warning" })
      assert.equal(target.connections.length, 2, 'the refused connection never reached the target')
    } else {
      // QUIC's own stream limit: the third connection is carried once one of the others ends.
      const third = await connect(target.port)
      clients.push(third)
      const echoed = readBytes(third, 2)
      third.write('c2')
      // The edge has taken the third connection and is opening its stream.
      await waitFor(async () => (await tunnel.edge.getStatus()).activeStreams === 3, { what: 'the edge to hold three connections' })
      assert.equal(target.connections.length, 2, 'the third waits for a stream')
      clients[0].destroy()
      assert.equal((await echoed).toString(), 'c2')
      assert.equal(target.connections.length, 3)
    }
  } finally {
    for (const client of clients) client.destroy()
    await stopQuietly(tunnel, target)
  }
})
