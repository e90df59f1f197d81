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
  eventLoopLag,
  findExecutable,
  GUARD_MS,
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
  withTimeout,
} from './helpers.mjs'

const EDGE_ID = 'stun-edge'

/**
 * A hub allowing one edge (with `stunIntervalSecs`) and that edge started with `stunServers`,
 * its events recorded from before start() so a quick discovery is not missed. Resolves once
 * both sides report the tunnel. `setStunInterval(secs)` changes the hub's entry live;
 * `applyStunInterval(secs, port)` changes it together with the listening ports (to [] or
 * [port], whichever they are not) and resolves with the time the edge reported those ports:
 * the edge takes the interval from the same CONFIG just before, so by then it is in force.
 */
async function startStunTunnel({ stunServers, stunIntervalSecs, ports = [], udpPorts = [], edgeOptions = {} }) {
  const entry = { id: EDGE_ID, secret: SECRET, listenPorts: ports, listenPortsUdp: udpPorts, stunIntervalSecs }
  const { hub, hubPort } = await startHub([entry])
  const edge = new RemoteIngressEdge()
  const events = recordEvents(edge, ['publicIpDiscovered', 'warning', 'tunnelConnected', 'tunnelDisconnected'])
  try {
    const connected = once(edge, 'tunnelConnected')
    const assigned = once(edge, 'portsAssigned')
    const hubSawEdge = once(hub, 'edgeConnected', GUARD_MS, (e) => e.edgeId === EDGE_ID)
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
    setStunInterval: (secs) => {
      entry.stunIntervalSecs = secs
      return hub.updateAllowedEdges([entry])
    },
    async applyStunInterval(secs, port) {
      const listenPorts = entry.listenPorts.length > 0 ? [] : [port]
      const applied = once(edge, 'portsUpdated', GUARD_MS, (e) => JSON.stringify(e.listenPorts) === JSON.stringify(listenPorts))
      Object.assign(entry, { stunIntervalSecs: secs, listenPorts })
      await hub.updateAllowedEdges([entry])
      await applied
      return Date.now()
    },
    stop: () => stopQuietly(edge, hub),
  }
}

/** Opens a TCP connection through the edge to an echo target; checks bytes pass; returns the target's record. */
async function echoThroughEdge(target, port, text = 'through the tunnel') {
  const client = await connect(port)
  try {
    const echoed = readBytes(client, Buffer.byteLength(text))
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

test('coturn on loopback: the edge discovers 127.0.0.1 once over several refreshes, and TCP PROXY headers carry it', { timeout: 60000, skip: skipCoturn }, async () => {
  assert.ok(turnserver, 'REMOTEINGRESS_REQUIRE_STUN=1 but turnserver (coturn) is not installed')
  let coturn, relay, target, tunnel
  try {
    coturn = await startCoturn(turnserver)
    // A transparent relay in front of coturn counts the edge's requests (coturn still sees
    // 127.0.0.1, the relay's address).
    relay = await startStunRelay(coturn.port)
    target = await startTarget(behaviours.echo)
    tunnel = await startStunTunnel({ stunServers: [`127.0.0.1:${relay.port}`], stunIntervalSecs: 1, ports: [target.port] })

    const discovered = await waitFor(() => tunnel.events.of('publicIpDiscovered')[0], { what: 'publicIpDiscovered' })
    assert.deepEqual(discovered, { ip: '127.0.0.1' })
    // The first round and at least two refreshes, one a second.
    const base = relay.forwarded
    await waitFor(() => relay.forwarded >= base + 2, { what: `two more STUN refreshes (relayed ${relay.forwarded})` })
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

test('an answer becomes publicIp and the destination of TCP (v1) and UDP (v2) headers; a changed one fires again', { timeout: 60000 }, async () => {
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
    await waitFor(() => tunnel.events.of('publicIpDiscovered').length === 1, { what: 'publicIpDiscovered' })
    assert.deepEqual(tunnel.events.of('publicIpDiscovered'), [{ ip: '203.0.113.7' }])
    assert.equal((await tunnel.edge.getStatus()).publicIp, '203.0.113.7')
    // One transaction, answered: one round, from one socket. (Its request is retransmitted, with
    // the same transaction id, only if the answer took over 0.5 s to be handled.)
    assert.equal(stun.rounds.length, 1)
    assert.ok(stun.bindingRequests.every((r) => r.from.port === stun.rounds[0].from.port), 'one socket per transaction')

    const record = await echoThroughEdge(target, target.port)
    assert.deepEqual(record.destination, { address: '203.0.113.7', port: target.port })
    assert.match(record.header, new RegExp(`^PROXY TCP4 127\\.0\\.0\\.1 203\\.0\\.113\\.7 \\d+ ${target.port}$`))

    client = await startUdpClient()
    const reply = await client.request(Buffer.from('datagram'), udpTarget.port)
    assert.equal(reply.toString(), 'datagram')
    const datagram = udpTarget.datagrams.find((d) => d.payload?.toString() === 'datagram')
    assert.equal(datagram.header.protocol, 'UDP4')
    assert.deepEqual(datagram.header.destination, { address: '203.0.113.7', port: udpTarget.port })
    assert.deepEqual(datagram.header.source, { address: '127.0.0.1', port: client.port })

    // The server now answers the way RFC 3489 servers do (MAPPED-ADDRESS only), with another
    // address; refreshes every second pick it up, once.
    stun.setAnswer(stunAnswers.mappedOnly('198.51.100.20'))
    await tunnel.setStunInterval(1)
    await waitFor(() => tunnel.events.of('publicIpDiscovered').length === 2, { what: 'a second publicIpDiscovered' })
    assert.deepEqual(tunnel.events.of('publicIpDiscovered')[1], { ip: '198.51.100.20' })
    // A round starts only once the one before it is over, so once two more have started, the
    // first of them has been answered with the same address.
    const after = stun.rounds.length
    await waitFor(() => stun.rounds.length >= after + 2, { what: 'two more refreshes' })
    assert.equal(tunnel.events.of('publicIpDiscovered').length, 2, 'an unchanged address fires nothing')
    const second = await echoThroughEdge(target, target.port, 'again')
    assert.equal(second.destination.address, '198.51.100.20')
    assert.deepEqual(tunnel.stunFailures(), [])
  } finally {
    await client?.close()
    await stopQuietly(tunnel, target, udpTarget, stun)
  }
})

test('a STUN server that never answers: the tunnel works at once, four requests go out, stunFailed, no publicIp; stop() is prompt', { timeout: 60000 }, async () => {
  const stun = await startFakeStunServer(stunAnswers.silent)
  const target = await startTarget(behaviours.echo)
  let tunnel
  try {
    // A round that waits 60 s for its answer (the longest stunTimeoutMs): bytes pass while it
    // waits, and stop() does not wait for it.
    tunnel = await startStunTunnel({
      stunServers: [`127.0.0.1:${stun.port}`],
      stunIntervalSecs: 3600,
      ports: [target.port],
      edgeOptions: { stunTimeoutMs: 60000 },
    })
    const record = await echoThroughEdge(target, target.port)
    assert.deepEqual(record.destination, { address: '127.0.0.2', port: target.port })
    await waitFor(() => stun.bindingRequests.length > 0, { what: 'the first Binding request' })
    assert.deepEqual(tunnel.stunFailures(), [], 'the tunnel carried bytes while STUN was waiting')
    // Stopped a moment into a 60 s round: a stop() that waited for the round would outlast the guard.
    await withTimeout(tunnel.edge.stop(), GUARD_MS, 'edge.stop() with a STUN round under way')
    await stun.flush() // every request sent before stop() resolved is counted now
    const count = stun.bindingRequests.length
    await quietWindow(1200) // past the next retransmit (0.5 s after the first request)
    assert.equal(stun.bindingRequests.length, count, 'no request after stop()')
    await tunnel.stop()

    // Default schedule: requests at 0, 0.5, 1.5 and 3.5 s, the same transaction, then give up at 5.5 s.
    const lag = eventLoopLag()
    const before = stun.bindingRequests.length
    tunnel = await startStunTunnel({ stunServers: [`127.0.0.1:${stun.port}`], stunIntervalSecs: 3600, ports: [target.port] })
    const [warning] = await waitFor(() => tunnel.stunFailures().length > 0 && tunnel.stunFailures(), { what: 'a stunFailed warning' })
    const reported = new RegExp(`127\\.0\\.0\\.1:${stun.port}: no answer to (\\d+) Binding request\\(s\\) within 5\\.5 s`).exec(warning.message)
    assert.ok(reported, warning.message)
    await stun.flush()
    const requests = stun.bindingRequests.slice(before)
    assert.equal(requests.length, Number(reported[1]), 'the server saw as many requests as the edge says it sent')
    // The fourth request is due 2 s before the deadline; only an edge whose timers ran that late
    // (seen here as this process stalling as long) may have had to skip it.
    if (lag.maxMs() < 2000) assert.equal(requests.length, 4, `requests sent (event loop stalled up to ${lag.maxMs().toFixed(0)} ms)`)
    for (const request of requests) {
      assert.ok(request.txid.equals(requests[0].txid), 'retransmits keep the transaction id')
      assert.equal(request.from.port, requests[0].from.port, 'retransmits come from the same socket')
    }
    // The RTO doubles. The server timestamps a request when its event loop gets to it, so a stall
    // can shorten the gap after a late-stamped one: the lower bounds allow for the worst stall
    // measured. How late is bounded by the count: every request went out within the 5.5 s.
    const slack = 100 + lag.maxMs()
    const gaps = requests.slice(1).map((r, i) => r.at - requests[i].at)
    gaps.forEach((gap, i) => assert.ok(gap >= 500 * 2 ** i - slack, `retransmit ${i + 1} after ${gap} ms (gaps ${gaps.join(', ')}, slack ${slack.toFixed(0)} ms)`))
    lag.stop()
    assert.deepEqual(tunnel.events.of('publicIpDiscovered'), [])
    assert.equal((await tunnel.edge.getStatus()).publicIp, null)
    await echoThroughEdge(target, target.port, 'still fine')
    assert.equal(tunnel.events.of('tunnelDisconnected').length, 0)
  } finally {
    await stopQuietly(tunnel, target, stun)
  }
})

test('hostile answers are ignored: junk, a truncated or foreign-transaction answer, a request, the wrong family, another port', { timeout: 60000 }, async () => {
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
  const lag = eventLoopLag()
  try {
    tunnel = await startStunTunnel({
      stunServers: [`127.0.0.1:${stun.port}`],
      stunIntervalSecs: 3600,
      ports: [target.port],
      edgeOptions: { stunTimeoutMs: 1200 },
    })
    await echoThroughEdge(target, target.port)
    const [warning] = await waitFor(() => tunnel.stunFailures().length > 0 && tunnel.stunFailures(), { what: 'a stunFailed warning' })
    const reported = /no answer to (\d+) Binding request\(s\) within 1\.2 s \(ignored a datagram: /.exec(warning.message)
    assert.ok(reported, warning.message)
    await stun.flush()
    assert.equal(stun.bindingRequests.length, Number(reported[1]), 'the server saw as many requests as the edge says it sent')
    // Requests at 0 and 0.5 s within 1.2 s; only an edge whose 0.5 s timer ran after the
    // deadline (seen here as this process stalling as long) may have sent just one.
    if (lag.maxMs() < 700) assert.equal(stun.bindingRequests.length, 2, 'requests at 0 and 0.5 s within 1.2 s')
    assert.deepEqual(tunnel.events.of('publicIpDiscovered'), [])
    assert.equal((await tunnel.edge.getStatus()).publicIp, null)
    const record = await echoThroughEdge(target, target.port, 'unaffected')
    assert.equal(record.destination.address, '127.0.0.2')

    // Positive control: the same server answering properly is believed.
    stun.setAnswer(stunAnswers.mapped('203.0.113.66'))
    await tunnel.setStunInterval(1)
    await waitFor(() => tunnel.events.of('publicIpDiscovered').length === 1, { what: 'publicIpDiscovered after a proper answer' })
    assert.deepEqual(tunnel.events.of('publicIpDiscovered'), [{ ip: '203.0.113.66' }])
  } finally {
    lag.stop()
    await stopQuietly(tunnel, target, stun)
  }
})

test('unreachable servers (a name that never resolves, a closed port) leave the tunnel alone; stunFailed again at the next interval', { timeout: 60000 }, async () => {
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
    const [first] = await waitFor(() => tunnel.stunFailures().length > 0 && tunnel.stunFailures(), { what: 'a stunFailed warning' })
    assert.match(first.message, /^no STUN server told this edge its public IP: stun\.invalid:3478: the name does not resolve; /)
    assert.match(first.message, new RegExp(`127\\.0\\.0\\.1:${closed}: refused`))
    // A retry a second later fails the same way.
    await waitFor(() => tunnel.stunFailures().length >= 2, { what: 'a second stunFailed warning' })
    assert.deepEqual(tunnel.events.of('publicIpDiscovered'), [])
    assert.equal((await tunnel.edge.getStatus()).connected, true)
    await echoThroughEdge(target, target.port, 'still carried')
  } finally {
    await stopQuietly(tunnel, target)
  }
})

test("the hub's stunIntervalSecs takes effect live: from one request an hour to one a second", { timeout: 60000 }, async () => {
  const stun = await startFakeStunServer(stunAnswers.mapped('203.0.113.9'))
  // Only listened on, to mark each interval change with a port change the edge reports.
  const spare = await startTarget(behaviours.echo)
  let tunnel
  try {
    tunnel = await startStunTunnel({ stunServers: [`127.0.0.1:${stun.port}`], stunIntervalSecs: 3600 })
    await waitFor(() => tunnel.events.of('publicIpDiscovered').length === 1, { what: 'publicIpDiscovered' })
    await quietWindow(1500) // the first round answered: no refresh within the hour
    assert.equal(stun.rounds.length, 1)

    const lag = eventLoopLag()
    const appliedAt = await tunnel.applyStunInterval(1, spare.port)
    await waitFor(() => stun.rounds.length >= 4, { what: `three refreshes (have ${stun.rounds.length - 1})` })
    const refreshes = stun.rounds.slice(1)
    // Already past the new interval since the last round: the first refresh starts as the edge
    // takes the change, not an interval later. Both moments are stamped by this event loop, so
    // its worst stall is the slack.
    const slack = lag.maxMs()
    assert.ok(refreshes[0].at - appliedAt < 1000 + slack, `first refresh ${refreshes[0].at - appliedAt} ms after the edge applied the change (slack ${slack.toFixed(0)} ms)`)
    // One a second, from the end of a round: never sooner (less any stall of the server's
    // stamps), and not much later.
    const gaps = refreshes.slice(1).map((r, i) => r.at - refreshes[i].at)
    for (const gap of gaps) assert.ok(gap >= 900 - slack && gap < 2500 + slack, `refreshes ${gaps.join(', ')} ms apart (slack ${slack.toFixed(0)} ms)`)
    lag.stop()
    assert.equal(tunnel.events.of('publicIpDiscovered').length, 1)

    // And back: a long interval stops the refreshes. A round the edge had already begun when the
    // change arrived may still show up (at once); none comes after it.
    const backAt = await tunnel.applyStunInterval(3600, spare.port)
    await stun.flush()
    const settled = stun.rounds.length
    await quietWindow(2500)
    const late = stun.rounds.slice(settled)
    assert.ok(late.length <= 1 && late.every((r) => r.at - backAt < 1000), `refreshes after the interval went back to an hour: ${late.map((r) => r.at - backAt).join(', ')} ms after the change`)
  } finally {
    await stopQuietly(tunnel, stun, spare)
  }
})

test('stunServers entries and stunTimeoutMs are validated; [] turns discovery off', { timeout: 60000 }, async () => {
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
    await waitFor(() => tunnel.events.of('publicIpDiscovered').length === 1, { what: 'publicIpDiscovered' })
    await tunnel.stop()
    await stun.flush() // a request sent before stop() resolved is counted now, not in the window below
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
