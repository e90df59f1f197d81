// Hub identity: a given certificate, pinning by fingerprint, verification by CA, and the warning
// an edge gives when it checks nothing.
import test from 'node:test'
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import {
  behaviours,
  connect,
  edgeConfig,
  GUARD_MS,
  once,
  readBytes,
  recordEvents,
  remoteingress,
  RemoteIngressEdge,
  SECRET,
  startConnectedEdge,
  startHub,
  startRawHub,
  startTarget,
  stopQuietly,
  waitFor,
} from './helpers.mjs'

test('a hub started with a given certificate reports its fingerprint, and a pinned edge connects', { timeout: 60000 }, async () => {
  const cert = remoteingress.generateHubCertificate()
  assert.match(cert.certPem, /-----BEGIN CERTIFICATE-----/)
  assert.match(cert.keyPem, /-----BEGIN (EC |)PRIVATE KEY-----/)
  const target = await startTarget(behaviours.echo)
  const { hub, hubPort } = await startHub([{ id: 'pinned', secret: SECRET, listenPorts: [target.port] }], {
    tls: { certPem: cert.certPem, keyPem: cert.keyPem },
  })
  let edge, client
  try {
    assert.equal((await hub.getStatus()).certFingerprint, cert.fingerprint)
    edge = new RemoteIngressEdge()
    const events = recordEvents(edge, ['warning'])
    const connected = once(edge, 'tunnelConnected')
    await edge.start(edgeConfig(hubPort, 'pinned', SECRET, { hubFingerprint: cert.fingerprint }))
    await connected
    client = await connect(target.port)
    const echoed = readBytes(client, 6)
    client.write('pinned')
    assert.equal((await echoed).toString(), 'pinned')
    // The edge warns about an unverified hub before it connects: every warning it had is here.
    assert.ok(!events.of('warning').some((w) => w.code === 'hubNotVerified'), 'a pinned edge does not warn about an unverified hub')
  } finally {
    client?.destroy()
    await stopQuietly(edge, hub, target)
  }
})

test('an edge with neither pin nor CA connects but warns that the hub is not verified', { timeout: 60000 }, async () => {
  const { hub, hubPort } = await startHub([{ id: 'trusting', secret: SECRET, listenPorts: [] }])
  const edge = new RemoteIngressEdge()
  const events = recordEvents(edge, ['warning', 'tunnelConnected'])
  try {
    await edge.start(edgeConfig(hubPort, 'trusting'))
    await waitFor(() => events.of('tunnelConnected').length > 0, { what: "edge 'tunnelConnected'" })
    assert.ok(events.of('warning').some((w) => w.code === 'hubNotVerified'), `warnings: ${JSON.stringify(events.of('warning'))}`)
  } finally {
    await stopQuietly(edge, hub)
  }
})

/** Runs openssl in `dir`; throws with its stderr on failure. */
function openssl(dir, args) {
  const result = spawnSync('openssl', args, { cwd: dir, encoding: 'utf8', timeout: 20000 })
  if (result.error) throw result.error
  if (result.status !== 0) throw new Error(`openssl ${args.join(' ')}: ${result.stderr}`)
}

/** A CA and a hub certificate it signed, valid for IP 127.0.0.1, made with the openssl CLI. */
function makeCaAndHubCertificate(dir, name) {
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes']
  openssl(dir, ['req', '-x509', ...ec, '-keyout', `${name}-ca.key`, '-out', `${name}-ca.pem`, '-days', '2', '-subj', `/CN=${name} test CA`,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'])
  openssl(dir, ['req', ...ec, '-keyout', `${name}-hub.key`, '-out', `${name}-hub.csr`, '-subj', '/CN=hub'])
  fs.writeFileSync(path.join(dir, `${name}-ext.cnf`), 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n')
  openssl(dir, ['x509', '-req', '-in', `${name}-hub.csr`, '-CA', `${name}-ca.pem`, '-CAkey', `${name}-ca.key`, '-CAcreateserial',
    '-out', `${name}-hub.pem`, '-days', '2', '-extfile', `${name}-ext.cnf`])
  const read = (file) => fs.readFileSync(path.join(dir, file), 'utf8')
  return { caPem: read(`${name}-ca.pem`), certPem: read(`${name}-hub.pem`), keyPem: read(`${name}-hub.key`) }
}

const hasOpenssl = spawnSync('openssl', ['version'], { timeout: 10000 }).status === 0

test('caPem: an edge accepts a hub certificate from its CA and refuses one from another CA', {
  timeout: 90000,
  skip: hasOpenssl ? false : 'the openssl CLI is not installed (needed to make a CA)',
}, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'remoteingress-ca-'))
  const edges = []
  let hub
  try {
    const good = makeCaAndHubCertificate(dir, 'good')
    const other = makeCaAndHubCertificate(dir, 'other')
    ;({ hub } = await startHub([{ id: 'ca-edge', secret: SECRET, listenPorts: [] }], {
      tls: { certPem: good.certPem, keyPem: good.keyPem },
    }))
    const hubPort = (await hub.getStatus()).tunnelPort

    const hubWarnings = recordEvents(hub, ['warning', 'edgeConnected', 'edgeDisconnected'])
    const { edge } = await startConnectedEdge(edgeConfig(hubPort, 'ca-edge', SECRET, { caPem: good.caPem }))
    edges.push(edge)
    await edge.stop()
    // The hub reports that session after the edge has its answer: wait for all of it, so
    // nothing late is counted against the refused edge below.
    await waitFor(() => hubWarnings.of('edgeDisconnected').length === 1, { what: 'the first edge to leave the hub' })
    assert.equal(hubWarnings.of('edgeConnected').length, 1)
    const refusing = new RemoteIngressEdge()
    edges.push(refusing)
    const events = recordEvents(refusing, ['warning', 'tunnelConnected'])
    const firstWarning = once(refusing, 'warning', GUARD_MS, (w) => w.code === 'connectFailed')
    await refusing.start(edgeConfig(hubPort, 'ca-edge', SECRET, { caPem: other.caPem }))
    const warning = await firstWarning
    assert.match(warning.message, /certificate|TLS/i)
    await waitFor(() => events.of('warning').filter((w) => w.code === 'connectFailed').length >= 2, { what: 'a second connectFailed' })
    assert.equal(events.of('tunnelConnected').length, 0)
    assert.equal(hubWarnings.of('edgeConnected').length, 1, 'only the edge that trusts the right CA connected')
    assert.ok(!hubWarnings.of('warning').some((w) => w.code === 'authFailed'), 'the secret was never sent to an unverified hub')
  } finally {
    await stopQuietly(...edges, hub)
    fs.rmSync(dir, { recursive: true, force: true })
  }
})

test('a pinned edge never sends its secret to a hub with another key: that hub receives no byte of it', { timeout: 60000 }, async () => {
  // A TLS server that records every session that gets past the handshake and its auth line.
  const impostor = await startRawHub({ answer: () => '{"listenPorts":[]}\n' })
  let connections = 0
  impostor.server.on('connection', () => connections++)
  const edge = new RemoteIngressEdge()
  try {
    const pinned = remoteingress.generateHubCertificate().fingerprint
    const warnings = recordEvents(edge, ['warning', 'tunnelConnected'])
    // TCP+TLS whatever the run's transport: the impostor speaks only that.
    await edge.start(edgeConfig(impostor.port, 'pinned-edge', SECRET, { hubFingerprint: pinned, transportMode: 'tcpTls' }))
    await waitFor(() => warnings.of('warning').filter((w) => w.code === 'connectFailed').length >= 3, {
      what: 'three refused attempts',
    })
    assert.ok(connections >= 3, 'the edge did reach the impostor')
    assert.equal(impostor.sessions.length, 0, 'no TLS session was completed with the impostor')
    assert.ok(impostor.sessions.every((s) => s.authLine === undefined), 'no auth line was received')
    assert.equal(warnings.of('tunnelConnected').length, 0)
    for (const w of warnings.of('warning')) assert.ok(!w.message.includes(SECRET), 'no secret in warnings')
  } finally {
    await stopQuietly(edge)
    await impostor.close()
  }
})
