// transport: tcpTls only (bad configuration is rejected before anything connects)
// Bad configuration is rejected up front with a coded Error that names the field.
import test from 'node:test'
import assert from 'node:assert/strict'
import net from 'node:net'
import { edgeConfig, remoteingress, RemoteIngressEdge, RemoteIngressHub, SECRET, startHub, stopQuietly, withTimeout } from './helpers.mjs'

/** Asserts `promise` rejects with an Error carrying `code` and a message matching `mentions`. */
async function assertRejectsWith(promise, code, mentions) {
  await assert.rejects(withTimeout(promise, 10000, 'the promise to settle'), (err) => {
    assert.ok(err instanceof Error, `an Error, got ${err}`)
    assert.equal(err.code, code, `code for message: ${err.message}`)
    assert.match(err.message, mentions)
    return true
  })
}

const badHubConfigs = [
  { name: 'tunnelPort -1', config: { tunnelPort: -1, bindAddress: '127.0.0.1' }, field: /tunnelPort/ },
  { name: "tunnelPort 'x'", config: { tunnelPort: 'x', bindAddress: '127.0.0.1' }, field: /tunnelPort/ },
  { name: "proxyProtocol 'v9'", config: { tunnelPort: 0, bindAddress: '127.0.0.1', proxyProtocol: 'v9' }, field: /proxyProtocol/ },
  { name: "targetHost ''", config: { tunnelPort: 0, bindAddress: '127.0.0.1', targetHost: '' }, field: /targetHost/ },
  { name: 'an unknown key', config: { tunnelPort: 0, bindAddress: '127.0.0.1', tunnelPrt: 1 }, field: /tunnelPrt/ },
  { name: 'limits.maxEdges 0', config: { tunnelPort: 0, bindAddress: '127.0.0.1', limits: { maxEdges: 0 } }, field: /limits\.maxEdges/ },
  { name: 'an unknown limit', config: { tunnelPort: 0, bindAddress: '127.0.0.1', limits: { maxFrameSize: 1 } }, field: /limits\.maxFrameSize/ },
  { name: 'limits.tunnelBufferBytes under 1 MiB', config: { tunnelPort: 0, bindAddress: '127.0.0.1', limits: { tunnelBufferBytes: 65536 } }, field: /limits\.tunnelBufferBytes/ },
  { name: "quic 'no'", config: { tunnelPort: 0, bindAddress: '127.0.0.1', quic: 'no' }, field: /quic/ },
]

for (const { name, config, field } of badHubConfigs) {
  test(`hub.start rejects ${name} with ERR_INVALID_CONFIG`, { timeout: 15000 }, async () => {
    const hub = new RemoteIngressHub()
    try {
      await assertRejectsWith(hub.start(config), 'ERR_INVALID_CONFIG', field)
      assert.equal(hub.running, false)
    } finally {
      await stopQuietly(hub)
    }
  })
}

const validEdge = edgeConfig(1, 'edge-1')
const without = (key) => Object.fromEntries(Object.entries(validEdge).filter(([k]) => k !== key))
const badEdgeConfigs = [
  { name: 'missing hubHost', config: without('hubHost'), field: /hubHost/ },
  { name: 'hubPort 0', config: { ...validEdge, hubPort: 0 }, field: /hubPort/ },
  { name: 'an edgeId with a space', config: { ...validEdge, edgeId: 'edge one' }, field: /edgeId/ },
  { name: "transportMode 'bogus'", config: { ...validEdge, transportMode: 'bogus' }, field: /transportMode/ },
  { name: "hubFingerprint 'abc'", config: { ...validEdge, hubFingerprint: 'abc' }, field: /hubFingerprint/ },
  { name: "bindAddress 'nope'", config: { ...validEdge, bindAddress: 'nope' }, field: /bindAddress/ },
  { name: 'tunnelBufferBytes over 2 GiB', config: { ...validEdge, tunnelBufferBytes: 2 ** 31 + 1 }, field: /tunnelBufferBytes/ },
  {
    name: 'a token together with a secret',
    config: { token: 'eyJoIjoiMTI3LjAuMC4xIiwicCI6MSwiZSI6ImUiLCJzIjoicyJ9', secret: SECRET, stunServers: [] },
    field: /secret|token/,
  },
]

for (const { name, config, field } of badEdgeConfigs) {
  test(`edge.start rejects ${name} with ERR_INVALID_CONFIG`, { timeout: 15000 }, async () => {
    const edge = new RemoteIngressEdge()
    try {
      await assertRejectsWith(edge.start(config), 'ERR_INVALID_CONFIG', field)
      assert.equal(edge.running, false)
    } finally {
      await stopQuietly(edge)
    }
  })
}

test('updateAllowedEdges rejects a duplicate id, port 0 and a non-array', { timeout: 15000 }, async () => {
  const { hub } = await startHub()
  try {
    await assertRejectsWith(
      hub.updateAllowedEdges([
        { id: 'twin', secret: SECRET, listenPorts: [1000] },
        { id: 'twin', secret: SECRET, listenPorts: [1001] },
      ]),
      'ERR_INVALID_CONFIG',
      /twin|\bid\b/,
    )
    await assertRejectsWith(
      hub.updateAllowedEdges([{ id: 'zero', secret: SECRET, listenPorts: [0] }]),
      'ERR_INVALID_CONFIG',
      /listenPorts/,
    )
    await assertRejectsWith(hub.updateAllowedEdges({ id: 'x', secret: SECRET }), 'ERR_INVALID_CONFIG', /edges|array/i)
    assert.equal(hub.running, true, 'a rejected update leaves the hub running')
  } finally {
    await stopQuietly(hub)
  }
})

test('starting twice rejects with ERR_ALREADY_RUNNING', { timeout: 15000 }, async () => {
  const { hub, hubPort } = await startHub()
  const edge = new RemoteIngressEdge()
  try {
    await assertRejectsWith(hub.start({ tunnelPort: 0, bindAddress: '127.0.0.1' }), 'ERR_ALREADY_RUNNING', /running/)
    assert.equal(hub.running, true)
    await edge.start(edgeConfig(hubPort, 'twice'))
    await assertRejectsWith(edge.start(edgeConfig(hubPort, 'twice')), 'ERR_ALREADY_RUNNING', /running/)
    assert.equal(edge.running, true)
  } finally {
    await stopQuietly(edge, hub)
  }
})

test('a hub on a port already in use rejects with ERR_LISTEN', { timeout: 15000 }, async () => {
  const blocker = net.createServer()
  await new Promise((resolve, reject) => {
    blocker.once('error', reject)
    blocker.listen(0, '127.0.0.1', resolve)
  })
  const port = blocker.address().port
  const hub = new RemoteIngressHub()
  try {
    await assertRejectsWith(hub.start({ tunnelPort: port, bindAddress: '127.0.0.1' }), 'ERR_LISTEN', new RegExp(`tunnelPort|${port}`))
    assert.equal(hub.running, false)
  } finally {
    await stopQuietly(hub)
    await new Promise((resolve) => blocker.close(resolve))
  }
})

/** Asserts `err` is the Error the native side made: code set there, message and stack its own. */
function assertNativeError(err, code, message) {
  assert.ok(err instanceof Error, `an Error, got ${err}`)
  assert.equal(Object.getPrototypeOf(err), Error.prototype)
  assert.equal(err.code, code)
  assert.equal(err.message, message)
  // Its stack starts with its own message (the native "[CODE] message" is gone) and went
  // through no facade function that re-made it.
  assert.equal(err.stack.split('\n')[0], `Error: ${message}`)
  assert.doesNotMatch(err.stack, /translateError|callSync|\bcall \(/)
}

test('errors reach JavaScript as the native side made them, with their code', { timeout: 15000 }, async () => {
  const hub = new RemoteIngressHub()
  try {
    const rejected = await hub.start({ tunnelPort: -1 }).then(
      () => assert.fail('start resolved'),
      (err) => err,
    )
    assertNativeError(rejected, 'ERR_INVALID_CONFIG', 'tunnelPort: must be an integer from 0 to 65535')
    const notRunning = await hub.updateAllowedEdges([]).then(
      () => assert.fail('updateAllowedEdges resolved'),
      (err) => err,
    )
    assertNativeError(notRunning, 'ERR_NOT_RUNNING', 'not running: call start() first')
  } finally {
    await stopQuietly(hub)
  }
  assert.throws(
    () => remoteingress.encodeConnectionToken({ hubHost: 'h', edgeId: 'e', secret: 's', hubPort: 0 }),
    (err) => {
      assertNativeError(err, 'ERR_INVALID_CONFIG', 'hubPort: must be an integer from 1 to 65535')
      return true
    },
  )
  assert.throws(
    () => remoteingress.decodeConnectionToken('!!'),
    (err) => {
      assert.equal(err.code, 'ERR_INVALID_TOKEN')
      assertNativeError(err, 'ERR_INVALID_TOKEN', err.message)
      assert.doesNotMatch(err.message, /^\[/)
      return true
    },
  )
})
