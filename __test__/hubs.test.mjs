// An edge on several hubs: a tunnel to each, new connections to the live tunnel carrying the
// fewest, a hub that goes away costs only what was on it, tokens that name several hubs, and
// connectionsPerHub through one address that load-balances across hub processes, and lanes
// (several tunnels to one hub process).
import test from 'node:test'
import assert from 'node:assert/strict'
import net from 'node:net'
import {
  behaviours,
  connect,
  echoOver,
  echoOnce,
  edgeConfig,
  once,
  recordEvents,
  remoteingress,
  RemoteIngressEdge,
  SECRET,
  startHub,
  startTarget,
  stopQuietly,
  TARGET_ADDRESS,
  TEST_TRANSPORT,
  waitFor,
} from './helpers.mjs'

/** The edge config of `edgeConfig`, with `hubs` in place of hubHost/hubPort. */
function hubsConfig(hubs, edgeId, extra = {}) {
  const { hubHost, hubPort, ...rest } = edgeConfig(0, edgeId, SECRET, extra)
  return { ...rest, hubs }
}

/** Resolves with the edge's status once `predicate(status)` holds. */
async function statusWhen(edge, predicate, what) {
  let status
  await waitFor(async () => predicate((status = await edge.getStatus())), { what })
  return status
}

const connectedTunnels = (status) => status.tunnels.filter((t) => t.connected)

/**
 * A TCP load balancer in the style of a cloud one: each connection goes to the next of
 * `backends` (127.0.0.1 ports) in turn. Returns { port, close() }.
 */
async function startRoundRobin(backends) {
  let next = 0
  const sockets = new Set()
  const server = net.createServer((client) => {
    const backend = net.connect({ host: TARGET_ADDRESS, port: backends[next++ % backends.length] })
    for (const socket of [client, backend]) {
      sockets.add(socket)
      socket.on('error', () => {})
      socket.on('close', () => {
        sockets.delete(socket)
        client.destroy()
        backend.destroy()
      })
    }
    client.pipe(backend)
    backend.pipe(client)
  })
  await new Promise((resolve) => server.listen(0, TARGET_ADDRESS, resolve))
  return {
    port: server.address().port,
    close: () => {
      for (const socket of sockets) socket.destroy()
      return new Promise((resolve) => server.close(resolve))
    },
  }
}

test('an edge on two hubs keeps a tunnel to each, and new connections take turns between them', { timeout: 90000 }, async () => {
  const target = await startTarget(behaviours.echo)
  const allowed = [{ id: 'both', secret: SECRET, listenPorts: [target.port] }]
  const hubs = []
  const edge = new RemoteIngressEdge()
  try {
    hubs.push(await startHub(allowed), await startHub(allowed))
    const opened = hubs.map(({ hub }) => recordEvents(hub, ['streamOpened']))
    await edge.start(hubsConfig(hubs.map(({ hubPort }) => ({ host: '127.0.0.1', port: hubPort })), 'both'))
    const status = await statusWhen(edge, (s) => connectedTunnels(s).length === 2, 'both tunnels up')
    assert.equal(status.connected, true)
    const instances = await Promise.all(hubs.map(async ({ hub }) => (await hub.getStatus()).instanceId))
    assert.notEqual(instances[0], instances[1], 'each hub process names itself')
    assert.deepEqual(
      status.tunnels.map((t) => [t.hub, t.address, t.instanceId, t.transport, t.protocol]),
      hubs.map(({ hubPort }, i) => [`127.0.0.1:${hubPort}`, `127.0.0.1:${hubPort}`, instances[i], TEST_TRANSPORT, 'remoteingress/1']),
    )

    const REQUESTS = 10
    for (let i = 0; i < REQUESTS; i++) assert.equal(await echoOnce(target.port, `request ${i}`), `request ${i}`)
    const perHub = opened.map((events) => events.of('streamOpened').length)
    assert.equal(perHub[0] + perHub[1], REQUESTS)
    assert.ok(perHub.every((n) => n > 0), `both hubs carried connections: ${perHub}`)

    const metrics = await edge.getMetrics()
    assert.match(metrics, /^remoteingress_edge_tunnels_up 2$/m)
    for (const { hubPort } of hubs) {
      assert.match(metrics, new RegExp(`^remoteingress_edge_tunnel_info\\{hub="127.0.0.1:${hubPort}",address="127.0.0.1:${hubPort}",transport="${TEST_TRANSPORT}",protocol="remoteingress/1"\\} 1$`, 'm'))
    }
  } finally {
    await stopQuietly(edge, ...hubs.map(({ hub }) => hub), target)
  }
})

test('one of two hubs stops: clients are served by the other; when it is back, it serves again', { timeout: 90000 }, async () => {
  const target = await startTarget(behaviours.echo)
  const allowed = [{ id: 'failover', secret: SECRET, listenPorts: [target.port] }]
  const hubs = []
  const edge = new RemoteIngressEdge()
  const edgeEvents = recordEvents(edge, ['tunnelConnected', 'tunnelDisconnected'])
  try {
    hubs.push(await startHub(allowed), await startHub(allowed))
    const [first, second] = hubs
    await edge.start(hubsConfig(hubs.map(({ hubPort }) => ({ host: '127.0.0.1', port: hubPort })), 'failover'))
    await statusWhen(edge, (s) => connectedTunnels(s).length === 2, 'both tunnels up')

    const firstHub = `127.0.0.1:${first.hubPort}`
    const dropped = once(edge, 'tunnelDisconnected', undefined, (e) => e.hub === firstHub)
    await first.hub.stop()
    const { reason, address } = await dropped
    assert.equal(address, firstHub)
    assert.match(reason, /hub stopped|closed/)
    const secondOpened = recordEvents(second.hub, ['streamOpened'])
    for (let i = 0; i < 5; i++) assert.equal(await echoOnce(target.port, `while one is down ${i}`), `while one is down ${i}`)
    assert.equal(secondOpened.of('streamOpened').length, 5, 'the hub that is up carried them all')
    const down = await edge.getStatus()
    assert.equal(down.connected, true)
    assert.deepEqual(down.tunnels.map((t) => [t.hub, t.connected]), [[firstHub, false], [`127.0.0.1:${second.hubPort}`, true]])

    // The first hub comes back on its port: the edge reconnects to it on its own.
    const back = await startHub(allowed, { tunnelPort: first.hubPort })
    hubs.push(back)
    const backOpened = recordEvents(back.hub, ['streamOpened'])
    await statusWhen(edge, (s) => connectedTunnels(s).length === 2, 'the first hub tunnel up again')
    for (let i = 0; i < 10 && backOpened.of('streamOpened').length === 0; i++) await echoOnce(target.port, `after ${i}`)
    assert.ok(backOpened.of('streamOpened').length > 0, 'the hub that came back carries connections again')
    assert.equal(edgeEvents.of('tunnelConnected').filter((e) => e.hub === firstHub).length, 2)
  } finally {
    await stopQuietly(edge, ...hubs.map(({ hub }) => hub), target)
  }
})

test('a token names several hubs; an edge that reads only hubHost/hubPort finds the first', { timeout: 60000 }, async () => {
  const target = await startTarget(behaviours.echo)
  const allowed = [{ id: 'token-hubs', secret: SECRET, listenPorts: [target.port] }]
  const hubs = []
  const edge = new RemoteIngressEdge()
  try {
    hubs.push(await startHub(allowed), await startHub(allowed))
    const list = hubs.map(({ hubPort }) => ({ host: '127.0.0.1', port: hubPort }))
    const token = remoteingress.encodeConnectionToken({ hubs: list, edgeId: 'token-hubs', secret: SECRET })
    const decoded = remoteingress.decodeConnectionToken(token)
    assert.deepEqual(decoded.hubs, list)
    assert.deepEqual([decoded.hubHost, decoded.hubPort], ['127.0.0.1', hubs[0].hubPort])
    // What decode returns encodes again, to the same token.
    assert.equal(remoteingress.encodeConnectionToken(decoded), token)
    // The first hub in the fields every edge reads, the rest under "m".
    const json = JSON.parse(Buffer.from(token, 'base64url').toString())
    assert.deepEqual(json, { h: '127.0.0.1', p: hubs[0].hubPort, e: 'token-hubs', s: SECRET, m: [['127.0.0.1', hubs[1].hubPort]] })
    assert.throws(
      () => remoteingress.encodeConnectionToken({ hubs: list, hubHost: '127.0.0.9', edgeId: 'e', secret: 's' }),
      /hubHost: give either hubs or hubHost\/hubPort/,
    )

    const { hubHost, hubPort, ...extras } = edgeConfig(0, 'token-hubs')
    const { edgeId, secret, ...rest } = extras
    await edge.start({ ...rest, token })
    await statusWhen(edge, (s) => connectedTunnels(s).length === 2, 'a tunnel to each hub of the token')
    assert.equal(await echoOnce(target.port, 'by token'), 'by token')
  } finally {
    await stopQuietly(edge, ...hubs.map(({ hub }) => hub), target)
  }
})

test('bad hub lists are refused with the field named', async () => {
  const edge = new RemoteIngressEdge()
  const base = { edgeId: 'e', secret: 's', stunServers: [] }
  const cases = [
    [{ ...base, hubs: [] }, /hubs: must list 1 to 16 hubs/],
    [{ ...base, hubs: [{ host: 'a' }], hubHost: 'b' }, /hubs: give either hubs or hubHost\/hubPort, not both/],
    [{ ...base, hubs: [{ host: 'a' }, { port: 2 }] }, /hubs\[1\]\.host: is required/],
    [{ ...base, hubs: [{ host: 'a', port: 0 }] }, /hubs\[0\]\.port: must be an integer from 1 to 65535/],
    [{ ...base, hubs: [{ host: 'a' }, { host: 'a', port: 8443 }] }, /hubs\[1\]: a:8443 is listed twice/],
    [{ ...base, hubHost: 'a', connectionsPerHub: 9 }, /connectionsPerHub: must be an integer from 1 to 8/],
  ]
  for (const [config, message] of cases) {
    await assert.rejects(edge.start(config), (err) => err.code === 'ERR_INVALID_CONFIG' && message.test(err.message), JSON.stringify(config))
  }
  assert.equal(edge.running, false)
})

test('connectionsPerHub: 2 through one balanced address reaches two distinct hub processes, and one when only one exists', { skip: TEST_TRANSPORT === 'quic' && 'a TCP load balancer; QUIC would need a UDP one', timeout: 90000 }, async () => {
  const target = await startTarget(behaviours.echo)
  const allowed = [{ id: 'balanced', secret: SECRET, listenPorts: [target.port] }]
  const hubs = []
  const edges = []
  let balancer, single
  try {
    hubs.push(await startHub(allowed), await startHub(allowed), await startHub(allowed))
    const instances = await Promise.all(hubs.map(async ({ hub }) => (await hub.getStatus()).instanceId))
    balancer = await startRoundRobin(hubs.map(({ hubPort }) => hubPort))
    const edge = new RemoteIngressEdge()
    edges.push(edge)
    await edge.start(hubsConfig([{ host: '127.0.0.1', port: balancer.port }], 'balanced', { connectionsPerHub: 2 }))
    const status = await statusWhen(edge, (s) => connectedTunnels(s).length === 2, 'two tunnels up')
    const reached = connectedTunnels(status).map((t) => t.instanceId)
    assert.equal(new Set(reached).size, 2, `distinct hub processes: ${reached}`)
    for (const id of reached) assert.ok(instances.includes(id), `${id} is one of the hubs`)
    assert.equal(status.tunnels.length, 2)

    // Behind an address with one hub process, the second tunnel never stays up beside the first.
    single = await startRoundRobin([hubs[0].hubPort])
    const lone = new RemoteIngressEdge()
    edges.push(lone)
    const loneHubEvents = recordEvents(hubs[0].hub, ['edgeDisconnected'])
    await lone.start(hubsConfig([{ host: '127.0.0.1', port: single.port }], 'balanced', { connectionsPerHub: 2 }))
    await statusWhen(lone, (s) => connectedTunnels(s).length === 1, 'one tunnel up')
    // Two duplicate attempts closed by the edge prove it retried and kept only the first.
    await waitFor(() => loneHubEvents.of('edgeDisconnected').length >= 2, { what: 'two duplicate tunnels turned away' })
    const loneStatus = await lone.getStatus()
    assert.deepEqual(loneStatus.tunnels.map((t) => t.connected).sort(), [false, true])
    assert.deepEqual(connectedTunnels(loneStatus).map((t) => t.instanceId), [instances[0]])
    assert.equal(await echoOnce(target.port, 'balanced'), 'balanced')
  } finally {
    await stopQuietly(...edges, ...hubs.map(({ hub }) => hub), target)
    await balancer?.close()
    await single?.close()
  }
})

test('lanes: 3 keeps three tunnels to one hub process and spreads connections over them', { timeout: 90000 }, async () => {
  const target = await startTarget(behaviours.echo)
  const allowed = [{ id: 'laned', secret: SECRET, listenPorts: [target.port] }]
  const hubs = []
  const edge = new RemoteIngressEdge()
  const clients = []
  try {
    hubs.push(await startHub(allowed))
    const { hub, hubPort } = hubs[0]
    const { instanceId } = await hub.getStatus()
    await edge.start(hubsConfig([{ host: '127.0.0.1', port: hubPort }], 'laned', { lanes: 3 }))
    const status = await statusWhen(edge, (s) => connectedTunnels(s).length === 3, 'three lanes up')
    assert.deepEqual(
      status.tunnels.map((t) => [t.lane, t.connected, t.instanceId, t.transport]),
      [0, 1, 2].map((lane) => [lane, true, instanceId, TEST_TRANSPORT]),
    )
    await waitFor(async () => (await hub.getStatus()).connectedEdges.length === 3, { what: 'the hub to see three tunnels of the edge' })

    // Six held connections: each new one goes to a lane carrying the fewest.
    for (let i = 0; i < 6; i++) {
      const client = await connect(target.port)
      clients.push(client)
      assert.equal(await echoOver(client, `held ${i}`), `held ${i}`)
    }
    const spread = await statusWhen(edge, (s) => s.activeStreams === 6, 'six streams')
    assert.deepEqual(spread.tunnels.map((t) => t.activeStreams), [2, 2, 2])
    const atHub = (await hub.getStatus()).connectedEdges.map((e) => e.activeStreams)
    assert.deepEqual(atHub, [2, 2, 2], 'the hub carries two on each tunnel')
    // One series for the three, counting them: a scrape may hold a series only once.
    const metrics = await edge.getMetrics()
    const hubLabel = `127.0.0.1:${hubPort}`
    const info = metrics.split('\n').filter((line) => line.startsWith('remoteingress_edge_tunnel_info{'))
    assert.deepEqual(info, [`remoteingress_edge_tunnel_info{hub="${hubLabel}",address="${hubLabel}",transport="${TEST_TRANSPORT}",protocol="remoteingress/1"} 3`])
    assert.match(metrics, /^remoteingress_edge_tunnels_up 3$/m)
  } finally {
    for (const client of clients) client.destroy()
    await stopQuietly(edge, ...hubs.map(({ hub }) => hub), target)
  }
})

test('connectionsPerHub: 2 with lanes: 2 through a balanced address: four tunnels, at most two to one hub process', { skip: TEST_TRANSPORT === 'quic' && 'a TCP load balancer; QUIC would need a UDP one', timeout: 90000 }, async () => {
  const target = await startTarget(behaviours.echo)
  const allowed = [{ id: 'laned-balanced', secret: SECRET, listenPorts: [target.port] }]
  const hubs = []
  const edge = new RemoteIngressEdge()
  const edges = [edge]
  let balancer, single
  try {
    hubs.push(await startHub(allowed), await startHub(allowed), await startHub(allowed))
    balancer = await startRoundRobin(hubs.map(({ hubPort }) => hubPort))
    await edge.start(hubsConfig([{ host: '127.0.0.1', port: balancer.port }], 'laned-balanced', { connectionsPerHub: 2, lanes: 2 }))
    const status = await statusWhen(edge, (s) => connectedTunnels(s).length === 4, 'four tunnels up')
    assert.equal(status.tunnels.length, 4)
    const perInstance = {}
    for (const t of connectedTunnels(status)) perInstance[t.instanceId] = (perInstance[t.instanceId] ?? 0) + 1
    const counts = Object.values(perInstance)
    assert.ok(counts.length >= 2 && counts.every((n) => n <= 2), `at most two lanes to one hub process: ${JSON.stringify(perInstance)}`)
    assert.deepEqual(status.tunnels.map((t) => t.lane).sort(), [0, 0, 1, 1])
    assert.equal(await echoOnce(target.port, 'laned'), 'laned')

    // Behind an address with one hub process, two of the four stay up: its two lanes.
    single = await startRoundRobin([hubs[0].hubPort])
    const lone = new RemoteIngressEdge()
    edges.push(lone)
    const turnedAway = recordEvents(hubs[0].hub, ['edgeDisconnected'])
    await lone.start(hubsConfig([{ host: '127.0.0.1', port: single.port }], 'laned-balanced', { connectionsPerHub: 2, lanes: 2 }))
    await statusWhen(lone, (s) => connectedTunnels(s).length === 2, 'two tunnels up')
    await waitFor(() => turnedAway.of('edgeDisconnected').length >= 2, { what: 'tunnels past the lanes turned away' })
    assert.deepEqual((await lone.getStatus()).tunnels.map((t) => t.connected).sort(), [false, false, true, true])
  } finally {
    await stopQuietly(...edges, ...hubs.map(({ hub }) => hub), target)
    await balancer?.close()
    await single?.close()
  }
})
