// transport: tcpTls only (connection tokens only, no tunnel)
// Connection tokens: round trips, clear errors for every kind of bad input, and `node -e` use.
import test from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import crypto from 'node:crypto'
import { remoteingress, PACKAGE_ROOT, withTimeout } from './helpers.mjs'

const { encodeConnectionToken, decodeConnectionToken } = remoteingress

const SECRET_VALUE = 'tok3n-s3cret-VALUE-42'
// A SHA-256 in base64url: 43 characters (the last one carries 4 bits).
const FINGERPRINT = 'sha256/' + crypto.createHash('sha256').update('some key').digest('base64url')
const base64url = (text) => Buffer.from(text, 'utf8').toString('base64url')
/** What decode returns for `data` given with hubHost/hubPort: those, and `hubs` listing the one hub. */
const decoded = (data) => ({ ...data, hubs: [{ host: data.hubHost, port: data.hubPort }] })

test('token round trip without a fingerprint', () => {
  const data = { hubHost: 'hub.example.com', hubPort: 8443, edgeId: 'edge-1', secret: SECRET_VALUE }
  const token = encodeConnectionToken(data)
  assert.match(token, /^[A-Za-z0-9_-]+$/, 'token is unpadded base64url')
  assert.deepEqual(decodeConnectionToken(token), decoded(data))
  const json = JSON.parse(Buffer.from(token, 'base64url').toString('utf8'))
  assert.deepEqual(json, { h: 'hub.example.com', p: 8443, e: 'edge-1', s: SECRET_VALUE })
})

test('token round trip with a hub fingerprint', () => {
  assert.equal(FINGERPRINT.length, 'sha256/'.length + 43)
  const data = { hubHost: '10.0.0.5', hubPort: 443, edgeId: 'edge.two', secret: SECRET_VALUE, hubFingerprint: FINGERPRINT }
  const token = encodeConnectionToken(data)
  assert.deepEqual(decodeConnectionToken(token), decoded(data))
  const json = JSON.parse(Buffer.from(token, 'base64url').toString('utf8'))
  assert.equal(json.f, FINGERPRINT)
})

test('a generated hub certificate fingerprint round trips in a token', () => {
  const { fingerprint } = remoteingress.generateHubCertificate()
  assert.match(fingerprint, /^sha256\/[A-Za-z0-9_-]{43}$/)
  const data = { hubHost: '127.0.0.1', hubPort: 1, edgeId: 'e', secret: SECRET_VALUE, hubFingerprint: fingerprint }
  assert.deepEqual(decodeConnectionToken(encodeConnectionToken(data)), decoded(data))
})

const badTokens = [
  { name: 'non-base64url text', token: 'this is not a token!', mentions: /base64/i },
  { name: 'base64url of non-JSON', token: base64url('hello world'), mentions: /JSON/ },
  { name: 'JSON missing "p"', token: base64url(JSON.stringify({ h: 'hub', e: 'edge', s: SECRET_VALUE })), mentions: /"?p"?/ },
  { name: '"p" as a string', token: base64url(JSON.stringify({ h: 'hub', p: '8443', e: 'edge', s: SECRET_VALUE })), mentions: /"?p"?/ },
  { name: 'port 0', token: base64url(JSON.stringify({ h: 'hub', p: 0, e: 'edge', s: SECRET_VALUE })), mentions: /port|"p"/i },
  { name: 'port 70000', token: base64url(JSON.stringify({ h: 'hub', p: 70000, e: 'edge', s: SECRET_VALUE })), mentions: /port|"p"/i },
  {
    name: 'a secret with a space',
    token: base64url(JSON.stringify({ h: 'hub', p: 8443, e: 'edge', s: SECRET_VALUE + ' x' })),
    mentions: /"s"|secret/,
  },
  { name: '"e" as a number', token: base64url(JSON.stringify({ h: 'hub', p: 8443, e: 42, s: SECRET_VALUE })), mentions: /"?e"?|edgeId/ },
]

for (const { name, token, mentions } of badTokens) {
  test(`decodeConnectionToken rejects ${name} with ERR_INVALID_TOKEN`, () => {
    let caught
    try {
      decodeConnectionToken(token)
    } catch (err) {
      caught = err
    }
    assert.ok(caught instanceof Error, 'throws an Error')
    assert.equal(caught.code, 'ERR_INVALID_TOKEN')
    assert.match(caught.message, mentions)
    assert.ok(caught.message.length > 10, `message is descriptive: ${caught.message}`)
    assert.ok(!caught.message.includes(SECRET_VALUE), `message leaks the secret: ${caught.message}`)
    assert.ok(!String(caught.stack).includes(SECRET_VALUE), 'stack leaks the secret')
  })
}

test('"p" missing and "p" as a string name the field in the message', () => {
  for (const json of [{ h: 'hub', e: 'edge', s: SECRET_VALUE }, { h: 'hub', p: '1', e: 'edge', s: SECRET_VALUE }]) {
    assert.throws(
      () => decodeConnectionToken(base64url(JSON.stringify(json))),
      (err) => err.code === 'ERR_INVALID_TOKEN' && /"p"|hubPort/.test(err.message),
    )
  }
})

test('node -e can encode a token and exits promptly with code 0', { timeout: 60000 }, async () => {
  const data = { hubHost: 'hub.example.com', hubPort: 9443, edgeId: 'cli-edge', secret: SECRET_VALUE }
  const script = `console.log(require(${JSON.stringify(PACKAGE_ROOT)}).encodeConnectionToken(${JSON.stringify(data)}))`
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (chunk) => (stdout += chunk))
  child.stderr.on('data', (chunk) => (stderr += chunk))
  try {
    // Promptly: on its own, as soon as the script is done. A child held open by the addon never
    // exits, so the bound only stops the wait for it.
    const code = await withTimeout(
      new Promise((resolve) => child.once('exit', (exitCode) => resolve(exitCode))),
      30000,
      'the node -e child to exit',
    )
    assert.equal(code, 0, `exit code (stderr: ${stderr})`)
    assert.deepEqual(decodeConnectionToken(stdout.trim()), decoded(data))
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  }
})

test('encodeConnectionToken rejects a bad secret with ERR_INVALID_CONFIG without echoing it', () => {
  const badSecret = 'has a space ' + SECRET_VALUE
  assert.throws(
    () => encodeConnectionToken({ hubHost: 'hub', hubPort: 1, edgeId: 'edge', secret: badSecret }),
    (err) => {
      assert.equal(err.code, 'ERR_INVALID_CONFIG')
      assert.match(err.message, /secret/)
      assert.ok(!err.message.includes(SECRET_VALUE), `message leaks the secret: ${err.message}`)
      return true
    },
  )
})
