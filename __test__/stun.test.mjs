// Public-IP discovery by STUN: a real coturn on loopback, fake servers that answer, stay silent
// or answer with junk, unreachable servers, the hub's refresh interval changing live, and the
// discovered address showing up in getStatus() and in the PROXY v1 (TCP) and v2 (UDP) headers.
import test from 'node:test'
import assert from 'node:assert/strict'
import dgram from 'node:dgram'
import {
  behaviours,
  connect,
  edgeConfig,
  findExecutable,
  once,
  quietWindow,
  readBytes,
  recordEvents,
  RemoteIngressEdge,
  SECRET,
  startCoturn,
  startFakeStunServer,
  startHub,
  startStunRelay,
  startTarget,
  startUdpClient,
  startUdpTarget,
  stopQuietly,
  stunAnswers,
  stunBindingSuccess,
  stunMessage,
  StunType,
  udpBehaviours,
  waitFor,
} from './helpers.mjs'

const EDGE_ID = 'stun-edge'

/**
 * A hub allowing one edge (with `stunIntervalSecs`) and that edge started with `stunServers`,
 * its events recorded from before start() so a quick discovery is not missed. Resolves once
 * both sides report the tunnel. `setStunInterval(secs)` changes the hub's entry live.
 */
async function startStunTunnel({ stunServers, stunIntervalSecs, ports = [], udpPorts = [], edgeOptions = {} }) {
  const entry = { id: EDGE_ID, secret: SECRET, listenPorts: ports, listenPortsUdp: udpPorts, stunIntervalSecs }
  const { hub, hubPort } = await startHub([entry])
  const edge = new RemoteIngressEdge()
  const events = recordEvents(edge, ['publicIpDiscovered', 'warning', 'tunnelConnected', 'tunnelDisconnected'])
  try {
    const connected = once(edge, 'tunnelConnected', 10000)
    const assigned = once(edge, 'portsAssigned', 10000)
    const hubSawEdge = once(hub, 'edgeConnected', 10000, (e) => e.edgeId === EDGE_ID)
    await edge.start(edgeConfig(hubPort, EDGE_ID, SECRET, { stunServers, ...edgeOptions }))
    await Promise.all([connected, assigned, hubSawEdge])
  } catch (err) {
    await stopQuietly(edge, hub)
    throw err
  }
  return {
    hub,
    edge,
    events,
    stunFailures: () => events.of('warning').filter((w) => w.code === 'stunFailed'),
    setStunInterval: (secs) => hub.updateAllowedEdges([{ ...entry, stunIntervalSecs: secs }]),
    stop: () => stopQuietly(edge, hub),
  }
}

/** Opens a TCP connection through the edge to an echo target; checks bytes pass; returns the target's record. */
async function echoThroughEdge(target, port, text = 'through the tunnel') {
  const client = await connect(port)
  try {
    const echoed = readBytes(client, Buffer.byteLength(text), 5000)
    client.write(text)
    assert.equal((await echoed).toString(), text)
    return target.connections.at(-1)
  } finally {
    client.destroy()
  }
}

/** A UDP port on 127.0.0.1 with nothing listening on it (just released). */
async function closedUdpPort() {
  const socket = dgram.createSocket('udp4')
  await new Promise((resolve) => socket.bind(0, '127.0.0.1', resolve))
  const { port } = socket.address()
  await new Promise((resolve) => socket.close(resolve))
  return port
}

const turnserver = findExecutable('turnserver')
const requireStun = process.env.REMOTEINGRESS_REQUIRE_STUN === '1'
const skipCoturn = !turnserver && !requireStun
  ? 'turnserver (Debian package coturn) not found on PATH or in /usr/bin, /usr/sbin (set REMOTEINGRESS_REQUIRE_STUN=1 to fail instead)'
  : false

test('coturn on loopback: the edge discovers 127.0.0.1 once over several refreshes, and TCP PROXY headers carry it', { timeout: 40000, skip: skipCoturn }, async () => {
  assert.ok(turnserver, 'REMOTEINGRESS_REQUIRE_STUN=1 but turnserver (coturn) is not installed')
  let coturn, relay, target, tunnel
  try {
    coturn = await startCoturn(turnserver)
    // A transparent relay in front of coturn counts the edge's requests (coturn still sees
    // 127.0.0.1, the relay's address).
    relay = await startStunRelay(coturn.port)
    target = await startTarget(behaviours.echo)
    tunnel = await startStunTunnel({ stunServers: [`127.0.0.1:${relay.port}`], stunIntervalSecs: 1, ports: [target.port] })

    const discovered = await waitFor(() => tunnel.events.of('publicIpDiscovered')[0], { timeoutMs: 10000, what: 'publicIpDiscovered' })
    assert.deepEqual(discovered, { ip: '127.0.0.1' })
    // The first round and at least two refreshes, one a second.
    const base = relay.forwarded
    await waitFor(() => relay.forwarded >= base + 2, { timeoutMs: 10000, what: `two more STUN refreshes (relayed ${relay.forwarded})` })
    assert.equal(tunnel.events.of('publicIpDiscovered').length, 1, 'publicIpDiscovered fires once, not on every refresh')
    assert.deepEqual(tunnel.stunFailures(), [])
    assert.equal((await tunnel.edge.getStatus()).publicIp, '127.0.0.1')

    // The edge listens on 127.0.0.2; the header names the discovered address instead.
    const record = await echoThroughEdge(target, target.port)
    assert.equal(record.header.split(' ')[1], 'TCP4')
    assert.deepEqual(record.destination, { address: '127.0.0.1', port: target.port })
    assert.equal(record.source.address, '127.0.0.1')
  } finally {
    await stopQuietly(tunnel, target, relay, coturn)
  }
})

test('an answer becomes publicIp and the destination of TCP (v1) and UDP (v2) headers; a changed one fires again', { timeout: 30000 }, async () => {
  const stun = await startFakeStunServer(stunAnswers.mapped('203.0.113.7'))
  const target = await startTarget(behaviours.echo)
  const udpTarget = await startUdpTarget(udpBehaviours.echo)
  let tunnel, client
  try {
    tunnel = await startStunTunnel({
      stunServers: [`127.0.0.1:${stun.port}`],
      stunIntervalSecs: 3600,
      ports: [target.port],
      udpPorts: [udpTarget.port],
    })
    await waitFor(() => tunnel.events.of('publicIpDiscovered').length === 1, { timeoutMs: 5000, what: 'publicIpDiscovered' })
    assert.deepEqual(tunnel.events.of('publicIpDiscovered'), [{ ip: '203.0.113.7' }])
    assert.equal((await tunnel.edge.getStatus()).publicIp, '203.0.113.7')
    // One transaction: one request, answered; the source port is the edge's own STUN socket.
    assert.equal(stun.bindingRequests.length, 1)

    const record = await echoThroughEdge(target, target.port)
    assert.deepEqual(record.destination, { address: '203.0.113.7', port: target.port })
    assert.match(record.header, new RegExp(`^PROXY TCP4 127\\.0\\.0\\.1 203\\.0\\.113\\.7 \\d+ ${target.port}$`))

    client = await startUdpClient()
    const reply = await client.request(Buffer.from('datagram'), udpTarget.port, { timeoutMs: 3000, attempts: 3 })
    assert.equal(reply.toString(), 'datagram')
    const datagram = udpTarget.datagrams.find((d) => d.payload?.toString() === 'datagram')
    assert.equal(datagram.header.protocol, 'UDP4')
    assert.deepEqual(datagram.header.destination, { address: '203.0.113.7', port: udpTarget.port })
    assert.deepEqual(datagram.header.source, { address: '127.0.0.1', port: client.port })

    // The server now answers the way RFC 3489 servers do (MAPPED-ADDRESS only), with another
    // address; refreshes every second pick it up, once.
    stun.setAnswer(stunAnswers.mappedOnly('198.51.100.20'))
    await tunnel.setStunInterval(1)
    await waitFor(() => tunnel.events.of('publicIpDiscovered').length === 2, { timeoutMs: 5000, what: 'a second publicIpDiscovered' })
    assert.deepEqual(tunnel.events.of('publicIpDiscovered')[1], { ip: '198.51.100.20' })
    const after = stun.bindingRequests.length
    await waitFor(() => stun.bindingRequests.length >= after + 2, { timeoutMs: 6000, what: 'two more refreshes' })
    assert.equal(tunnel.events.of('publicIpDiscovered').length, 2, 'an unchanged address fires nothing')
    const second = await echoThroughEdge(target, target.port, 'again')
    assert.equal(second.destination.address, '198.51.100.20')
    assert.deepEqual(tunnel.stunFailures(), [])
  } finally {
    await client?.close()
    await stopQuietly(tunnel, target, udpTarget, stun)
  }
})

test('a STUN server that never answers: the tunnel works at once, four requests go out, stunFailed, no publicIp; stop() is prompt', { timeout: 30000 }, async () => {
  const stun = await startFakeStunServer(stunAnswers.silent)
  const target = await startTarget(behaviours.echo)
  let tunnel
  try {
    const started = Date.now()
    tunnel = await startStunTunnel({ stunServers: [`127.0.0.1:${stun.port}`], stunIntervalSecs: 3600, ports: [target.port] })
    // Bytes pass while discovery is still waiting for its answer.
    const record = await echoThroughEdge(target, target.port)
    assert.deepEqual(tunnel.stunFailures(), [], 'the tunnel carried bytes before STUN gave up')
    assert.ok(Date.now() - started < 4000, `tunnel up and carrying after ${Date.now() - started} ms`)
    assert.deepEqual(record.destination, { address: '127.0.0.2', port: target.port })

    // Default schedule: requests at 0, 0.5, 1.5 and 3.5 s, the same transaction, then give up at 5.5 s.
    const [warning] = await waitFor(() => tunnel.stunFailures().length > 0 && tunnel.stunFailures(), { timeoutMs: 10000, what: 'a stunFailed warning' })
    assert.match(warning.message, new RegExp(`127\\.0\\.0\\.1:${stun.port}: no answer to 4 Binding request\\(s\\) within 5\\.5 s`))
    const requests = stun.bindingRequests
    assert.equal(requests.length, 4)
    for (const request of requests) {
      assert.ok(request.txid.equals(requests[0].txid), 'retransmits keep the transaction id')
      assert.equal(request.from.port, requests[0].from.port, 'retransmits come from the same socket')
    }
    const gaps = requests.slice(1).map((r, i) => r.at - requests[i].at)
    assert.ok(gaps[0] >= 400 && gaps[0] < 1200, `first retransmit after ${gaps[0]} ms`)
    assert.ok(gaps[1] >= 800 && gaps[1] < 1900, `second after ${gaps[1]} ms`)
    assert.ok(gaps[2] >= 1700 && gaps[2] < 3200, `third after ${gaps[2]} ms`)
    assert.deepEqual(tunnel.events.of('publicIpDiscovered'), [])
    assert.equal((await tunnel.edge.getStatus()).publicIp, null)
    await echoThroughEdge(target, target.port, 'still fine')
    assert.equal(tunnel.events.of('tunnelDisconnected').length, 0)

    // A refresh in flight does not hold up stop().
    await tunnel.setStunInterval(1)
    await waitFor(() => stun.bindingRequests.length > 4, { timeoutMs: 5000, what: 'the next round to start' })
    const stopping = Date.now()
    await tunnel.edge.stop()
    assert.ok(Date.now() - stopping < 2000, `stop() took ${Date.now() - stopping} ms`)
    const count = stun.bindingRequests.length
    await quietWindow(1200) // past the next retransmit (0.5 s)
    assert.equal(stun.bindingRequests.length, count, 'no request after stop()')
  } finally {
    await stopQuietly(tunnel, target, stun)
  }
})

test('hostile answers are ignored: junk, a truncated or foreign-transaction answer, a request, the wrong family, another port', { timeout: 30000 }, async () => {
  const hostile = (request) => {
    const good = stunBindingSuccess(request.txid, { xorMapped: { address: '203.0.113.66', port: request.from.port } })
    const otherTxid = Buffer.from(request.txid)
    otherTxid[0] ^= 0xff
    return [
      Buffer.from('definitely not STUN'),
      good.subarray(0, good.length - 4),
      stunBindingSuccess(otherTxid, { xorMapped: { address: '203.0.113.66', port: 1 } }),
      stunMessage(StunType.BINDING_REQUEST, request.txid),
      stunBindingSuccess(request.txid, { xorMapped: { address: '2001:db8::66', port: 1 } }),
      stunBindingSuccess(request.txid, { xorMapped: { address: '0.0.0.0', port: 1 } }),
      { data: good, fromOtherPort: true },
    ]
  }
  const stun = await startFakeStunServer(hostile)
  const target = await startTarget(behaviours.echo)
  let tunnel
  try {
    tunnel = await startStunTunnel({
      stunServers: [`127.0.0.1:${stun.port}`],
      stunIntervalSecs: 3600,
      ports: [target.port],
      edgeOptions: { stunTimeoutMs: 1200 },
    })
    await echoThroughEdge(target, target.port)
    const [warning] = await waitFor(() => tunnel.stunFailures().length > 0 && tunnel.stunFailures(), { timeoutMs: 8000, what: 'a stunFailed warning' })
    assert.match(warning.message, /no answer to 2 Binding request\(s\) within 1\.2 s \(ignored a datagram: /)
    assert.equal(stun.bindingRequests.length, 2, 'requests at 0 and 0.5 s within 1.2 s')
    assert.deepEqual(tunnel.events.of('publicIpDiscovered'), [])
    assert.equal((await tunnel.edge.getStatus()).publicIp, null)
    const record = await echoThroughEdge(target, target.port, 'unaffected')
    assert.equal(record.destination.address, '127.0.0.2')

    // Positive control: the same server answering properly is believed.
    stun.setAnswer(stunAnswers.mapped('203.0.113.66'))
    await tunnel.setStunInterval(1)
    await waitFor(() => tunnel.events.of('publicIpDiscovered').length === 1, { timeoutMs: 5000, what: 'publicIpDiscovered after a proper answer' })
    assert.deepEqual(tunnel.events.of('publicIpDiscovered'), [{ ip: '203.0.113.66' }])
  } finally {
    await stopQuietly(tunnel, target, stun)
  }
})

test('unreachable servers (a name that never resolves, a closed port) leave the tunnel alone; stunFailed again at the next interval', { timeout: 30000 }, async () => {
  const target = await startTarget(behaviours.echo)
  let tunnel
  try {
    const closed = await closedUdpPort()
    tunnel = await startStunTunnel({
      stunServers: ['stun.invalid:3478', `127.0.0.1:${closed}`],
      stunIntervalSecs: 1,
      ports: [target.port],
    })
    await echoThroughEdge(target, target.port)
    const [first] = await waitFor(() => tunnel.stunFailures().length > 0 && tunnel.stunFailures(), { timeoutMs: 8000, what: 'a stunFailed warning' })
    assert.match(first.message, /^no STUN server told this edge its public IP: stun\.invalid:3478: the name does not resolve; /)
    assert.match(first.message, new RegExp(`127\\.0\\.0\\.1:${closed}: refused`))
    // A retry a second later fails the same way.
    await waitFor(() => tunnel.stunFailures().length >= 2, { timeoutMs: 8000, what: 'a second stunFailed warning' })
    assert.deepEqual(tunnel.events.of('publicIpDiscovered'), [])
    assert.equal((await tunnel.edge.getStatus()).connected, true)
    await echoThroughEdge(target, target.port, 'still carried')
  } finally {
    await stopQuietly(tunnel, target)
  }
})

test("the hub's stunIntervalSecs takes effect live: from one request an hour to one a second", { timeout: 30000 }, async () => {
  const stun = await startFakeStunServer(stunAnswers.mapped('203.0.113.9'))
  let tunnel
  try {
    tunnel = await startStunTunnel({ stunServers: [`127.0.0.1:${stun.port}`], stunIntervalSecs: 3600 })
    await waitFor(() => tunnel.events.of('publicIpDiscovered').length === 1, { timeoutMs: 5000, what: 'publicIpDiscovered' })
    await quietWindow(1500) // the first round answered: no refresh within the hour
    assert.equal(stun.bindingRequests.length, 1)

    const changedAt = Date.now()
    await tunnel.setStunInterval(1)
    await waitFor(() => stun.bindingRequests.length >= 4, { timeoutMs: 8000, what: `three refreshes (have ${stun.bindingRequests.length - 1})` })
    const refreshes = stun.bindingRequests.slice(1)
    // Already past the new interval since the last round: the first refresh is immediate.
    assert.ok(refreshes[0].at - changedAt < 1000, `first refresh ${refreshes[0].at - changedAt} ms after the change`)
    const gaps = refreshes.slice(1).map((r, i) => r.at - refreshes[i].at)
    for (const gap of gaps) assert.ok(gap >= 800 && gap < 2500, `refreshes ${gaps.join(', ')} ms apart`)
    assert.equal(tunnel.events.of('publicIpDiscovered').length, 1)

    // And back: a long interval stops the refreshes.
    await tunnel.setStunInterval(3600)
    await quietWindow(300) // let an in-flight round finish
    const settled = stun.bindingRequests.length
    await quietWindow(1500)
    assert.equal(stun.bindingRequests.length, settled, 'no refresh after the interval went back to an hour')
  } finally {
    await stopQuietly(tunnel, stun)
  }
})

test('stunServers entries and stunTimeoutMs are validated; [] turns discovery off', { timeout: 20000 }, async () => {
  const cases = [
    [{ stunServers: ['stun.example.net:3478', 'host:0'] }, /^stunServers\[1\]: "host:0": the port must be from 1 to 65535/],
    [{ stunServers: ['[::1'] }, /^stunServers\[0\]: /],
    [{ stunServers: 'stun.example.net' }, /^stunServers: must be an array of strings/],
    [{ stunTimeoutMs: 0 }, /^stunTimeoutMs: must be an integer from 1 to 60000/],
  ]
  for (const [extra, message] of cases) {
    const edge = new RemoteIngressEdge()
    try {
      await assert.rejects(edge.start(edgeConfig(1, EDGE_ID, SECRET, extra)), (err) => err.code === 'ERR_INVALID_CONFIG' && message.test(err.message))
      assert.equal(edge.running, false)
    } finally {
      await stopQuietly(edge)
    }
  }

  const stun = await startFakeStunServer(stunAnswers.mapped('203.0.113.9'))
  let tunnel
  try {
    // Positive control first: this server is asked when listed.
    tunnel = await startStunTunnel({ stunServers: [`127.0.0.1:${stun.port}`], stunIntervalSecs: 1 })
    await waitFor(() => tunnel.events.of('publicIpDiscovered').length === 1, { timeoutMs: 5000, what: 'publicIpDiscovered' })
    await tunnel.stop()
    const asked = stun.bindingRequests.length
    tunnel = await startStunTunnel({ stunServers: [], stunIntervalSecs: 1 })
    await quietWindow(1500)
    assert.equal(stun.bindingRequests.length, asked)
    assert.deepEqual(tunnel.events.of('publicIpDiscovered'), [])
    assert.deepEqual(tunnel.stunFailures(), [])
    assert.equal((await tunnel.edge.getStatus()).publicIp, null)
  } finally {
    await stopQuietly(tunnel, stun)
  }
})
