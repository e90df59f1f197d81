// Hostile clients at the hub: failed logins are throttled per source address, and a storm of
// them neither reaches nor slows an established tunnel.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import tls from 'node:tls'
import {
  ALPN,
  SECRET,
  behaviours,
  echoOnce,
  edgeConfig,
  GUARD_MS,
  once,
  recordEvents,
  startConnectedEdge,
  startTarget,
  startTunnel,
  stopQuietly,
  waitFor,
  withTimeout,
} from './helpers.mjs'

const MAX_AUTH_FAILURES = 10 // hub/throttle.rs

/** A new connection through the edge to the echo target carries `text` there and back. */
async function assertEchoesThrough(port, text) {
  assert.equal(await echoOnce(port, text), text)
}

/**
 * One login attempt from `localAddress` with a wrong secret. Resolves 'rejected' when the hub
 * answered {"error":"unauthorized"}, 'throttled' when it answered "too many failed logins" (a
 * source past its attempts, for an edge id that has not logged in from there), 'refused' when
 * it closed the connection before TLS, 'closed' for anything else.
 */
function badLogin(hubPort, localAddress, edgeId = 'edge-1') {
  return withTimeout(
    new Promise((resolve) => {
      const socket = tls.connect({ host: '127.0.0.1', port: hubPort, localAddress, rejectUnauthorized: false, ALPNProtocols: [ALPN] })
      let answer = ''
      let secured = false
      socket.on('secureConnect', () => {
        secured = true
        socket.write(`EDGE ${edgeId} wrong-${SECRET}\n`)
      })
      socket.on('data', (chunk) => {
        answer += chunk
      })
      socket.on('error', () => {})
      socket.on('close', () => {
        if (!secured) return resolve('refused')
        if (answer.includes('unauthorized')) return resolve('rejected')
        resolve(answer.includes('too many failed logins') ? 'throttled' : 'closed')
      })
    }),
    GUARD_MS,
    `a login attempt from ${localAddress}`,
  )
}

test('failed logins are throttled per source while other sources and the tunnel carry on', { timeout: 120000 }, async () => {
  const target = await startTarget(behaviours.echo)
  let tunnel
  try {
    tunnel = await startTunnel({ ports: [target.port] })
    const warnings = recordEvents(tunnel.hub, ['warning'])
    const throttled = once(tunnel.hub, 'warning', GUARD_MS, (w) => w.code === 'authThrottled')

    const outcomes = []
    for (let i = 0; i < MAX_AUTH_FAILURES + 3; i++) outcomes.push(await badLogin(tunnel.hubPort, '127.0.0.3'))
    assert.deepEqual(outcomes.slice(0, MAX_AUTH_FAILURES), Array(MAX_AUTH_FAILURES).fill('rejected'))
    assert.deepEqual(outcomes.slice(MAX_AUTH_FAILURES), ['refused', 'refused', 'refused'])
    const warning = await throttled
    assert.match(warning.message, /127\.0\.0\.3/)
    assert.equal(warnings.of('warning').filter((w) => w.code === 'authThrottled').length, 1)
    for (const w of warnings.of('warning')) assert.ok(!w.message.includes(SECRET), 'no secret in warnings')

    // Another source still gets a proper answer, and the established tunnel still works.
    assert.equal(await badLogin(tunnel.hubPort, '127.0.0.4'), 'rejected')
    await assertEchoesThrough(target.port, 'still flowing after the storm')
    const status = await tunnel.hub.getStatus()
    assert.deepEqual(status.connectedEdges.map((e) => e.edgeId), ['edge-1'])
  } finally {
    await stopQuietly(tunnel, target)
  }
})

test('a client failing logins from the edge\'s own address does not keep the edge out', { timeout: 120000 }, async () => {
  const target = await startTarget(behaviours.echo)
  let tunnel
  let edge
  let attacking = true
  let attacker
  try {
    // The edge logs in from 127.0.0.1, then a client there fails 200 logins with its id.
    tunnel = await startTunnel({ ports: [target.port] })
    // Eight at a time: the hub's handshake places per address (maxPendingHandshakesPerSource).
    const outcomes = []
    for (let round = 0; round < 25; round++) {
      outcomes.push(...(await Promise.all(Array.from({ length: 8 }, () => badLogin(tunnel.hubPort, '127.0.0.1')))))
    }
    // Past its attempts the address still has edge-1's secret checked, and only edge-1's.
    assert.deepEqual(outcomes, Array(200).fill('rejected'))
    assert.equal(await badLogin(tunnel.hubPort, '127.0.0.1', 'intruder'), 'throttled')

    // The edge restarts while the client keeps failing: it gets in all the same.
    await tunnel.edge.stop()
    attacker = (async () => {
      for (let i = 0; attacking && i < 2000; i++) await badLogin(tunnel.hubPort, '127.0.0.1')
    })()
    ;({ edge } = await startConnectedEdge(edgeConfig(tunnel.hubPort, 'edge-1')))
    await assertEchoesThrough(target.port, 'the edge is back')
    attacking = false
    await attacker

    // The success cleared the address's count, not the throttle: 10 more failures and an
    // unknown edge id from there is refused again.
    for (let i = 0; i < MAX_AUTH_FAILURES; i++) await badLogin(tunnel.hubPort, '127.0.0.1')
    assert.equal(await badLogin(tunnel.hubPort, '127.0.0.1', 'intruder'), 'throttled')
  } finally {
    attacking = false
    await attacker
    await stopQuietly(edge, tunnel, target)
  }
})

test('a storm of concurrent bad logins does not disturb an established tunnel', { timeout: 120000 }, async () => {
  const target = await startTarget(behaviours.echo)
  let tunnel
  try {
    tunnel = await startTunnel({ ports: [target.port] })
    // 1,000 bad logins: 250 sources in 127.0.1.0/24 with 4 attempts each, all at once, while
    // data flows.
    const storm = []
    for (let i = 1; i <= 250; i++) for (let k = 0; k < 4; k++) storm.push(badLogin(tunnel.hubPort, `127.0.1.${i}`))
    for (let round = 0; round < 20; round++) await assertEchoesThrough(target.port, `round ${round} during the storm`)
    const outcomes = await Promise.all(storm)
    assert.equal(outcomes.length, 1000)
    // None got in: answered, refused before TLS, or closed for a full handshake table.
    assert.ok(outcomes.every((o) => ['rejected', 'refused', 'closed'].includes(o)))
    await waitFor(async () => (await tunnel.hub.getStatus()).connectedEdges.length === 1, { what: 'the edge still connected' })
  } finally {
    await stopQuietly(tunnel, target)
  }
})
