'use strict'
// Smoke test of an installed @serve.zone/remoteingress, meant for the arm64 build under
// qemu-user (scripts/test-arm64.js sets that up): run it with the working directory holding a
// node_modules with the package and its platform package.
//
// It must not start child processes: under qemu-user without binfmt a child would be an x64
// exec of an arm64 binary and fail. child_process is instrumented to prove nothing tried.
// Steps: load the package (and check which .node came in), encode and decode a token, start a
// hub (tunnelPort 0) and an edge (127.0.0.2, no STUN) from that token, send bytes through the
// edge to a small target on 127.0.0.1, check the PROXY v1 line and the bytes both ways, stop
// everything and let node exit 0 on its own.
const assert = require('node:assert/strict')
const childProcess = require('node:child_process')
const crypto = require('node:crypto')
const net = require('node:net')

const PACKAGE = '@serve.zone/remoteingress'
const EXPECTED_ARCH = process.env.SMOKE_EXPECT_ARCH || 'arm64'
const STEP_TIMEOUT_MS = 30_000
const PAYLOAD_BYTES = 256 * 1024

const spawned = []
for (const name of ['spawn', 'spawnSync', 'exec', 'execSync', 'execFile', 'execFileSync', 'fork']) {
  const original = childProcess[name]
  childProcess[name] = function (...args) {
    spawned.push(`${name} ${String(args[0])}`)
    return original.apply(this, args)
  }
}

const t0 = Date.now()
function step(message) {
  console.log(`[smoke ${((Date.now() - t0) / 1000).toFixed(1).padStart(5)} s] ${message}`)
}

function withTimeout(promise, what) {
  let timer
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${STEP_TIMEOUT_MS} ms: ${what}`)), STEP_TIMEOUT_MS)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}

/** Target on 127.0.0.1: records the PROXY line, echoes everything after it, ends when the client does. */
function startTarget(seen) {
  const server = net.createServer((socket) => {
    let buffered = Buffer.alloc(0)
    let header = null
    const body = []
    socket.on('data', (chunk) => {
      if (header !== null) {
        body.push(chunk)
        socket.write(chunk)
        return
      }
      buffered = Buffer.concat([buffered, chunk])
      const end = buffered.indexOf('\r\n')
      if (end < 0) return
      header = buffered.subarray(0, end + 2).toString('latin1')
      const rest = buffered.subarray(end + 2)
      if (rest.length) {
        body.push(rest)
        socket.write(rest)
      }
    })
    socket.on('end', () => {
      seen.push({ header, body: Buffer.concat(body) })
      socket.end()
    })
    socket.on('error', () => {})
  })
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => resolve(server))
  })
}

/** Client to the edge on 127.0.0.2: sends `payload`, half-closes, collects the echo. */
function roundTrip(port, payload) {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.2', port, localAddress: '127.0.0.1' }, () => socket.end(payload))
    const chunks = []
    socket.on('data', (chunk) => chunks.push(chunk))
    socket.on('end', () => resolve({ localPort: socket.localPort, echo: Buffer.concat(chunks) }))
    socket.on('error', reject)
  })
}

async function main() {
  step(`node ${process.version} on ${process.platform}-${process.arch}`)
  assert.equal(process.platform, 'linux')
  assert.equal(process.arch, EXPECTED_ARCH, `this smoke test expects ${EXPECTED_ARCH}`)

  const ri = require(PACKAGE)
  const addons = Object.keys(require.cache).filter((file) => file.endsWith('.node'))
  assert.equal(addons.length, 1, `one addon loaded: ${addons.join(', ')}`)
  const platformDir = `${PACKAGE}-linux-${EXPECTED_ARCH}-gnu`
  assert.ok(addons[0].includes(`/node_modules/${platformDir}/`), `the addon comes from ${platformDir}: ${addons[0]}`)
  step(`loaded ${addons[0].slice(addons[0].indexOf('node_modules/'))}`)

  const seen = []
  const target = await startTarget(seen)
  const port = target.address().port
  const hub = new ri.RemoteIngressHub()
  const edge = new ri.RemoteIngressEdge()
  const warnings = []
  hub.on('warning', (w) => warnings.push(`hub ${w.code}: ${w.message}`))
  edge.on('warning', (w) => warnings.push(`edge ${w.code}: ${w.message}`))
  try {
    await withTimeout(hub.start({ tunnelPort: 0, bindAddress: '127.0.0.1', targetHost: '127.0.0.1' }), 'hub.start')
    const { tunnelPort, certFingerprint } = await hub.getStatus()
    assert.ok(tunnelPort > 0)
    step(`hub listening on 127.0.0.1:${tunnelPort}, key ${certFingerprint}`)

    const secret = crypto.randomBytes(18).toString('base64url')
    const tokenData = { hubHost: '127.0.0.1', hubPort: tunnelPort, edgeId: 'smoke-edge', secret, hubFingerprint: certFingerprint }
    const token = ri.encodeConnectionToken(tokenData)
    assert.deepEqual(ri.decodeConnectionToken(token), tokenData)
    assert.throws(() => ri.decodeConnectionToken('not a token'), (err) => err.code === 'ERR_INVALID_TOKEN')
    step(`token round trip ok (${token.length} chars)`)

    await hub.updateAllowedEdges([{ id: 'smoke-edge', secret, listenPorts: [port] }])
    const assigned = withTimeout(new Promise((resolve) => edge.once('portsAssigned', resolve)), 'the edge to get its ports')
    await withTimeout(edge.start({ token, bindAddress: '127.0.0.2', stunServers: [] }), 'edge.start')
    const ports = await assigned
    assert.deepEqual(ports.listenPorts, [port])
    step(`edge connected (hub key pinned), listening on 127.0.0.2:${port}`)

    const payload = crypto.randomBytes(PAYLOAD_BYTES)
    const { localPort, echo } = await withTimeout(roundTrip(port, payload), 'a round trip through the tunnel')
    await withTimeout(
      (async () => {
        while (seen.length === 0) await new Promise((resolve) => setTimeout(resolve, 10))
      })(),
      'the target to see the connection end',
    )
    const expectedHeader = `PROXY TCP4 127.0.0.1 127.0.0.2 ${localPort} ${port}\r\n`
    assert.equal(seen[0].header, expectedHeader, 'PROXY v1 line')
    assert.ok(seen[0].body.equals(payload), `the target got the ${PAYLOAD_BYTES} bytes sent (got ${seen[0].body.length})`)
    assert.ok(echo.equals(payload), `the client got the ${PAYLOAD_BYTES} bytes back (got ${echo.length})`)
    step(`${PAYLOAD_BYTES} bytes through the tunnel and back; target saw ${JSON.stringify(expectedHeader.trim())}`)

    const status = await hub.getStatus()
    assert.equal(status.connectedEdges.length, 1)
    assert.equal(status.connectedEdges[0].edgeId, 'smoke-edge')
    assert.ok(status.connectedEdges[0].bytesIn >= PAYLOAD_BYTES, `hub counted ${status.connectedEdges[0].bytesIn} bytes in`)
  } finally {
    await withTimeout(edge.stop(), 'edge.stop')
    await withTimeout(hub.stop(), 'hub.stop')
    target.close()
  }
  assert.equal(hub.running, false)
  assert.equal(edge.running, false)
  assert.deepEqual(spawned, [], 'no child processes were started')
  if (warnings.length) step(`warnings: ${warnings.join('; ')}`)
  step('hub and edge stopped; node should now exit 0 by itself')
}

// A last resort that does not keep the process alive: a hang past this fails loudly.
setTimeout(() => {
  console.error(`[smoke] FAILED: still running after ${(3 * STEP_TIMEOUT_MS) / 1000} s (did stop() leave something alive?)`)
  process.exit(1)
}, 3 * STEP_TIMEOUT_MS + 30_000).unref()

main().then(
  () => {
    process.exitCode = 0
  },
  (err) => {
    console.error(`[smoke] FAILED: ${err.stack || err}`)
    process.exitCode = 1
  },
)
