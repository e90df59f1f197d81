// Starting and stopping: hub.stop() with live connections, and whether a running hub/edge keeps
// a Node process alive (it must while running, and must not after stop()).
import test from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import net from 'node:net'
import os from 'node:os'
import {
  behaviours,
  connect,
  edgeConfig,
  GUARD_MS,
  metric,
  once,
  PACKAGE_ROOT,
  probeConnect,
  readBytes,
  recordEvents,
  RemoteIngressEdge,
  RemoteIngressHub,
  SECRET,
  socketEnding,
  startOnPort,
  startTarget,
  startTunnel,
  stopQuietly,
  waitFor,
  withTimeout,
} from './helpers.mjs'

/** Resolves when the socket is finished for good: 'close' (after end or error). */
function closed(socket) {
  return new Promise((resolve) => {
    if (socket.destroyed && socket.closed) resolve()
    else socket.once('close', resolve)
  })
}

test('hub.stop() with open connections resolves, closes the clients and disconnects the edge', { timeout: 60000 }, async () => {
  const target = await startTarget(behaviours.echo)
  let tunnel
  const clients = []
  try {
    tunnel = await startTunnel({ ports: [target.port], edgeId: 'stopper' })
    for (let i = 0; i < 5; i++) {
      const client = await connect(target.port)
      client.on('error', () => {}) // a reset is an acceptable way to be closed
      clients.push(client)
      const echoed = readBytes(client, 6)
      client.write(`conn-${i}`.padEnd(6, '.').slice(0, 6))
      await echoed
    }
    assert.equal((await tunnel.hub.getStatus()).connectedEdges[0].activeStreams, 5)

    const edgeDisconnected = once(tunnel.edge, 'tunnelDisconnected')
    const hubEvents = recordEvents(tunnel.hub, ['edgeDisconnected', 'streamClosed'])
    await withTimeout(tunnel.hub.stop(), GUARD_MS, 'hub.stop() to resolve')
    assert.equal(tunnel.hub.running, false, 'hub.running is false after stop()')
    const stopped = await tunnel.hub.getStatus()
    assert.equal(stopped.running, false)
    assert.deepEqual(stopped.connectedEdges, [])
    await waitFor(() => hubEvents.of('streamClosed').length === 5 && hubEvents.of('edgeDisconnected').length === 1, {
      what: "hub 'streamClosed' x5 and 'edgeDisconnected' during stop",
    })
    assert.equal(hubEvents.of('edgeDisconnected')[0].edgeId, 'stopper')
    await withTimeout(Promise.all(clients.map(closed)), GUARD_MS, 'every client socket to be closed')
    const { reason } = await edgeDisconnected
    assert.equal(typeof reason, 'string')
    assert.ok(reason.length > 0, 'tunnelDisconnected carries a reason')
    assert.equal(tunnel.edge.running, true, 'the edge keeps running (and retrying) without its hub')
    const edgeStatus = await tunnel.edge.getStatus()
    assert.equal(edgeStatus.connected, false)
    assert.equal(edgeStatus.activeStreams, 0)
  } finally {
    for (const client of clients) client.destroy()
    await stopQuietly(tunnel, target)
  }
})

test('the edge reconnects when its hub comes back on the same port', { timeout: 60000 }, async () => {
  const target = await startTarget(behaviours.echo)
  let tunnel, secondHub
  try {
    // connectWaitMs 0: a client that finds no tunnel is reset at once instead of waiting for one.
    tunnel = await startTunnel({ ports: [target.port], edgeId: 'comeback', edgeOptions: { connectWaitMs: 0 } })
    const disconnected = once(tunnel.edge, 'tunnelDisconnected')
    await tunnel.hub.stop()
    await disconnected
    // Without a tunnel the edge may keep its listeners (they outlive reconnects), but a client
    // must be turned away at once, never left hanging.
    let leftHanging = false
    const turnedAway = await new Promise((resolve) => {
      const probe = net.connect({ port: target.port, host: '127.0.0.2' })
      const received = []
      probe.on('data', (chunk) => received.push(chunk))
      probe.on('error', () => {})
      probe.once('close', () => resolve(Buffer.concat(received)))
      setTimeout(() => {
        leftHanging = true
        probe.destroy(new Error('still open'))
      }, GUARD_MS).unref()
    })
    assert.equal(leftHanging, false, 'the client was left hanging while the hub is down')
    assert.equal(turnedAway.length, 0, 'nothing is served while the hub is down')
    assert.equal(target.connections.length, 0, 'nothing reached the target')

    const reconnected = once(tunnel.edge, 'tunnelConnected')
    secondHub = new RemoteIngressHub()
    await startOnPort(secondHub, { tunnelPort: tunnel.hubPort, bindAddress: '127.0.0.1' })
    await secondHub.updateAllowedEdges([{ id: 'comeback', secret: SECRET, listenPorts: [target.port] }])
    await reconnected
    await waitFor(async () => (await probeConnect(target.port)) === 'connected', { what: 'the edge to listen again' })
    const client = await connect(target.port)
    const echoed = readBytes(client, 4)
    client.write('back')
    assert.equal((await echoed).toString(), 'back')
    client.destroy()
  } finally {
    await stopQuietly(tunnel, secondHub, target)
  }
})

test('while its hub is down, clients wait for the tunnel (64 per address; the next is reset) and are carried once it is back', { timeout: 90000 }, async () => {
  const target = await startTarget(behaviours.echo)
  let tunnel, secondHub
  const clients = []
  try {
    tunnel = await startTunnel({ ports: [target.port], edgeId: 'parked', edgeOptions: { connectWaitMs: 60000 } })
    const { edge } = tunnel
    const disconnected = once(edge, 'tunnelDisconnected')
    await tunnel.hub.stop()
    await disconnected
    const waiting = async () => (await edge.getStatus()).waitingConnections

    // 64 clients from one address wait; each sends its request at once.
    const open = (localAddress, i) => {
      const client = net.connect({ port: target.port, host: '127.0.0.2', localAddress })
      client.on('error', () => {})
      clients.push(client)
      const reply = readBytes(client, `parked ${i}`.length, 60000)
      reply.catch(() => {})
      client.write(`parked ${i}`)
      return { client, reply }
    }
    const parked = []
    for (let i = 0; i < 64; i++) parked.push(open('127.0.0.9', i))
    await waitFor(async () => (await waiting()) === 64, { what: '64 clients waiting' })
    // The 65th from the same address is reset at once; another address still gets a place.
    const extra = open('127.0.0.9', 64)
    await assert.rejects(extra.reply, 'the 65th client from one address is reset')
    parked.push(open('127.0.0.10', 65))
    await waitFor(async () => (await waiting()) === 65, { what: 'the client from another address waiting' })
    const metrics = await edge.getMetrics()
    assert.equal(metric(metrics, 'remoteingress_edge_connections_waiting'), 65)
    assert.equal(metric(metrics, 'remoteingress_edge_connections_reset_total{reason="noWait"}'), 1)
    assert.equal(target.connections.length, 0, 'nothing reached the target while the hub was down')

    const reconnected = once(edge, 'tunnelConnected')
    secondHub = new RemoteIngressHub()
    await startOnPort(secondHub, { tunnelPort: tunnel.hubPort, bindAddress: '127.0.0.1' })
    await secondHub.updateAllowedEdges([{ id: 'parked', secret: SECRET, listenPorts: [target.port] }])
    await reconnected
    // Every waiting client is carried, with its own address in the PROXY header.
    const replies = await Promise.all(parked.map(({ reply }) => reply))
    assert.deepEqual(
      replies.map((r) => r.toString()),
      parked.map((_, i) => `parked ${i === 64 ? 65 : i}`),
    )
    await waitFor(() => target.connections.length === 65, { what: '65 connections at the target' })
    const sources = target.connections.map((c) => c.source?.address).sort()
    assert.deepEqual(sources, ['127.0.0.10', ...Array(64).fill('127.0.0.9')].sort())
    assert.equal(await waiting(), 0)
    const after = await edge.getMetrics()
    assert.equal(metric(after, 'remoteingress_edge_connections_reset_total{reason="waitTimedOut"}'), 0)
  } finally {
    for (const client of clients) client.destroy()
    await stopQuietly(tunnel, secondHub, target)
  }
})

test('a client that waits connectWaitMs without a tunnel is reset; with connectWaitMs 0 at once', { timeout: 60000 }, async () => {
  const target = await startTarget(behaviours.echo)
  let tunnel
  try {
    tunnel = await startTunnel({ ports: [target.port], edgeId: 'no-comeback', edgeOptions: { connectWaitMs: 2000 } })
    const { edge } = tunnel
    const disconnected = once(edge, 'tunnelDisconnected')
    await tunnel.hub.stop()
    await disconnected
    const client = net.connect({ port: target.port, host: '127.0.0.2' })
    const ending = socketEnding(client)
    await waitFor(async () => (await edge.getStatus()).waitingConnections === 1, { what: 'the client waiting' })
    assert.deepEqual(await ending, { how: 'reset', bytes: 0 })
    assert.equal((await edge.getStatus()).waitingConnections, 0)
    assert.equal(metric(await edge.getMetrics(), 'remoteingress_edge_connections_reset_total{reason="waitTimedOut"}'), 1)
    assert.equal(target.connections.length, 0)
  } finally {
    await stopQuietly(tunnel, target)
  }
})

test('a stopped hub and a stopped edge can be started again', { timeout: 60000 }, async () => {
  const target = await startTarget(behaviours.echo)
  let tunnel
  try {
    tunnel = await startTunnel({ ports: [target.port], edgeId: 'again' })
    const { hub, edge, hubPort } = tunnel
    await hub.stop()
    await edge.stop()
    assert.equal(hub.running, false)
    assert.equal(edge.running, false)

    await startOnPort(hub, { tunnelPort: hubPort, bindAddress: '127.0.0.1' })
    await hub.updateAllowedEdges([{ id: 'again', secret: SECRET, listenPorts: [target.port] }])
    const connected = once(edge, 'tunnelConnected')
    await edge.start(edgeConfig(hubPort, 'again'))
    await connected
    await waitFor(async () => (await probeConnect(target.port)) === 'connected', { what: 'the edge listener after restart' })
    const client = await connect(target.port)
    const echoed = readBytes(client, 5)
    client.write('again')
    assert.equal((await echoed).toString(), 'again')
    client.destroy()
  } finally {
    await stopQuietly(tunnel, target)
  }
})

test('an edge whose hub is down starts, warns, and stops cleanly', { timeout: 60000 }, async () => {
  const placeholder = await startTarget(behaviours.echo)
  const deadPort = placeholder.port
  await placeholder.close()
  const edge = new RemoteIngressEdge()
  try {
    const warned = once(edge, 'warning', GUARD_MS, (w) => w.code === 'connectFailed')
    // QUIC cannot tell a closed port from a slow hub: it gives up after connectTimeoutMs.
    await withTimeout(edge.start(edgeConfig(deadPort, 'orphan', undefined, { connectTimeoutMs: 1000 })), GUARD_MS, 'edge.start() with no hub')
    assert.equal(edge.running, true)
    await warned
    const status = await edge.getStatus()
    assert.equal(status.connected, false)
    assert.deepEqual(status.listenPorts, [])
    await withTimeout(edge.stop(), GUARD_MS, 'edge.stop()')
    assert.equal(edge.running, false)
  } finally {
    await stopQuietly(edge)
  }
})

test('edge.stop() closes its listeners and tunneled connections', { timeout: 60000 }, async () => {
  const target = await startTarget(behaviours.echo)
  let tunnel, client
  try {
    tunnel = await startTunnel({ ports: [target.port], edgeId: 'edge-stop' })
    client = await connect(target.port)
    client.on('error', () => {})
    const echoed = readBytes(client, 2)
    client.write('hi')
    await echoed
    const hubSawIt = once(tunnel.hub, 'edgeDisconnected')
    await withTimeout(tunnel.edge.stop(), GUARD_MS, 'edge.stop()')
    assert.equal(tunnel.edge.running, false)
    await withTimeout(closed(client), GUARD_MS, 'the client socket to close')
    assert.equal(await probeConnect(target.port), 'ECONNREFUSED')
    assert.equal((await hubSawIt).edgeId, 'edge-stop')
  } finally {
    client?.destroy()
    await stopQuietly(tunnel, target)
  }
})

/**
 * Runs `node -e script` (with `env` as its environment when given); returns { child, output(),
 * exited } with exited resolving to {code, signal}.
 */
function runNode(script, env = process.env) {
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'pipe'], env })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (chunk) => (stdout += chunk))
  child.stderr.on('data', (chunk) => (stderr += chunk))
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })))
  return { child, exited, output: () => ({ stdout, stderr }) }
}

const PRELUDE = `
const net = require('node:net')
const { RemoteIngressHub, RemoteIngressEdge } = require(${JSON.stringify(PACKAGE_ROOT)})
const freePort = () => new Promise((resolve) => {
  const server = net.createServer().listen(0, '127.0.0.1', () => {
    const { port } = server.address()
    server.close(() => resolve(port))
  })
})
`

test('a process that starts and stops a hub and an edge exits on its own with code 0', { timeout: 60000 }, async () => {
  const script = `${PRELUDE}
;(async () => {
  const port = await freePort()
  const hub = new RemoteIngressHub()
  await hub.start({ tunnelPort: 0, bindAddress: '127.0.0.1' })
  await hub.updateAllowedEdges([{ id: 'child', secret: 'child-secret', listenPorts: [port] }])
  const { tunnelPort } = await hub.getStatus()
  const edge = new RemoteIngressEdge()
  const connected = new Promise((resolve) => edge.once('tunnelConnected', resolve))
  const assigned = new Promise((resolve) => edge.once('portsAssigned', resolve))
  await edge.start({ hubHost: '127.0.0.1', hubPort: tunnelPort, edgeId: 'child', secret: 'child-secret',
    bindAddress: '127.0.0.2', stunServers: [], reconnectMinMs: 50, reconnectMaxMs: 200 })
  await Promise.all([connected, assigned])
  await edge.stop()
  await hub.stop()
  console.log('stopped')
})().catch((err) => { console.error(err); process.exit(2) })
`
  const run = runNode(script)
  try {
    // A process kept alive after stop() never exits: the bound only stops the wait for it.
    const { code, signal } = await withTimeout(run.exited, 30000, 'the child to exit by itself after stop()')
    const { stdout, stderr } = run.output()
    assert.equal(stdout.trim(), 'stopped', `stderr: ${stderr}`)
    assert.equal(signal, null)
    assert.equal(code, 0, `stderr: ${stderr}`)
  } finally {
    if (run.child.exitCode === null && run.child.signalCode === null) run.child.kill('SIGKILL')
  }
})

test('the runtime has a worker thread per two cores, or as many as TOKIO_WORKER_THREADS asks for', { timeout: 60000 }, async () => {
  const script = `${PRELUDE}
const fs = require('node:fs')
;(async () => {
  const hub = new RemoteIngressHub()
  await hub.start({ tunnelPort: 0, bindAddress: '127.0.0.1' })
  const names = fs.readdirSync('/proc/self/task').map((task) => fs.readFileSync('/proc/self/task/' + task + '/comm', 'utf8').trim())
  await hub.stop()
  console.log(names.filter((name) => name === 'tokio-rt-worker').length)
})().catch((err) => { console.error(err); process.exit(2) })
`
  const { TOKIO_WORKER_THREADS: _, ...withoutChoice } = process.env
  const cases = [
    { env: withoutChoice, workers: Math.max(1, Math.ceil(os.availableParallelism() / 2)) },
    { env: { ...withoutChoice, TOKIO_WORKER_THREADS: '3' }, workers: 3 },
  ]
  for (const { env, workers } of cases) {
    const run = runNode(script, env)
    try {
      const { code } = await withTimeout(run.exited, 30000, 'the child to report its worker threads')
      const { stdout, stderr } = run.output()
      assert.equal(code, 0, `stderr: ${stderr}`)
      assert.equal(Number(stdout.trim()), workers, `TOKIO_WORKER_THREADS=${env.TOKIO_WORKER_THREADS}`)
    } finally {
      if (run.child.exitCode === null && run.child.signalCode === null) run.child.kill('SIGKILL')
    }
  }
})

for (const what of ['hub', 'edge']) {
  test(`a process with a running ${what} that is never stopped stays alive`, { timeout: 60000 }, async () => {
    const startIt =
      what === 'hub'
        ? `await new RemoteIngressHub().start({ tunnelPort: 0, bindAddress: '127.0.0.1' })`
        : // An edge whose hub is not there: it keeps retrying, and must keep the process alive.
          `await new RemoteIngressEdge().start({ hubHost: '127.0.0.1', hubPort: await freePort(), edgeId: 'lonely',
             secret: 's', bindAddress: '127.0.0.2', stunServers: [], reconnectMinMs: 50, reconnectMaxMs: 200 })`
    // An unref'd timer keeps nothing alive: it fires only in a process that something else
    // keeps alive, so the line it prints proves the process outlived its 'started' by 1.5 s
    // (more on a slow machine), with no window for the test to time.
    const script = `${PRELUDE}
;(async () => {
  ${startIt}
  console.log('started')
  setTimeout(() => console.log('still alive'), 1500).unref()
})().catch((err) => { console.error(err); process.exit(2) })
`
    const run = runNode(script)
    try {
      const exitedEarly = run.exited.then((how) => {
        throw new Error(`the child exited (${JSON.stringify(how)}) instead of staying alive: ${JSON.stringify(run.output())}`)
      })
      exitedEarly.catch(() => {})
      await Promise.race([
        waitFor(() => run.output().stdout.includes('still alive'), { what: "the child's unref'd timer to fire" }),
        exitedEarly,
      ])
      assert.equal(run.output().stdout, 'started\nstill alive\n', `child output: ${JSON.stringify(run.output())}`)
      assert.equal(run.child.exitCode, null, 'still running after the timer')
      assert.doesNotThrow(() => process.kill(run.child.pid, 0), 'the child is alive')
    } finally {
      if (run.child.exitCode === null && run.child.signalCode === null) run.child.kill('SIGKILL')
      await withTimeout(run.exited, GUARD_MS, 'the killed child to exit').catch(() => {})
    }
  })
}
