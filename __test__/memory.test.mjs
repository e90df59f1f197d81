// Memory follows flow control: a client that never reads costs the hub and the edge about one
// window, however much its target tries to send. Hub and edge run in processes of their own so
// each one's resident memory can be read.
import test from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import readline from 'node:readline'
import { spawn } from 'node:child_process'
import {
  connect,
  edgeConfig,
  GUARD_MS,
  PACKAGE_ROOT,
  SECRET,
  TEST_TRANSPORT,
  waitFor,
  withTimeout,
} from './helpers.mjs'

const MiB = 1024 * 1024
const OFFERED = 1024 * MiB
/** Growth allowed per process: the 4 MiB stream window plus allocator slack, far below 1 GiB. */
const RSS_GROWTH_LIMIT = 48 * MiB

const rssOf = (pid) => Number(/VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))[1]) * 1024

/** A fixture process; resolves once it printed a line matching `until`. */
function startFixture(script, envName, config, until) {
  const child = spawn(process.execPath, [path.join(PACKAGE_ROOT, '__test__', 'fixtures', script)], {
    env: { ...process.env, [envName]: JSON.stringify(config) },
    stdio: ['pipe', 'pipe', 'inherit'],
  })
  const lines = readline.createInterface({ input: child.stdout })
  const exited = new Promise((resolve) => child.once('exit', resolve))
  const ready = new Promise((resolve, reject) => {
    lines.on('line', (line) => {
      const message = JSON.parse(line)
      if (message.type === 'failed') reject(new Error(`${script} failed: ${line}`))
      if (until(message)) resolve(message)
    })
    child.once('exit', (code) => reject(new Error(`${script} exited with ${code}`)))
  })
  ready.catch(() => {})
  return { child, ready, stop: async () => { if (child.exitCode === null) child.kill('SIGTERM'); await exited } }
}

/** A target that offers `OFFERED` bytes to each connection, as fast as the tunnel takes them. */
async function startFirehose() {
  const offered = { written: 0 }
  const sockets = new Set()
  const server = net.createServer((socket) => {
    sockets.add(socket)
    socket.on('error', () => {})
    socket.on('close', () => sockets.delete(socket))
    const chunk = Buffer.alloc(MiB, 0x5a)
    const pump = () => {
      while (offered.written < OFFERED && !socket.destroyed) {
        offered.written += chunk.length
        if (!socket.write(chunk)) return socket.once('drain', pump)
      }
    }
    // The hub's PROXY line arrives first; the target does not care what it says.
    socket.once('data', pump)
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    port: server.address().port,
    offered,
    stop: () => new Promise((resolve) => { for (const s of sockets) s.destroy(); server.close(resolve) }),
  }
}

test('a client that never reads while its target offers 1 GiB costs hub and edge about one window', { timeout: 180000 }, async (t) => {
  const target = await startFirehose()
  const fixtures = []
  let client
  try {
    const hub = startFixture('hub-process.mjs', 'REMOTEINGRESS_TEST_HUB', {
      start: { tunnelPort: 0, bindAddress: '127.0.0.1', targetHost: '127.0.0.1' },
      edges: [{ id: 'mem', secret: SECRET, listenPorts: [target.port] }],
    }, (m) => m.type === 'ready')
    fixtures.push(hub)
    const { port: hubPort, pid: hubPid } = await withTimeout(hub.ready, GUARD_MS, 'the hub process')
    const edge = startFixture('edge-process.mjs', 'REMOTEINGRESS_TEST_EDGE', { start: edgeConfig(hubPort, 'mem') },
      (m) => m.type === 'event' && m.event === 'portsAssigned')
    fixtures.push(edge)
    await withTimeout(edge.ready, GUARD_MS, 'the edge to be connected')
    const edgePid = edge.child.pid
    const before = { hub: rssOf(hubPid), edge: rssOf(edgePid) }

    client = await connect(target.port)
    client.pause() // never reads
    client.write('hello') // the first bytes make the target start
    // Wait until the target can hand over no more: backpressure reached it through the tunnel.
    let last = -1
    let stableSince = Date.now()
    await waitFor(() => {
      if (target.offered.written !== last) {
        last = target.offered.written
        stableSince = Date.now()
      }
      return last > 0 && Date.now() - stableSince > 1500
    }, { timeoutMs: 60000, intervalMs: 100, what: 'the target to be held back' })

    const after = { hub: rssOf(hubPid), edge: rssOf(edgePid) }
    const growth = { hub: after.hub - before.hub, edge: after.edge - before.edge }
    t.diagnostic(`[${TEST_TRANSPORT}] target handed over ${(target.offered.written / MiB).toFixed(0)} MiB of 1024; RSS growth hub ${(growth.hub / MiB).toFixed(1)} MiB, edge ${(growth.edge / MiB).toFixed(1)} MiB`)
    assert.ok(target.offered.written < 128 * MiB, `the target was held back early, not after ${target.offered.written / MiB} MiB`)
    assert.ok(growth.hub < RSS_GROWTH_LIMIT, `hub RSS grew ${growth.hub / MiB} MiB`)
    assert.ok(growth.edge < RSS_GROWTH_LIMIT, `edge RSS grew ${growth.edge / MiB} MiB`)

    // And the bytes are all there once the client reads.
    let received = 0
    client.on('data', (chunk) => { received += chunk.length })
    client.resume()
    await waitFor(() => received >= 64 * MiB, { timeoutMs: 60000, what: '64 MiB to reach the client once it reads' })
  } finally {
    client?.destroy()
    for (const fixture of fixtures.reverse()) await withTimeout(fixture.stop(), GUARD_MS, 'a fixture to stop')
    await target.stop()
  }
})
